//! Access grants on Table Storage: one partition per tenant holding a row per grant
//! (`grant-<id>`) and a uniqueness row per principal (`principal-<kind>-<id>`), written
//! together in one transaction so a principal never gets two grants.

use async_trait::async_trait;
use tables::{Entity, Error as TableError, IfMatch, Operation, Query, Table, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, json_property, str_property, time_property, uuid_property};
use crate::domain::{Grant, Principal};

/// Stores access grants.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Creates a grant; a conflict when the principal already has one in the tenant.
    async fn create(&self, grant: &Grant) -> Result<(), StoreError>;
    /// One grant by id.
    async fn get(&self, id: Uuid) -> Result<Option<Grant>, StoreError>;
    /// A tenant's grants (revoked ones included), or every tenant's.
    async fn list(&self, tenant_id: Option<Uuid>) -> Result<Vec<Grant>, StoreError>;
    /// Replaces a grant's scopes; `None` when it does not exist.
    async fn update_scopes(
        &self,
        id: Uuid,
        scopes: &[String],
        at: OffsetDateTime,
    ) -> Result<Option<Grant>, StoreError>;
    /// Deletes a grant; false when it did not exist.
    async fn delete(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Revokes every grant of a tenant (kept for audit, never matching again).
    async fn revoke_all(&self, tenant_id: Uuid, at: OffsetDateTime) -> Result<usize, StoreError>;
    /// Moves `last_used_at` forward to `at` (never backward), with ETag concurrency.
    async fn record_use(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
}

const GRANT_PREFIX: &str = "grant-";
const GRANT_END: &str = "grant.";

/// [`GrantStore`] on a table.
pub struct TableGrantStore {
    table: Table,
}

fn grant_key(id: Uuid) -> String {
    format!("{GRANT_PREFIX}{id}")
}

impl TableGrantStore {
    /// Grants in `table`.
    pub fn new(table: Table) -> TableGrantStore {
        TableGrantStore { table }
    }

    fn to_entity(g: &Grant) -> Entity {
        let mut e = Entity::new(g.tenant_id.to_string(), grant_key(g.id))
            .with("Kind", g.principal.kind())
            .with("PrincipalId", g.principal.id().to_string())
            .with(
                "Scopes",
                serde_json::to_string(&g.scopes).expect("strings serialize"),
            )
            .with("CreatedAt", g.created_at)
            .with("UpdatedAt", g.updated_at);
        if let Some(at) = g.last_used_at {
            e.set("LastUsedAt", at);
        }
        if let Some(at) = g.revoked_at {
            e.set("RevokedAt", at);
        }
        e
    }

    fn from_entity(e: &Entity) -> Result<Grant, StoreError> {
        let id = e
            .row_key
            .strip_prefix(GRANT_PREFIX)
            .and_then(|id| Uuid::try_parse(id).ok())
            .ok_or_else(|| StoreError::Corrupt("grant key".into()))?;
        let principal_id = uuid_property(e, "PrincipalId")?;
        let principal = match str_property(e, "Kind")? {
            "user" => Principal::User {
                object_id: principal_id,
            },
            "service_principal" => Principal::ServicePrincipal {
                client_id: principal_id,
            },
            other => return Err(StoreError::Corrupt(format!("grant kind {other:?}"))),
        };
        Ok(Grant {
            id,
            tenant_id: Uuid::try_parse(&e.partition_key)
                .map_err(|_| StoreError::Corrupt("grant partition".into()))?,
            principal,
            scopes: json_property(e, "Scopes")?,
            created_at: time_property(e, "CreatedAt")?,
            updated_at: time_property(e, "UpdatedAt")?,
            last_used_at: e.get_datetime("LastUsedAt"),
            revoked_at: e.get_datetime("RevokedAt"),
        })
    }

    fn grant_rows(partition: Option<Uuid>) -> Query {
        let range = format!(
            "RowKey ge {} and RowKey lt {}",
            Value::from(GRANT_PREFIX).filter_literal(),
            Value::from(GRANT_END).filter_literal()
        );
        Query::filter(match partition {
            Some(t) => format!(
                "PartitionKey eq {} and {range}",
                Value::from(t.to_string()).filter_literal()
            ),
            None => range,
        })
    }

    /// A delete of the principal's uniqueness row, when that row names this grant.
    async fn owned_index(
        &self,
        partition: &str,
        grant: &Grant,
    ) -> Result<Option<Operation>, StoreError> {
        let key = grant.principal.index_key();
        let Some(index) = self.table.try_get(partition, &key).await? else {
            return Ok(None);
        };
        if index.get_str("GrantId") != Some(grant.id.to_string().as_str()) {
            return Ok(None);
        }
        let etag = index
            .etag
            .clone()
            .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
        Ok(Some(Operation::Delete {
            partition_key: partition.to_string(),
            row_key: key,
            if_match: IfMatch::ETag(etag),
        }))
    }

    /// The stored row of a grant (with its ETag), wherever its tenant.
    async fn find(&self, id: Uuid) -> Result<Option<Entity>, StoreError> {
        let query = Query {
            filter: Some(format!(
                "RowKey eq {}",
                Value::from(grant_key(id)).filter_literal()
            )),
            limit: Some(1),
            ..Query::default()
        };
        Ok(self.table.query_all(query).await?.into_iter().next())
    }
}

#[async_trait]
impl GrantStore for TableGrantStore {
    async fn create(&self, grant: &Grant) -> Result<(), StoreError> {
        let index = Entity::new(grant.tenant_id.to_string(), grant.principal.index_key())
            .with("GrantId", grant.id.to_string());
        let ops = [
            Operation::Insert(Self::to_entity(grant)),
            Operation::Insert(index),
        ];
        match self.table.transact(&ops).await {
            Ok(_) => Ok(()),
            Err(TableError::Batch { index: 1, source }) if source.is_conflict() => {
                let existing = self
                    .table
                    .try_get(&grant.tenant_id.to_string(), &grant.principal.index_key())
                    .await?
                    .and_then(|e| e.get_str("GrantId").map(str::to_string))
                    .unwrap_or_default();
                Err(StoreError::Conflict(format!(
                    "this {} already has grant {existing} in tenant {}; change its scopes instead",
                    grant.principal.kind().replace('_', " "),
                    grant.tenant_id
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        self.find(id)
            .await?
            .as_ref()
            .map(Self::from_entity)
            .transpose()
    }

    async fn list(&self, tenant_id: Option<Uuid>) -> Result<Vec<Grant>, StoreError> {
        let rows = self.table.query_all(Self::grant_rows(tenant_id)).await?;
        rows.iter().map(Self::from_entity).collect()
    }

    async fn update_scopes(
        &self,
        id: Uuid,
        scopes: &[String],
        at: OffsetDateTime,
    ) -> Result<Option<Grant>, StoreError> {
        for _ in 0..3 {
            let Some(row) = self.find(id).await? else {
                return Ok(None);
            };
            let mut grant = Self::from_entity(&row)?;
            if grant.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "grant {id} was revoked when its tenant was offboarded"
                )));
            }
            grant.scopes = scopes.to_vec();
            grant.updated_at = at;
            let etag = row
                .etag
                .clone()
                .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
            match self
                .table
                .replace(&Self::to_entity(&grant), IfMatch::ETag(etag))
                .await
            {
                Ok(_) => return Ok(Some(grant)),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let Some(row) = self.find(id).await? else {
            return Ok(false);
        };
        let grant = Self::from_entity(&row)?;
        let mut ops = vec![Operation::Delete {
            partition_key: row.partition_key.clone(),
            row_key: row.row_key.clone(),
            if_match: IfMatch::Any,
        }];
        // the uniqueness row goes too, but only when it is this grant's (a revoked grant's
        // principal may hold a newer grant), and only as it was read
        if let Some(index) = self.owned_index(&row.partition_key, &grant).await? {
            ops.push(index);
        }
        match self.table.transact(&ops).await {
            Ok(_) => Ok(true),
            Err(TableError::Batch { source, .. }) if source.is_not_found() => Ok(false),
            Err(TableError::Batch { source, .. }) if source.is_precondition_failed() => {
                Err(StoreError::Contended)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn revoke_all(&self, tenant_id: Uuid, at: OffsetDateTime) -> Result<usize, StoreError> {
        let partition = tenant_id.to_string();
        let grants = self.list(Some(tenant_id)).await?;
        let mut ops = Vec::new();
        let mut revoked = 0;
        for grant in grants.into_iter().filter(|g| g.revoked_at.is_none()) {
            ops.push(Operation::Merge(
                Entity::new(partition.clone(), grant_key(grant.id)).with("RevokedAt", at),
                IfMatch::Any,
            ));
            if let Some(index) = self.owned_index(&partition, &grant).await? {
                ops.push(index);
            }
            revoked += 1;
        }
        self.table.transact_chunked(ops).await?;
        Ok(revoked)
    }

    async fn record_use(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        for _ in 0..2 {
            let Some(row) = self
                .table
                .try_get(&tenant_id.to_string(), &grant_key(id))
                .await?
            else {
                return Ok(()); // deleted meanwhile
            };
            if row
                .get_datetime("LastUsedAt")
                .is_some_and(|stored| stored >= at)
            {
                return Ok(());
            }
            let etag = row
                .etag
                .clone()
                .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
            let update = Entity::new(tenant_id.to_string(), grant_key(id)).with("LastUsedAt", at);
            match self.table.merge(&update, IfMatch::ETag(etag)).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(()) // lost to a concurrent writer twice: theirs is as recent; nothing to add
    }
}
