//! SCIM users on Table Storage, one partition per tenant. A user row (`user-<id>`) holds the
//! resource; a `username-<lowercased userName>` row holds a copy and makes userName unique
//! (written in the same transaction, so two concurrent creates give one success and one
//! conflict); `userext-<externalId>-<id>` rows hold copies for externalId matches. Entra's
//! match query is then one point read; create, PATCH and delete are two requests at most.

use async_trait::async_trait;
use serde_json::Value;
use tables::{
    ETag, Entity, Error as TableError, IfMatch, Operation, Query, Table, Value as TableValue, key,
};
use uuid::Uuid;

use super::StoreError;

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
    /// Replaces `previous` (as read) with `data`; keeps the index rows in step.
    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
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
    /// Deletes `previous` (as read) and its membership rows for `groups`, with `extra`
    /// operations in the same transaction.
    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        groups: &[Uuid],
        extra: Vec<Operation>,
    ) -> Result<WriteOutcome, StoreError>;
}

/// [`ScimUserStore`] on a table.
pub struct TableScimUserStore {
    table: Table,
}

fn user_key(id: Uuid) -> String {
    format!("user-{id}")
}

/// userName compares case-insensitively: the index key is lowercased (and encoded).
fn user_name_key(user_name: &str) -> String {
    format!("username-{}", key::encode(&user_name.to_lowercase()))
}

/// A membership row beside its user: `user-<id>.g.<group>` sorts right after `user-<id>`
/// (and before `user-<id>/`), so one range query reads a user with its groups.
pub(super) fn membership_key(member: &str, group: Uuid) -> String {
    let member = match Uuid::try_parse(member) {
        Ok(id) => id.to_string(),
        Err(_) => key::encode(member),
    };
    format!("user-{member}.g.{group}")
}

/// The group a membership row of `user` names; rows of other members whose keys merely
/// start like this user's (non-UUID member values) are not this user's.
fn group_of_membership(user: Uuid, row_key: &str) -> Option<Uuid> {
    let group = row_key.strip_prefix(&format!("{}.g.", user_key(user)))?;
    Uuid::try_parse(group).ok()
}

fn external_key(external_id: &str, id: Uuid) -> String {
    format!("userext-{}-{id}", key::encode(external_id))
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
            Entity::new(tenant.to_string(), row_key)
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
            Self::row(tenant, user_key(id), id, user),
            Self::row(tenant, user_name_key(user_name_of(user.data)), id, user),
        ];
        if let Some(ext) = external_of(user.data) {
            rows.push(Self::row(tenant, external_key(ext, id), id, user));
        }
        rows
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
        let partition = tenant.to_string();
        let old_name = user_name_key(user_name_of(&previous.data));
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
            } else if row.row_key.starts_with("username-") && row.row_key != old_name {
                // a new userName must not be anyone else's
                ops.push(Operation::Insert(row));
            } else {
                ops.push(Operation::UpsertReplace(row));
            }
        }
        if old_name != user_name_key(user_name_of(user.data)) {
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
                row_key: external_key(old_ext, previous.id),
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

/// Deletes rows, a batch per partition (in the order partitions first appear) and 100 rows
/// where it can; a batch that fails because a row is already gone is redone row by row
/// (absent rows are fine).
pub(super) async fn delete_rows(
    table: &Table,
    rows: Vec<(String, String)>,
) -> Result<(), StoreError> {
    let mut by_partition: Vec<(String, Vec<Operation>)> = Vec::new();
    for (partition_key, row_key) in rows {
        let op = Operation::Delete {
            partition_key: partition_key.clone(),
            row_key,
            if_match: IfMatch::Any,
        };
        match by_partition.iter_mut().find(|(p, _)| *p == partition_key) {
            Some((_, ops)) => ops.push(op),
            None => by_partition.push((partition_key, vec![op])),
        }
    }
    for (_, ops) in by_partition {
        for chunk in ops.chunks(tables::batch::MAX_OPERATIONS) {
            match table.transact(chunk).await {
                Ok(_) => {}
                Err(TableError::Batch { source, .. }) if source.is_not_found() => {
                    for op in chunk {
                        if let Operation::Delete {
                            partition_key,
                            row_key,
                            ..
                        } = op
                        {
                            match table.delete(partition_key, row_key, IfMatch::Any).await {
                                Ok(()) => {}
                                Err(e) if e.is_not_found() => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
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
            .try_get(&tenant.to_string(), &user_key(id))
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
        let query = Query::filter(format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            TableValue::from(tenant.to_string()).filter_literal(),
            TableValue::from(user_key(id)).filter_literal(),
            TableValue::from(format!("{}/", user_key(id))).filter_literal()
        ));
        let rows = self.table.query_all(query).await?;
        let Some(user) = rows.iter().find(|r| r.row_key == user_key(id)) else {
            return Ok(None);
        };
        let groups = rows
            .iter()
            .filter_map(|r| group_of_membership(id, &r.row_key))
            .collect();
        Ok(Some((Self::read(user)?, groups)))
    }

    async fn by_user_name(
        &self,
        tenant: Uuid,
        user_name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        match key::validate("RowKey", &user_name_key(user_name)) {
            Ok(()) => {}
            Err(_) => return Ok(None), // longer than any stored key: nobody has it
        }
        self.table
            .try_get(&tenant.to_string(), &user_name_key(user_name))
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
        let prefix = format!("userext-{}-", key::encode(external_id));
        // the next prefix: '-' + 1 == '.'
        let end = format!("userext-{}.", key::encode(external_id));
        let query = Query::filter(format!(
            "PartitionKey eq {} and RowKey gt {} and RowKey lt {}",
            TableValue::from(tenant.to_string()).filter_literal(),
            TableValue::from(prefix).filter_literal(),
            TableValue::from(end).filter_literal()
        ));
        self.table
            .query_all(query)
            .await?
            .iter()
            .map(Self::read)
            .collect()
    }

    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError> {
        let query = Query::filter(format!(
            "PartitionKey eq {} and RowKey ge 'user-' and RowKey lt 'user.'",
            TableValue::from(tenant.to_string()).filter_literal()
        ));
        self.table
            .query_all(query)
            .await?
            .iter()
            // membership rows sit between the user rows
            .filter(|row| !row.row_key.contains(".g."))
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
        let users = |range: &str| {
            Query::filter(format!(
                "PartitionKey eq {} and {range}",
                TableValue::from(tenant.to_string()).filter_literal()
            ))
        };
        let all = "RowKey ge 'user-' and RowKey lt 'user.'";
        // membership rows sit between the user rows
        let is_user = |row: &Entity| !row.row_key.contains(".g.");
        let mut page = Vec::new();
        let mut total = 0;
        match keep {
            Some(keep) => {
                let mut pages = std::pin::pin!(self.table.query(users(all)));
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
                    ..users(all)
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
    ) -> Result<WriteOutcome, StoreError> {
        let user = Written {
            data,
            version: previous.version + 1,
            admin: &previous.admin,
        };
        self.rewrite(tenant, previous, user, Vec::new()).await
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
        let partition = tenant.to_string();
        let mut memberships: Vec<Operation> = groups
            .iter()
            .map(|group| Operation::Delete {
                partition_key: partition.clone(),
                row_key: membership_key(&previous.id.to_string(), *group),
                if_match: IfMatch::Any,
            })
            .collect();
        // a transaction holds 100 operations: a user in very many groups has the surplus
        // membership rows removed once the deletion has committed
        let room = tables::batch::MAX_OPERATIONS - 4 - extra.len();
        let surplus: Vec<(String, String)> = groups
            .iter()
            .skip(room)
            .map(|group| {
                (
                    partition.clone(),
                    membership_key(&previous.id.to_string(), *group),
                )
            })
            .collect();
        memberships.truncate(room);
        let mut ops = vec![
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: user_key(previous.id),
                if_match: IfMatch::ETag(previous.etag.clone()),
            },
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: user_name_key(user_name_of(&previous.data)),
                if_match: IfMatch::Any,
            },
        ];
        if let Some(ext) = external_of(&previous.data) {
            ops.push(Operation::Delete {
                partition_key: partition,
                row_key: external_key(ext, previous.id),
                if_match: IfMatch::Any,
            });
        }
        ops.extend(extra);
        ops.extend(memberships);
        match self.table.transact(&ops).await {
            Ok(_) => {
                // left behind, these rows only name a user that no longer exists
                if let Err(e) = delete_rows(&self.table, surplus).await {
                    tracing::warn!(error = %e, "surplus membership rows of a deleted user stay");
                }
                Ok(WriteOutcome::Written(previous.clone()))
            }
            Err(e) => outcome_of(e),
        }
    }
}
