//! Employee records on Table Storage: per tenant, a row per employee (`employee-<id>`) and
//! a lookup row per Entra object id (`object-<oid>`) carrying the positions, so checking a
//! user at request time is one point read. Both rows change in one transaction.

use async_trait::async_trait;
use tables::{Entity, Error as TableError, IfMatch, Operation, Table};
use uuid::Uuid;

use super::{StoreError, json_property, str_property, time_property, uuid_property};
use crate::domain::Employee;

/// Stores employee records.
#[async_trait]
pub trait EmployeeStore: Send + Sync {
    /// Creates or replaces a record; true when it was created.
    async fn put(&self, employee: &Employee) -> Result<bool, StoreError>;
    /// One record by employee id.
    async fn get(&self, tenant_id: Uuid, employee_id: &str)
    -> Result<Option<Employee>, StoreError>;
    /// The record of an Entra user.
    async fn find_by_object(
        &self,
        tenant_id: Uuid,
        object_id: Uuid,
    ) -> Result<Option<Employee>, StoreError>;
    /// Deletes a record; false when it did not exist.
    async fn delete(&self, tenant_id: Uuid, employee_id: &str) -> Result<bool, StoreError>;
}

/// [`EmployeeStore`] on a table.
pub struct TableEmployeeStore {
    table: Table,
}

fn employee_key(employee_id: &str) -> String {
    format!("employee-{}", tables::key::encode(employee_id))
}

fn object_key(object_id: Uuid) -> String {
    format!("object-{object_id}")
}

impl TableEmployeeStore {
    /// Records in `table`.
    pub fn new(table: Table) -> TableEmployeeStore {
        TableEmployeeStore { table }
    }

    fn to_entity(e: &Employee, row_key: String) -> Entity {
        Entity::new(e.tenant_id.to_string(), row_key)
            .with("EmployeeId", e.employee_id.as_str())
            .with("ObjectId", e.object_id.to_string())
            .with(
                "Positions",
                serde_json::to_string(&e.positions).expect("positions serialize"),
            )
            .with("UpdatedAt", e.updated_at)
    }

    fn from_entity(e: &Entity) -> Result<Employee, StoreError> {
        Ok(Employee {
            tenant_id: Uuid::try_parse(&e.partition_key)
                .map_err(|_| StoreError::Corrupt("employee partition".into()))?,
            employee_id: str_property(e, "EmployeeId")?.to_string(),
            object_id: uuid_property(e, "ObjectId")?,
            positions: json_property(e, "Positions")?,
            updated_at: time_property(e, "UpdatedAt")?,
        })
    }
}

#[async_trait]
impl EmployeeStore for TableEmployeeStore {
    async fn put(&self, employee: &Employee) -> Result<bool, StoreError> {
        let partition = employee.tenant_id.to_string();
        for _ in 0..3 {
            let existing = self
                .table
                .try_get(&partition, &employee_key(&employee.employee_id))
                .await?;
            let index = self
                .table
                .try_get(&partition, &object_key(employee.object_id))
                .await?;
            let mut ops = Vec::new();
            let employee_row = Self::to_entity(employee, employee_key(&employee.employee_id));
            match &existing {
                Some(row) => ops.push(Operation::Replace(
                    employee_row,
                    IfMatch::ETag(row.etag.clone().unwrap_or_else(|| tables::ETag("*".into()))),
                )),
                None => ops.push(Operation::Insert(employee_row)),
            }
            if let Some(old) = &existing {
                let old_object = uuid_property(old, "ObjectId")?;
                if old_object != employee.object_id {
                    ops.push(Operation::Delete {
                        partition_key: partition.clone(),
                        row_key: object_key(old_object),
                        if_match: IfMatch::Any,
                    });
                }
            }
            let index_row = Self::to_entity(employee, object_key(employee.object_id));
            match &index {
                Some(row) if row.get_str("EmployeeId") != Some(employee.employee_id.as_str()) => {
                    return Err(StoreError::Conflict(format!(
                        "object_id {} already belongs to employee {:?}",
                        employee.object_id,
                        row.get_str("EmployeeId").unwrap_or_default()
                    )));
                }
                Some(row) => ops.push(Operation::Replace(
                    index_row,
                    IfMatch::ETag(row.etag.clone().unwrap_or_else(|| tables::ETag("*".into()))),
                )),
                None => ops.push(Operation::Insert(index_row)),
            }
            match self.table.transact(&ops).await {
                Ok(_) => return Ok(existing.is_none()),
                // someone else wrote one of the rows since we read them: read again
                Err(TableError::Batch { source, .. })
                    if source.is_precondition_failed()
                        || source.is_conflict()
                        || source.is_not_found() =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }

    async fn get(
        &self,
        tenant_id: Uuid,
        employee_id: &str,
    ) -> Result<Option<Employee>, StoreError> {
        self.table
            .try_get(&tenant_id.to_string(), &employee_key(employee_id))
            .await?
            .as_ref()
            .map(Self::from_entity)
            .transpose()
    }

    async fn find_by_object(
        &self,
        tenant_id: Uuid,
        object_id: Uuid,
    ) -> Result<Option<Employee>, StoreError> {
        self.table
            .try_get(&tenant_id.to_string(), &object_key(object_id))
            .await?
            .as_ref()
            .map(Self::from_entity)
            .transpose()
    }

    async fn delete(&self, tenant_id: Uuid, employee_id: &str) -> Result<bool, StoreError> {
        let partition = tenant_id.to_string();
        let Some(row) = self
            .table
            .try_get(&partition, &employee_key(employee_id))
            .await?
        else {
            return Ok(false);
        };
        let object_id = uuid_property(&row, "ObjectId")?;
        let ops = [
            Operation::Delete {
                partition_key: partition.clone(),
                row_key: row.row_key.clone(),
                if_match: IfMatch::Any,
            },
            Operation::Delete {
                partition_key: partition,
                row_key: object_key(object_id),
                if_match: IfMatch::Any,
            },
        ];
        match self.table.transact(&ops).await {
            Ok(_) => Ok(true),
            Err(TableError::Batch { source, .. }) if source.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
