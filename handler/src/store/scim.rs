//! SCIM users on Table Storage, in the tenant's partition (the key layout is
//! [`super::scim_keys`]'s). A user row holds the resource; a userName row holds a copy and
//! makes userName unique (written in the same transaction, so two concurrent creates give
//! one success and one conflict); externalId rows hold copies for externalId matches.
//! Entra's match query is then one point read; create, PATCH and delete are two requests
//! at most (a user in more groups than one transaction can clear takes more, see
//! [`ScimUserStore::delete`]).

use async_trait::async_trait;
use serde_json::Value;
use tables::{
    ETag, Entity, Error as TableError, IfMatch, Operation, Query, Table, Value as TableValue, key,
};
use uuid::Uuid;

use super::StoreError;
use super::scim_keys as keys;

/// A stored SCIM resource: its JSON, version, and the storage ETag to change it with.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub id: Uuid,
    pub data: Value,
    pub version: i64,
    pub etag: ETag,
    /// What the product keeps beside the SCIM resource (status, setting overrides, the
    /// current invitation): an object, never shown to SCIM clients.
    pub admin: Value,
}

/// What a write found.
#[derive(Debug)]
pub enum WriteOutcome {
    Written(StoredResource),
    /// Another user already has that userName.
    Duplicate,
    /// The resource changed since it was read (ETag).
    Changed,
    Missing,
}

/// Stores SCIM users.
#[async_trait]
pub trait ScimUserStore: Send + Sync {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        user_name: &str,
        data: &Value,
        admin: &Value,
        extra: Vec<Entity>,
    ) -> Result<WriteOutcome, StoreError>;
    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError>;
    /// A user and the groups it is a member of, in one request.
    async fn get_with_groups(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<(StoredResource, Vec<Uuid>)>, StoreError>;
    async fn by_user_name(
        &self,
        tenant: Uuid,
        user_name: &str,
    ) -> Result<Option<StoredResource>, StoreError>;
    async fn by_external_id(
        &self,
        tenant: Uuid,
        external_id: &str,
    ) -> Result<Vec<StoredResource>, StoreError>;
    /// Every user of a tenant, at once (the admin API's listing, which is not paged).
    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError>;
    /// One page of a listing in id order: the users `keep` accepts (all when `None`) from
    /// the `start`-th (1-based) on, at most `count`, and how many it accepts in all. The
    /// partition is read a Table page at a time and only the page asked for is kept, so a
    /// tenant of any size costs the memory of one page.
    async fn page(
        &self,
        tenant: Uuid,
        keep: Option<&(dyn for<'v> Fn(&'v Value) -> bool + Sync)>,
        start: usize,
        count: usize,
    ) -> Result<(Vec<StoredResource>, usize), StoreError>;
    /// Replaces `previous` (as read) with `data`; keeps the index rows in step; writes
    /// `extra` (rows of the tenant's partition) in the same transaction.
    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
        extra: Vec<Entity>,
    ) -> Result<WriteOutcome, StoreError>;
    /// Changes only the product's state of `previous` (as read), with `extra` operations
    /// on rows of the tenant's partition in the same transaction.
    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError>;
    /// Deletes `previous` (as read) with `extra` operations and its memberships of
    /// `groups` (both rows of each) in one transaction, conditional on the user row. When
    /// the memberships do not all fit, the transaction also leaves a tombstone and the rest
    /// go after it has committed; a crash between leaves the tombstone for
    /// [`ScimUserStore::finish_deletion`] (a later DELETE, or Housekeeping).
    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        groups: &[Uuid],
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError>;
    /// Finishes the deletion of user `id` if its tombstone is there; true when it was.
    async fn finish_deletion(&self, tenant: Uuid, id: Uuid) -> Result<bool, StoreError>;
    /// Finishes every user deletion of the tenant left half-done; answers how many.
    async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError>;
}

/// [`ScimUserStore`] on a table.
pub struct TableScimUserStore {
    table: Table,
}

fn external_of(data: &Value) -> Option<&str> {
    data.get("externalId")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
}

fn user_name_of(data: &Value) -> &str {
    data.get("userName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl TableScimUserStore {
    /// Users in `table`.
    pub fn new(table: Table) -> TableScimUserStore {
        TableScimUserStore { table }
    }

    fn row(tenant: Uuid, row_key: String, id: Uuid, user: &Written) -> Entity {
        with_admin(
            Entity::new(keys::partition(tenant), row_key)
                .with("UserId", id.to_string())
                .with("Data", user.data.to_string())
                .with("Version", user.version)
                // one directory per tenant: SCIM-provisioned users are tagged as such
                .with("Source", "scim"),
            user.admin,
        )
    }

    fn read(e: &Entity) -> Result<StoredResource, StoreError> {
        read_resource(e, "UserId")
    }

    /// The user row and every index row it needs (each a full copy).
    fn rows(tenant: Uuid, id: Uuid, user: &Written) -> Vec<Entity> {
        let mut rows = vec![
            Self::row(tenant, keys::user(id), id, user),
            Self::row(tenant, keys::user_name(user_name_of(user.data)), id, user),
        ];
        if let Some(ext) = external_of(user.data) {
            rows.push(Self::row(tenant, keys::user_external(ext, id), id, user));
        }
        rows
    }

    /// Removes the memberships a deleted user left, then its tombstone. The user row went
    /// in the tombstone's transaction, so what the range holds now are those memberships.
    async fn finish_tombstoned(&self, tenant: Uuid, id: Uuid) -> Result<(), StoreError> {
        let partition = keys::partition(tenant);
        let rows = self
            .table
            .query_all(keys::user_with_memberships(id).query(&partition))
            .await?;
        let member = id.to_string();
        let doomed = rows
            .iter()
            .filter_map(|r| keys::group_of_membership(id, &r.row_key))
            .flat_map(|group| keys::membership_rows(group, &member))
            .collect();
        let done = Operation::Delete {
            partition_key: partition.clone(),
            row_key: keys::deleted_user(id),
            if_match: IfMatch::Any,
        };
        delete_rows(&self.table, &partition, doomed, Some(done)).await
    }

    /// Rewrites `previous` as `user` in one transaction (the user row only as it was
    /// read), moving index rows whose keys change, plus `extra`.
    async fn rewrite(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        user: Written<'_>,
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError> {
        let partition = keys::partition(tenant);
        let old_name = keys::user_name(user_name_of(&previous.data));
        let mut ops = Vec::new();
        for (i, row) in Self::rows(tenant, previous.id, &user)
            .into_iter()
            .enumerate()
        {
            if i == 0 {
                // concurrent writers lose the race cleanly
                ops.push(Operation::Replace(
                    row,
                    IfMatch::ETag(previous.etag.clone()),
                ));
            } else if keys::is_user_name(&row.row_key) && row.row_key != old_name {
                // a new userName must not be anyone else's
                ops.push(Operation::Insert(row));
            } else {
                ops.push(Operation::UpsertReplace(row));
            }
        }
        if old_name != keys::user_name(user_name_of(user.data)) {
            ops.push(Operation::Delete {
                partition_key: partition.clone(),
                row_key: old_name,
                if_match: IfMatch::Any,
            });
        }
        if let Some(old_ext) = external_of(&previous.data)
            && external_of(user.data) != Some(old_ext)
        {
            ops.push(Operation::Delete {
                partition_key: partition,
                row_key: keys::user_external(old_ext, previous.id),
                if_match: IfMatch::Any,
            });
        }
        ops.extend(extra);
        match self.table.transact(&ops).await {
            Ok(etags) => Ok(WriteOutcome::Written(StoredResource {
                id: previous.id,
                data: user.data.clone(),
                version: user.version,
                etag: etags[0].clone().unwrap_or_else(|| ETag("*".into())),
                admin: user.admin.clone(),
            })),
            Err(e) => outcome_of(e),
        }
    }
}

/// Deletes rows of one partition (absent ones are fine), 100 to a transaction; `last`
/// (a tombstone's delete) goes in the final transaction, once every row is gone.
pub(super) async fn delete_rows(
    table: &Table,
    partition: &str,
    rows: Vec<String>,
    last: Option<Operation>,
) -> Result<(), StoreError> {
    let mut ops: Vec<Operation> = rows
        .into_iter()
        .map(|row_key| Operation::Delete {
            partition_key: partition.to_string(),
            row_key,
            if_match: IfMatch::Any,
        })
        .collect();
    // a transaction may not name a row twice
    let mut seen = std::collections::HashSet::new();
    ops.retain(|op| match op {
        Operation::Delete { row_key, .. } => seen.insert(row_key.clone()),
        _ => true,
    });
    ops.extend(last);
    for chunk in ops.chunks(tables::batch::MAX_OPERATIONS) {
        table.transact_tolerant(chunk).await?;
    }
    Ok(())
}

/// The deletes of both rows of a membership.
pub(super) fn membership_deletes(tenant: Uuid, group: Uuid, member: &str) -> [Operation; 2] {
    keys::membership_rows(group, member).map(|row_key| Operation::Delete {
        partition_key: keys::partition(tenant),
        row_key,
        if_match: IfMatch::Any,
    })
}

/// A tombstone: the row that says a deletion's cleanup is under way.
pub(super) fn tombstone(tenant: Uuid, row_key: String) -> Entity {
    Entity::new(keys::partition(tenant), row_key).with("DeletedAt", time::OffsetDateTime::now_utc())
}

/// The ids the tenant's tombstones in `range` name.
pub(super) async fn tombstones(
    table: &Table,
    tenant: Uuid,
    range: &keys::KeyRange,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(table
        .query_all(range.query(&keys::partition(tenant)))
        .await?
        .iter()
        .filter_map(|row| keys::tombstone_id(range, &row.row_key))
        .collect())
}

/// What a row of a resource holds.
pub(super) struct Written<'a> {
    pub data: &'a Value,
    pub version: i64,
    pub admin: &'a Value,
}

/// Adds the product's state to a resource row (when there is any).
pub(super) fn with_admin(row: Entity, admin: &Value) -> Entity {
    match admin.as_object() {
        Some(map) if !map.is_empty() => row.with("Admin", admin.to_string()),
        _ => row,
    }
}

/// Reads a resource row (user or group) whose id is in the property `id_property`.
pub(super) fn read_resource(e: &Entity, id_property: &str) -> Result<StoredResource, StoreError> {
    let id = e
        .get_str(id_property)
        .and_then(|i| Uuid::try_parse(i).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("SCIM row without {id_property}")))?;
    let data = serde_json::from_str(e.get_str("Data").unwrap_or_default())
        .map_err(|err| StoreError::Corrupt(format!("SCIM data: {err}")))?;
    let admin = match e.get_str("Admin") {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| StoreError::Corrupt(format!("SCIM admin state: {err}")))?,
        None => Value::Object(Default::default()),
    };
    Ok(StoredResource {
        id,
        data,
        version: e.get_i64("Version").unwrap_or(1),
        etag: e.etag.clone().unwrap_or_else(|| ETag("*".into())),
        admin,
    })
}

/// What a failed transaction means for a resource write.
pub(super) fn outcome_of(e: TableError) -> Result<WriteOutcome, StoreError> {
    match e {
        TableError::Batch { source, .. } if source.is_conflict() => Ok(WriteOutcome::Duplicate),
        TableError::Batch { source, .. } if source.is_precondition_failed() => {
            Ok(WriteOutcome::Changed)
        }
        TableError::Batch { source, .. } if source.is_not_found() => Ok(WriteOutcome::Missing),
        other => Err(other.into()),
    }
}

#[async_trait]
impl ScimUserStore for TableScimUserStore {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        user_name: &str,
        data: &Value,
        admin: &Value,
        extra: Vec<Entity>,
    ) -> Result<WriteOutcome, StoreError> {
        debug_assert_eq!(user_name, user_name_of(data));
        let user = Written {
            data,
            version: 1,
            admin,
        };
        let ops: Vec<Operation> = Self::rows(tenant, id, &user)
            .into_iter()
            .chain(extra)
            .map(Operation::Insert)
            .collect();
        match self.table.transact(&ops).await {
            Ok(etags) => Ok(WriteOutcome::Written(StoredResource {
                id,
                data: data.clone(),
                version: 1,
                etag: etags[0].clone().unwrap_or_else(|| ETag("*".into())),
                admin: admin.clone(),
            })),
            Err(e) => outcome_of(e),
        }
    }

    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError> {
        self.table
            .try_get(&keys::partition(tenant), &keys::user(id))
            .await?
            .as_ref()
            .map(Self::read)
            .transpose()
    }

    async fn get_with_groups(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<(StoredResource, Vec<Uuid>)>, StoreError> {
        let query = keys::user_with_memberships(id).query(&keys::partition(tenant));
        let rows = self.table.query_all(query).await?;
        let Some(user) = rows.iter().find(|r| r.row_key == keys::user(id)) else {
            return Ok(None);
        };
        let groups = rows
            .iter()
            .filter_map(|r| keys::group_of_membership(id, &r.row_key))
            .collect();
        Ok(Some((Self::read(user)?, groups)))
    }

    async fn by_user_name(
        &self,
        tenant: Uuid,
        user_name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        match key::validate("RowKey", &keys::user_name(user_name)) {
            Ok(()) => {}
            Err(_) => return Ok(None), // longer than any stored key: nobody has it
        }
        self.table
            .try_get(&keys::partition(tenant), &keys::user_name(user_name))
            .await?
            .as_ref()
            .map(Self::read)
            .transpose()
    }

    async fn by_external_id(
        &self,
        tenant: Uuid,
        external_id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let query = keys::users_by_external(external_id).query(&keys::partition(tenant));
        self.table
            .query_all(query)
            .await?
            .iter()
            .map(Self::read)
            .collect()
    }

    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError> {
        self.table
            .query_all(keys::users().query(&keys::partition(tenant)))
            .await?
            .iter()
            // membership rows sit between the user rows
            .filter(|row| !keys::is_membership(&row.row_key))
            .map(Self::read)
            .collect()
    }

    async fn page(
        &self,
        tenant: Uuid,
        keep: Option<&(dyn for<'v> Fn(&'v Value) -> bool + Sync)>,
        start: usize,
        count: usize,
    ) -> Result<(Vec<StoredResource>, usize), StoreError> {
        use futures::TryStreamExt as _;
        let start = start.max(1);
        let partition = keys::partition(tenant);
        let users = |range: &str| {
            Query::filter(format!(
                "PartitionKey eq {} and {range}",
                TableValue::from(partition.as_str()).filter_literal()
            ))
        };
        let every_user = keys::users().query(&partition);
        // membership rows sit between the user rows
        let is_user = |row: &Entity| !keys::is_membership(&row.row_key);
        let mut page = Vec::new();
        let mut total = 0;
        match keep {
            Some(keep) => {
                let mut pages = std::pin::pin!(self.table.query(every_user.clone()));
                while let Some(rows) = pages.try_next().await? {
                    for row in rows.entities.iter().filter(|r| is_user(r)) {
                        let user = Self::read(row)?;
                        if !keep(&user.data) {
                            continue;
                        }
                        total += 1;
                        if total >= start && page.len() < count {
                            page.push(user);
                        }
                    }
                }
            }
            None => {
                // keys only to count and to find the page, then the page's rows
                let keys_only = Query {
                    select: Some(Vec::new()),
                    ..every_user.clone()
                };
                let (mut first, mut last) = (None, None);
                let mut pages = std::pin::pin!(self.table.query(keys_only));
                while let Some(rows) = pages.try_next().await? {
                    for row in rows.entities.into_iter().filter(is_user) {
                        total += 1;
                        if total >= start && total < start + count {
                            last = Some(row.row_key.clone());
                            first.get_or_insert(row.row_key);
                        }
                    }
                }
                if let (Some(first), Some(last)) = (first, last) {
                    let range = format!(
                        "RowKey ge {} and RowKey le {}",
                        TableValue::from(first).filter_literal(),
                        TableValue::from(last).filter_literal()
                    );
                    let mut pages = std::pin::pin!(self.table.query(users(&range)));
                    while let Some(rows) = pages.try_next().await? {
                        for row in rows.entities.iter().filter(|r| is_user(r)) {
                            if page.len() < count {
                                page.push(Self::read(row)?);
                            }
                        }
                    }
                }
            }
        }
        Ok((page, total))
    }

    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
        extra: Vec<Entity>,
    ) -> Result<WriteOutcome, StoreError> {
        let user = Written {
            data,
            version: previous.version + 1,
            admin: &previous.admin,
        };
        let extra = extra.into_iter().map(Operation::Insert).collect();
        self.rewrite(tenant, previous, user, extra).await
    }

    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError> {
        let user = Written {
            data: &previous.data,
            version: previous.version,
            admin,
        };
        self.rewrite(tenant, previous, user, extra).await
    }

    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        groups: &[Uuid],
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError> {
        let partition = keys::partition(tenant);
        let mut ops = vec![
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::user(previous.id),
                if_match: IfMatch::ETag(previous.etag.clone()),
            },
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::user_name(user_name_of(&previous.data)),
                if_match: IfMatch::Any,
            },
        ];
        if let Some(ext) = external_of(&previous.data) {
            ops.push(Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::user_external(ext, previous.id),
                if_match: IfMatch::Any,
            });
        }
        ops.extend(extra);
        let member = previous.id.to_string();
        let mut memberships: Vec<Operation> = groups
            .iter()
            .flat_map(|group| membership_deletes(tenant, *group, &member))
            .collect();
        // a transaction holds 100 operations: a user in very many groups leaves a
        // tombstone, and the memberships that do not fit go once the deletion has committed
        let room = tables::batch::MAX_OPERATIONS - ops.len();
        let later = if memberships.len() > room {
            ops.push(Operation::UpsertReplace(tombstone(
                tenant,
                keys::deleted_user(previous.id),
            )));
            memberships.split_off((room - 1) / 2 * 2)
        } else {
            Vec::new()
        };
        ops.extend(memberships);
        if let Err(e) = self.table.transact_tolerant(&ops).await {
            return outcome_of(e);
        }
        if !later.is_empty() {
            let rows = later
                .into_iter()
                .filter_map(|op| match op {
                    Operation::Delete { row_key, .. } => Some(row_key),
                    _ => None,
                })
                .collect();
            let done = Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::deleted_user(previous.id),
                if_match: IfMatch::Any,
            };
            if let Err(e) = delete_rows(&self.table, &partition, rows, Some(done)).await {
                // the user is gone; its tombstone has the rest finished later
                tracing::warn!(error = %e, user = %previous.id, "a deleted user's memberships are left to housekeeping");
            }
        }
        Ok(WriteOutcome::Written(previous.clone()))
    }

    async fn finish_deletion(&self, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let partition = keys::partition(tenant);
        if self
            .table
            .try_get(&partition, &keys::deleted_user(id))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.finish_tombstoned(tenant, id).await?;
        Ok(true)
    }

    async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError> {
        let ids = tombstones(&self.table, tenant, &keys::deleted_users()).await?;
        for id in &ids {
            self.finish_tombstoned(tenant, *id).await?;
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deletes_of_rows_already_gone_are_skipped_but_a_stale_etag_still_fails_in_azurite() {
        let table = system_tests::Azurite::shared()
            .client()
            .table(system_tests::unique_table("tol"));
        table.create_if_not_exists().await.unwrap();
        let etag = table
            .insert(&Entity::new("p", "a").with("n", 1))
            .await
            .unwrap();
        table.insert(&Entity::new("p", "c")).await.unwrap();
        let delete = |row: &str| Operation::Delete {
            partition_key: "p".into(),
            row_key: row.into(),
            if_match: IfMatch::Any,
        };
        // b and d were never there: the service names the failing operation, which goes
        let ops = [
            Operation::Replace(
                Entity::new("p", "a").with("n", 2),
                IfMatch::ETag(etag.clone()),
            ),
            delete("b"),
            delete("c"),
            delete("d"),
        ];
        table.transact_tolerant(&ops).await.unwrap();
        assert_eq!(table.get("p", "a").await.unwrap().get_i64("n"), Some(2));
        assert!(table.try_get("p", "c").await.unwrap().is_none());
        // the conditional operation still decides
        table.insert(&Entity::new("p", "e")).await.unwrap();
        let stale = [
            delete("e"),
            Operation::Replace(Entity::new("p", "a").with("n", 3), IfMatch::ETag(etag)),
        ];
        let error = table.transact_tolerant(&stale).await.unwrap_err();
        assert!(error.is_precondition_failed(), "{error}");
        assert!(table.try_get("p", "e").await.unwrap().is_some());
        // so does a conditional delete of a row that is gone
        let gone = [Operation::Delete {
            partition_key: "p".into(),
            row_key: "c".into(),
            if_match: IfMatch::ETag(ETag("W/\"datetime'2020-01-01T00%3A00%3A00Z'\"".into())),
        }];
        assert!(matches!(
            outcome_of(table.transact_tolerant(&gone).await.unwrap_err()),
            Ok(WriteOutcome::Missing)
        ));
    }
}
