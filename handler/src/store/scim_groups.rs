//! SCIM groups on Table Storage. The group row (`group-<id>`, in the tenant's partition)
//! holds the group without members; a `groupname-<lowercased displayName>` row makes names
//! unique (same transaction). Members live in their own partition per group
//! (`<tenant>_g_<group>`, one row per member), so a group of 50,000 members never nears
//! the 1 MiB entity limit and `excludedAttributes=members` never reads them. Each membership
//! also has a row beside its user in the tenant's partition (`user-<id>.g.<group>`, see
//! [`membership_key`]), so reading a user for deletion finds its groups in the same request
//! and the deletion removes those rows in the same transaction; adding or removing N
//! members costs about 2N/100 batch requests.

use async_trait::async_trait;
use serde_json::Value;
use tables::{ETag, Entity, IfMatch, Operation, Query, Table, Value as TableValue, key};
use uuid::Uuid;

use super::StoreError;
use super::scim::{
    StoredResource, WriteOutcome, Written, delete_rows, membership_key, outcome_of, read_resource,
    with_admin,
};

/// Stores SCIM groups and their members.
#[async_trait]
pub trait ScimGroupStore: Send + Sync {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        data: &Value,
    ) -> Result<WriteOutcome, StoreError>;
    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError>;
    async fn by_name(&self, tenant: Uuid, name: &str)
    -> Result<Option<StoredResource>, StoreError>;
    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError>;
    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
    ) -> Result<WriteOutcome, StoreError>;
    /// Changes only the product's state of `previous` (as read).
    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
    ) -> Result<WriteOutcome, StoreError>;
    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
    ) -> Result<WriteOutcome, StoreError>;
    /// Members of a group: `{"value", "display"?, "type"?}`.
    async fn members(&self, tenant: Uuid, group: Uuid) -> Result<Vec<Value>, StoreError>;
    /// Adds members given as `{"value", "display"?, "type"?}` (idempotent).
    async fn add_members(
        &self,
        tenant: Uuid,
        group: Uuid,
        members: &[Value],
    ) -> Result<(), StoreError>;
    /// Removes the given members (absent ones ignored).
    async fn remove_members(
        &self,
        tenant: Uuid,
        group: Uuid,
        members: &[String],
    ) -> Result<(), StoreError>;
    /// Removes a deleted user's member rows from `groups` (its own membership rows went
    /// with the user).
    async fn forget_member(
        &self,
        tenant: Uuid,
        member: Uuid,
        groups: &[Uuid],
    ) -> Result<(), StoreError>;
}

/// [`ScimGroupStore`] on a table.
pub struct TableScimGroupStore {
    table: Table,
}

fn group_key(id: Uuid) -> String {
    format!("group-{id}")
}

fn name_key(name: &str) -> String {
    format!("groupname-{}", key::encode(&name.to_lowercase()))
}

fn name_of(data: &Value) -> &str {
    data.get("displayName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn members_partition(tenant: Uuid, group: Uuid) -> String {
    format!("{tenant}_g_{group}")
}

impl TableScimGroupStore {
    /// Groups in `table`.
    pub fn new(table: Table) -> TableScimGroupStore {
        TableScimGroupStore { table }
    }

    fn row(tenant: Uuid, row_key: String, id: Uuid, group: &Written) -> Entity {
        with_admin(
            Entity::new(tenant.to_string(), row_key)
                .with("GroupId", id.to_string())
                .with("Data", group.data.to_string())
                .with("Version", group.version),
            group.admin,
        )
    }

    /// Rewrites `previous` as `group` (the group row only as it was read), moving the name
    /// row when the name changes.
    async fn rewrite(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        group: Written<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut ops = vec![Operation::Replace(
            Self::row(tenant, group_key(previous.id), previous.id, &group),
            IfMatch::ETag(previous.etag.clone()),
        )];
        let (old, new) = (
            name_key(name_of(&previous.data)),
            name_key(name_of(group.data)),
        );
        let name_row = Self::row(tenant, new.clone(), previous.id, &group);
        if old == new {
            ops.push(Operation::UpsertReplace(name_row));
        } else {
            ops.push(Operation::Insert(name_row));
            ops.push(Operation::Delete {
                partition_key: tenant.to_string(),
                row_key: old,
                if_match: IfMatch::Any,
            });
        }
        match self.table.transact(&ops).await {
            Ok(etags) => Ok(WriteOutcome::Written(StoredResource {
                id: previous.id,
                data: group.data.clone(),
                version: group.version,
                etag: etags[0].clone().unwrap_or_else(|| ETag("*".into())),
                admin: group.admin.clone(),
            })),
            Err(e) => outcome_of(e),
        }
    }

    fn read(e: &Entity) -> Result<StoredResource, StoreError> {
        read_resource(e, "GroupId")
    }
}

#[async_trait]
impl ScimGroupStore for TableScimGroupStore {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        data: &Value,
    ) -> Result<WriteOutcome, StoreError> {
        let admin = Value::Object(Default::default());
        let group = Written {
            data,
            version: 1,
            admin: &admin,
        };
        let ops = [
            Operation::Insert(Self::row(tenant, group_key(id), id, &group)),
            Operation::Insert(Self::row(tenant, name_key(name_of(data)), id, &group)),
        ];
        match self.table.transact(&ops).await {
            Ok(etags) => Ok(WriteOutcome::Written(StoredResource {
                id,
                data: data.clone(),
                version: 1,
                etag: etags[0].clone().unwrap_or_else(|| ETag("*".into())),
                admin,
            })),
            Err(e) => outcome_of(e),
        }
    }

    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError> {
        self.table
            .try_get(&tenant.to_string(), &group_key(id))
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
        if key::validate("RowKey", &name_key(name)).is_err() {
            return Ok(None);
        }
        self.table
            .try_get(&tenant.to_string(), &name_key(name))
            .await?
            .as_ref()
            .map(Self::read)
            .transpose()
    }

    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError> {
        let query = Query::filter(format!(
            "PartitionKey eq {} and RowKey ge 'group-' and RowKey lt 'group.'",
            TableValue::from(tenant.to_string()).filter_literal()
        ));
        self.table
            .query_all(query)
            .await?
            .iter()
            .map(Self::read)
            .collect()
    }

    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
    ) -> Result<WriteOutcome, StoreError> {
        let group = Written {
            data,
            version: previous.version + 1,
            admin: &previous.admin,
        };
        self.rewrite(tenant, previous, group).await
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
        self.rewrite(tenant, previous, group).await
    }

    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
    ) -> Result<WriteOutcome, StoreError> {
        let members: Vec<String> = self
            .members(tenant, previous.id)
            .await?
            .iter()
            .filter_map(|m| m.get("value").and_then(Value::as_str).map(str::to_string))
            .collect();
        let ops = [
            Operation::Delete {
                partition_key: tenant.to_string(),
                row_key: group_key(previous.id),
                if_match: IfMatch::ETag(previous.etag.clone()),
            },
            Operation::Delete {
                partition_key: tenant.to_string(),
                row_key: name_key(name_of(&previous.data)),
                if_match: IfMatch::Any,
            },
        ];
        match self.table.transact(&ops).await {
            Ok(_) => {}
            Err(e) => return outcome_of(e),
        }
        self.remove_members(tenant, previous.id, &members).await?;
        Ok(WriteOutcome::Written(previous.clone()))
    }

    async fn members(&self, tenant: Uuid, group: Uuid) -> Result<Vec<Value>, StoreError> {
        let rows = self
            .table
            .query_all(Query::partition(&members_partition(tenant, group)))
            .await?;
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

    async fn add_members(
        &self,
        tenant: Uuid,
        group: Uuid,
        members: &[Value],
    ) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for member in members {
            let Some(id) = member.get("value").and_then(Value::as_str) else {
                continue;
            };
            // one row per member: a batch may not name a row twice
            if !seen.insert(id) {
                continue;
            }
            let mut row =
                Entity::new(members_partition(tenant, group), key::encode(id)).with("Value", id);
            for (name, property) in [("display", "Display"), ("type", "Type")] {
                if let Some(v) = member.get(name).and_then(Value::as_str) {
                    row.set(property, v);
                }
            }
            ops.push(Operation::UpsertReplace(row));
            ops.push(Operation::UpsertReplace(
                Entity::new(tenant.to_string(), membership_key(id, group))
                    .with("Group", group.to_string()),
            ));
        }
        self.table.transact_chunked(ops).await?;
        Ok(())
    }

    async fn remove_members(
        &self,
        tenant: Uuid,
        group: Uuid,
        members: &[String],
    ) -> Result<(), StoreError> {
        let mut unique: Vec<&String> = members.iter().collect();
        unique.sort();
        unique.dedup();
        // the group's rows first: if the second half fails, a later delete of the user
        // still finds its membership rows and clears the rest
        let mut rows: Vec<(String, String)> = unique
            .iter()
            .map(|member| (members_partition(tenant, group), key::encode(member)))
            .collect();
        rows.extend(
            unique
                .iter()
                .map(|member| (tenant.to_string(), membership_key(member, group))),
        );
        delete_rows(&self.table, rows).await
    }

    async fn forget_member(
        &self,
        tenant: Uuid,
        member: Uuid,
        groups: &[Uuid],
    ) -> Result<(), StoreError> {
        let rows = groups
            .iter()
            .map(|group| {
                (
                    members_partition(tenant, *group),
                    key::encode(&member.to_string()),
                )
            })
            .collect();
        delete_rows(&self.table, rows).await
    }
}
