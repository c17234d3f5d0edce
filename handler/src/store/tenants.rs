//! The tenant registry on Table Storage: one partition, one row per tenant.

use async_trait::async_trait;
use tables::{Entity, IfMatch, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, str_property, time_property};
use crate::domain::{Tenant, TenantStatus};

/// Stores registered tenants.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Registers a tenant. An offboarded tenant registers again (reactivated); any other
    /// existing tenant is a conflict.
    async fn create(&self, tenant: &Tenant) -> Result<Tenant, StoreError>;
    /// One tenant.
    async fn get(&self, tenant_id: Uuid) -> Result<Option<Tenant>, StoreError>;
    /// All tenants.
    async fn list(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Records an administrator's consent: creates the tenant, or updates an existing one
    /// without ever downgrading it, changing its cloud or app, or reviving an offboarded one
    /// (a conflict).
    async fn record_consent(&self, tenant: &Tenant) -> Result<Tenant, StoreError>;
    /// Sets or clears the tenant's own app registration; `None` when it does not exist.
    async fn set_app(
        &self,
        tenant_id: Uuid,
        app_client_id: Option<Uuid>,
    ) -> Result<Option<Tenant>, StoreError>;
    /// Changes a tenant's status; `None` when it does not exist.
    async fn set_status(
        &self,
        tenant_id: Uuid,
        status: TenantStatus,
        at: OffsetDateTime,
    ) -> Result<Option<Tenant>, StoreError>;
    /// Removes a tenant that is still `pending` with its latest consent before
    /// `consented_before`, decided on the row as it is deleted (a confirmation or a newer
    /// consent that lands first keeps it); the removed tenant, or `None`.
    async fn remove_unconfirmed(
        &self,
        tenant_id: Uuid,
        consented_before: OffsetDateTime,
    ) -> Result<Option<Tenant>, StoreError>;
}

const PARTITION: &str = "tenant";

/// [`TenantStore`] on a table.
pub struct TableTenantStore {
    table: Table,
}

impl TableTenantStore {
    /// A registry in `table`.
    pub fn new(table: Table) -> TableTenantStore {
        TableTenantStore { table }
    }

    /// Reads a tenant, changes it and writes it back under its ETag, reading again when
    /// another writer came first; `None` when it does not exist.
    async fn modify(
        &self,
        tenant_id: Uuid,
        change: impl Fn(Tenant) -> Tenant,
    ) -> Result<Option<Tenant>, StoreError> {
        for _ in 0..3 {
            let Some(existing) = self
                .table
                .try_get(PARTITION, &tenant_id.to_string())
                .await?
            else {
                return Ok(None);
            };
            let tenant = change(Self::from_entity(&existing)?);
            let etag = existing
                .etag
                .clone()
                .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
            match self
                .table
                .replace(&Self::to_entity(&tenant), IfMatch::ETag(etag))
                .await
            {
                Ok(_) => return Ok(Some(tenant)),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }

    fn to_entity(t: &Tenant) -> Entity {
        let mut e = Entity::new(PARTITION, t.tenant_id.to_string())
            .with("DisplayName", t.display_name.as_str())
            .with("Cloud", t.cloud.as_str())
            .with("Status", t.status.as_str())
            .with("AddedBy", t.added_by.as_str())
            .with("CreatedAt", t.created_at);
        if let Some(at) = t.offboarded_at {
            e.set("OffboardedAt", at);
        }
        if let Some(at) = t.consented_at {
            e.set("ConsentedAt", at);
        }
        if let Some(app) = t.app_client_id {
            e.set("AppClientId", app.to_string());
        }
        e
    }

    fn from_entity(e: &Entity) -> Result<Tenant, StoreError> {
        Ok(Tenant {
            tenant_id: Uuid::try_parse(&e.row_key)
                .map_err(|_| StoreError::Corrupt("tenant key is not a GUID".into()))?,
            display_name: str_property(e, "DisplayName")?.to_string(),
            cloud: str_property(e, "Cloud")?
                .parse()
                .map_err(|_| StoreError::Corrupt("unknown cloud".into()))?,
            status: TenantStatus::parse(str_property(e, "Status")?)
                .ok_or_else(|| StoreError::Corrupt("unknown tenant status".into()))?,
            added_by: str_property(e, "AddedBy")?.to_string(),
            created_at: time_property(e, "CreatedAt")?,
            consented_at: e.get_datetime("ConsentedAt"),
            app_client_id: e
                .get_str("AppClientId")
                .and_then(|a| Uuid::try_parse(a).ok()),
            offboarded_at: e.get_datetime("OffboardedAt"),
        })
    }
}

#[async_trait]
impl TenantStore for TableTenantStore {
    async fn create(&self, tenant: &Tenant) -> Result<Tenant, StoreError> {
        let entity = Self::to_entity(tenant);
        match self.table.insert(&entity).await {
            Ok(_) => return Ok(tenant.clone()),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        let existing = self.table.get(PARTITION, &entity.row_key).await?;
        let current = Self::from_entity(&existing)?;
        if current.status != TenantStatus::Offboarded {
            return Err(StoreError::Conflict(format!(
                "tenant {} is already registered",
                tenant.tenant_id
            )));
        }
        let etag = existing
            .etag
            .clone()
            .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
        match self.table.replace(&entity, IfMatch::ETag(etag)).await {
            Ok(_) => Ok(tenant.clone()),
            Err(e) if e.is_precondition_failed() => Err(StoreError::Contended),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        match self
            .table
            .try_get(PARTITION, &tenant_id.to_string())
            .await?
        {
            Some(e) => Self::from_entity(&e).map(Some),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = self.table.query_all(Query::partition(PARTITION)).await?;
        rows.iter().map(Self::from_entity).collect()
    }

    async fn record_consent(&self, tenant: &Tenant) -> Result<Tenant, StoreError> {
        for _ in 0..3 {
            let key = tenant.tenant_id.to_string();
            let Some(existing) = self.table.try_get(PARTITION, &key).await? else {
                match self.table.insert(&Self::to_entity(tenant)).await {
                    Ok(_) => return Ok(tenant.clone()),
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let current = Self::from_entity(&existing)?;
            if current.status == TenantStatus::Offboarded {
                // a consent callback never brings back an offboarded tenant: an admin does
                return Err(StoreError::Conflict(format!(
                    "tenant {} was offboarded; it must be registered again by an administrator",
                    tenant.tenant_id
                )));
            }
            // never downgrade an active tenant, and keep what the callback cannot know
            let confirmed = tenant.status == TenantStatus::Active;
            let updated = Tenant {
                status: if confirmed {
                    TenantStatus::Active
                } else {
                    current.status
                },
                display_name: if confirmed {
                    tenant.display_name.clone()
                } else {
                    current.display_name.clone()
                },
                consented_at: tenant.consented_at.or(current.consented_at),
                ..current.clone()
            };
            let etag = existing
                .etag
                .clone()
                .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
            match self
                .table
                .replace(&Self::to_entity(&updated), IfMatch::ETag(etag))
                .await
            {
                Ok(_) => return Ok(updated),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }

    async fn set_app(
        &self,
        tenant_id: Uuid,
        app_client_id: Option<Uuid>,
    ) -> Result<Option<Tenant>, StoreError> {
        self.modify(tenant_id, |tenant| Tenant {
            app_client_id,
            ..tenant
        })
        .await
    }

    async fn set_status(
        &self,
        tenant_id: Uuid,
        status: TenantStatus,
        at: OffsetDateTime,
    ) -> Result<Option<Tenant>, StoreError> {
        self.modify(tenant_id, |mut tenant| {
            tenant.offboarded_at =
                (status == TenantStatus::Offboarded).then_some(tenant.offboarded_at.unwrap_or(at));
            tenant.status = status;
            tenant
        })
        .await
    }

    async fn remove_unconfirmed(
        &self,
        tenant_id: Uuid,
        consented_before: OffsetDateTime,
    ) -> Result<Option<Tenant>, StoreError> {
        let key = tenant_id.to_string();
        for _ in 0..3 {
            let Some(existing) = self.table.try_get(PARTITION, &key).await? else {
                return Ok(None);
            };
            let tenant = Self::from_entity(&existing)?;
            if tenant.status != TenantStatus::Pending
                || tenant.consented_at.unwrap_or(tenant.created_at) >= consented_before
            {
                return Ok(None);
            }
            let etag = existing
                .etag
                .clone()
                .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
            match self
                .table
                .delete(PARTITION, &key, IfMatch::ETag(etag))
                .await
            {
                Ok(()) => return Ok(Some(tenant)),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contended)
    }
}
