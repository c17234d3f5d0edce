//! SCIM groups on Table Storage, in the tenant's partition (the key layout is
//! [`super::scim_keys`]'s). The group row holds the group without members; a name row
//! (a full copy) makes names unique (same transaction). Each member has a row of its own
//! (so a group of 50,000 members never nears the 1 MiB entity limit and
//! `excludedAttributes=members` never reads them), and the same membership has a row
//! beside its user, so deleting a user finds and clears its groups in one transaction.
//!
//! Every transaction that writes member rows also rewrites the group row conditionally on
//! its ETag, with the next version: a member change is a change of the group (If-Match
//! sees it), and once the group row is gone no member row can be written for it. A group
//! of up to 49 members is deleted with them in one transaction; a larger one is deleted
//! with a tombstone in its place, then its members, then the tombstone, and a crash in
//! between leaves the tombstone for [`ScimGroupStore::finish_deletion`].
//! Adding or removing N members costs about N/49 transactions.

use std::collections::{HashSet, VecDeque};

use async_trait::async_trait;
use serde_json::Value;
use tables::{ETag, Entity, IfMatch, Operation, Table, key};
use uuid::Uuid;

use super::StoreError;
use super::scim::{
    StoredResource, WriteOutcome, Written, delete_rows, membership_deletes, outcome_of,
    read_resource, tombstone, tombstones, with_admin,
};
use super::scim_keys as keys;

/// What a write of a group changes about its members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberChanges {
    /// Members to add (or rewrite): `{"value", "display"?, "type"?}`.
    pub upsert: Vec<Value>,
    /// Values of members to remove; absent ones are ignored.
    pub remove: Vec<String>,
}

/// Stores SCIM groups and their members.
#[async_trait]
pub trait ScimGroupStore: Send + Sync {
    /// Creates a group with its first members.
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        data: &Value,
        members: &[Value],
    ) -> Result<WriteOutcome, StoreError>;
    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError>;
    async fn by_name(&self, tenant: Uuid, name: &str)
    -> Result<Option<StoredResource>, StoreError>;
    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError>;
    /// Replaces `previous` (as read) with `data` and applies `changes` to its members. The
    /// first transaction is conditional on `previous`: `Changed`, `Missing` or `Duplicate`
    /// mean nothing was written. The version goes up with every transaction.
    async fn update(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
        changes: &MemberChanges,
    ) -> Result<WriteOutcome, StoreError>;
    /// Changes only the product's state of `previous` (as read).
    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
    ) -> Result<WriteOutcome, StoreError>;
    /// Deletes `previous` (as read) and every member row it has.
    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
    ) -> Result<WriteOutcome, StoreError>;
    /// Members of a group: `{"value", "display"?, "type"?}`.
    async fn members(&self, tenant: Uuid, group: Uuid) -> Result<Vec<Value>, StoreError>;
    /// Finishes the deletion of group `id` if its tombstone is there; true when it was.
    async fn finish_deletion(&self, tenant: Uuid, id: Uuid) -> Result<bool, StoreError>;
    /// Finishes every group deletion of the tenant left half-done; answers how many.
    async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError>;
}

/// [`ScimGroupStore`] on a table.
pub struct TableScimGroupStore {
    table: Table,
}

fn name_of(data: &Value) -> &str {
    data.get("displayName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// How often a write of many members re-reads a group that others keep changing.
const MAX_REREADS: usize = 8;

/// Both rows of a membership, in one pair so a transaction never holds only one.
type Pair = [Operation; 2];

fn upsert_pair(tenant: Uuid, group: Uuid, member: &Value) -> Option<Pair> {
    let id = member.get("value").and_then(Value::as_str)?;
    let partition = keys::partition(tenant);
    let [member_key, membership_key] = keys::membership_rows(group, id);
    let mut row = Entity::new(partition.clone(), member_key).with("Value", id);
    for (name, property) in [("display", "Display"), ("type", "Type")] {
        if let Some(v) = member.get(name).and_then(Value::as_str) {
            row.set(property, v);
        }
    }
    Some([
        Operation::UpsertReplace(row),
        Operation::UpsertReplace(
            Entity::new(partition, membership_key).with("Group", group.to_string()),
        ),
    ])
}

/// The pairs of operations `changes` makes, each membership once (a transaction may not
/// name a row twice; a member both removed and upserted is upserted).
fn pairs(tenant: Uuid, group: Uuid, changes: &MemberChanges) -> VecDeque<Pair> {
    let mut seen = HashSet::new();
    let mut out = VecDeque::new();
    for member in changes.upsert.iter().rev() {
        let Some(id) = member.get("value").and_then(Value::as_str) else {
            continue;
        };
        if seen.insert(keys::member(group, id))
            && let Some(pair) = upsert_pair(tenant, group, member)
        {
            out.push_front(pair);
        }
    }
    for id in &changes.remove {
        if seen.insert(keys::member(group, id)) {
            out.push_back(membership_deletes(tenant, group, id));
        }
    }
    out
}

/// Moves as many pairs as fit beside `ops` into it.
fn fill(ops: &mut Vec<Operation>, pending: &mut VecDeque<Pair>) {
    while ops.len() + 2 <= tables::batch::MAX_OPERATIONS {
        let Some(pair) = pending.pop_front() else {
            break;
        };
        ops.extend(pair);
    }
}

impl TableScimGroupStore {
    /// Groups in `table`.
    pub fn new(table: Table) -> TableScimGroupStore {
        TableScimGroupStore { table }
    }

    fn row(tenant: Uuid, row_key: String, id: Uuid, group: &Written) -> Entity {
        with_admin(
            Entity::new(keys::partition(tenant), row_key)
                .with("GroupId", id.to_string())
                .with("Data", group.data.to_string())
                .with("Version", group.version),
            group.admin,
        )
    }

    /// The operations that rewrite `previous` as `group` (the group row only as it was
    /// read), moving the name row when the name changes. The group row's comes first.
    fn rewrite_ops(tenant: Uuid, previous: &StoredResource, group: &Written) -> Vec<Operation> {
        let mut ops = vec![Operation::Replace(
            Self::row(tenant, keys::group(previous.id), previous.id, group),
            IfMatch::ETag(previous.etag.clone()),
        )];
        let (old, new) = (
            keys::group_name(name_of(&previous.data)),
            keys::group_name(name_of(group.data)),
        );
        let name_row = Self::row(tenant, new.clone(), previous.id, group);
        if old == new {
            ops.push(Operation::UpsertReplace(name_row));
        } else {
            ops.push(Operation::Insert(name_row));
            ops.push(Operation::Delete {
                partition_key: keys::partition(tenant),
                row_key: old,
                if_match: IfMatch::Any,
            });
        }
        ops
    }

    fn written(previous: &StoredResource, group: &Written, etag: Option<ETag>) -> StoredResource {
        StoredResource {
            id: previous.id,
            data: group.data.clone(),
            version: group.version,
            etag: etag.unwrap_or_else(|| ETag("*".into())),
            admin: group.admin.clone(),
        }
    }

    /// Writes the `pending` member pairs after a first transaction left the group as
    /// `current`: each transaction rewrites the group row with the next version, on the
    /// ETag the previous one answered. A writer in between makes it read the group again
    /// and go on from there; a deleted group ends it (`Missing`), and the deletion's
    /// cleanup takes what was written before.
    async fn write_members(
        &self,
        tenant: Uuid,
        mut current: StoredResource,
        mut pending: VecDeque<Pair>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut rereads = 0;
        while !pending.is_empty() {
            let group = Written {
                data: &current.data,
                version: current.version + 1,
                admin: &current.admin,
            };
            let mut ops = Self::rewrite_ops(tenant, &current, &group);
            let head = ops.len();
            fill(&mut ops, &mut pending);
            match self.table.transact_tolerant(&ops).await {
                Ok(etags) => {
                    current = Self::written(&current, &group, etags[0].clone());
                }
                Err(e) if e.is_precondition_failed() && rereads < MAX_REREADS => {
                    rereads += 1;
                    // put the pairs back, in order, and go on from the group as it is now
                    let mut taken: Vec<Operation> = ops.drain(head..).collect();
                    while taken.len() >= 2 {
                        let second = taken.pop().expect("two left");
                        let first = taken.pop().expect("one left");
                        pending.push_front([first, second]);
                    }
                    match self.get(tenant, current.id).await? {
                        Some(now) => current = now,
                        None => return Ok(WriteOutcome::Missing),
                    }
                }
                Err(e) if e.is_precondition_failed() => return Err(StoreError::Contended),
                Err(e) => return outcome_of(e),
            }
        }
        Ok(WriteOutcome::Written(current))
    }

    fn read(e: &Entity) -> Result<StoredResource, StoreError> {
        read_resource(e, "GroupId")
    }

    /// The group's members, `limit` at most.
    async fn read_members(
        &self,
        tenant: Uuid,
        group: Uuid,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut query = keys::members(group).query(&keys::partition(tenant));
        query.limit = limit;
        let rows = self.table.query_all(query).await?;
        Ok(rows
            .iter()
            .filter_map(|e| {
                let mut member = serde_json::Map::new();
                member.insert(
                    "value".into(),
                    Value::String(e.get_str("Value")?.to_string()),
                );
                for (property, name) in [("Display", "display"), ("Type", "type")] {
                    if let Some(v) = e.get_str(property) {
                        member.insert(name.into(), Value::String(v.to_string()));
                    }
                }
                Some(Value::Object(member))
            })
            .collect())
    }

    /// Removes the member rows of a deleted group, then its tombstone. The group row went
    /// in the tombstone's transaction, so no member can have been added since.
    async fn finish_tombstoned(&self, tenant: Uuid, id: Uuid) -> Result<(), StoreError> {
        let doomed = self
            .members(tenant, id)
            .await?
            .iter()
            .filter_map(|m| m.get("value").and_then(Value::as_str))
            .flat_map(|value| keys::membership_rows(id, value))
            .collect();
        let partition = keys::partition(tenant);
        let done = Operation::Delete {
            partition_key: partition.clone(),
            row_key: keys::deleted_group(id),
            if_match: IfMatch::Any,
        };
        delete_rows(&self.table, &partition, doomed, Some(done)).await
    }
}

#[async_trait]
impl ScimGroupStore for TableScimGroupStore {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        data: &Value,
        members: &[Value],
    ) -> Result<WriteOutcome, StoreError> {
        let admin = Value::Object(Default::default());
        let group = Written {
            data,
            version: 1,
            admin: &admin,
        };
        let mut pending = pairs(
            tenant,
            id,
            &MemberChanges {
                upsert: members.to_vec(),
                remove: Vec::new(),
            },
        );
        let mut ops = vec![
            Operation::Insert(Self::row(tenant, keys::group(id), id, &group)),
            Operation::Insert(Self::row(
                tenant,
                keys::group_name(name_of(data)),
                id,
                &group,
            )),
        ];
        fill(&mut ops, &mut pending);
        let etags = match self.table.transact(&ops).await {
            Ok(etags) => etags,
            Err(e) => return outcome_of(e),
        };
        let created = StoredResource {
            id,
            data: data.clone(),
            version: 1,
            etag: etags[0].clone().unwrap_or_else(|| ETag("*".into())),
            admin,
        };
        self.write_members(tenant, created, pending).await
    }

    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError> {
        self.table
            .try_get(&keys::partition(tenant), &keys::group(id))
            .await?
            .as_ref()
            .map(Self::read)
            .transpose()
    }

    async fn by_name(
        &self,
        tenant: Uuid,
        name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        if key::validate("RowKey", &keys::group_name(name)).is_err() {
            return Ok(None);
        }
        self.table
            .try_get(&keys::partition(tenant), &keys::group_name(name))
            .await?
            .as_ref()
            .map(Self::read)
            .transpose()
    }

    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError> {
        self.table
            .query_all(keys::groups().query(&keys::partition(tenant)))
            .await?
            .iter()
            .map(Self::read)
            .collect()
    }

    async fn update(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
        changes: &MemberChanges,
    ) -> Result<WriteOutcome, StoreError> {
        let group = Written {
            data,
            version: previous.version + 1,
            admin: &previous.admin,
        };
        let mut pending = pairs(tenant, previous.id, changes);
        let mut ops = Self::rewrite_ops(tenant, previous, &group);
        fill(&mut ops, &mut pending);
        let current = match self.table.transact_tolerant(&ops).await {
            Ok(etags) => Self::written(previous, &group, etags[0].clone()),
            Err(e) => return outcome_of(e),
        };
        self.write_members(tenant, current, pending).await
    }

    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
    ) -> Result<WriteOutcome, StoreError> {
        let group = Written {
            data: &previous.data,
            version: previous.version,
            admin,
        };
        let ops = Self::rewrite_ops(tenant, previous, &group);
        match self.table.transact(&ops).await {
            Ok(etags) => Ok(WriteOutcome::Written(Self::written(
                previous,
                &group,
                etags[0].clone(),
            ))),
            Err(e) => outcome_of(e),
        }
    }

    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
    ) -> Result<WriteOutcome, StoreError> {
        let partition = keys::partition(tenant);
        let mut ops = vec![
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::group(previous.id),
                if_match: IfMatch::ETag(previous.etag.clone()),
            },
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: keys::group_name(name_of(&previous.data)),
                if_match: IfMatch::Any,
            },
        ];
        let fit = (tables::batch::MAX_OPERATIONS - ops.len()) / 2;
        // read after `previous`: a member written since changed the group's ETag, and then
        // the transaction below fails and nothing is deleted
        let first = self
            .read_members(tenant, previous.id, Some(fit + 1))
            .await?;
        if first.len() <= fit {
            // the group with all its members, at once
            ops.extend(
                first
                    .iter()
                    .filter_map(|m| m.get("value").and_then(Value::as_str))
                    .flat_map(|value| membership_deletes(tenant, previous.id, value)),
            );
            return match self.table.transact_tolerant(&ops).await {
                Ok(_) => Ok(WriteOutcome::Written(previous.clone())),
                Err(e) => outcome_of(e),
            };
        }
        // too many for one transaction: the group goes first, leaving a tombstone; with the
        // group row gone no member can be added, so the members read next are all there are
        ops.push(Operation::UpsertReplace(tombstone(
            tenant,
            keys::deleted_group(previous.id),
        )));
        if let Err(e) = self.table.transact_tolerant(&ops).await {
            return outcome_of(e);
        }
        if let Err(e) = self.finish_tombstoned(tenant, previous.id).await {
            tracing::warn!(error = %e, group = %previous.id, "a deleted group's members are left to housekeeping");
        }
        Ok(WriteOutcome::Written(previous.clone()))
    }

    async fn members(&self, tenant: Uuid, group: Uuid) -> Result<Vec<Value>, StoreError> {
        self.read_members(tenant, group, None).await
    }

    async fn finish_deletion(&self, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
        if self
            .table
            .try_get(&keys::partition(tenant), &keys::deleted_group(id))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.finish_tombstoned(tenant, id).await?;
        Ok(true)
    }

    async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError> {
        let ids = tombstones(&self.table, tenant, &keys::deleted_groups()).await?;
        for id in &ids {
            self.finish_tombstoned(tenant, *id).await?;
        }
        Ok(ids.len())
    }
}
