//! Activation links on Table Storage: one partition, one row per link. Using a link is a
//! conditional replace on the ETag read with it, so of many concurrent callbacks exactly
//! one wins.

use async_trait::async_trait;
use tables::{ETag, Entity, IfMatch, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, str_property, time_property};
use crate::domain::ActivationLink;

/// Stores activation links.
#[async_trait]
pub trait LinkStore: Send + Sync {
    /// Stores a new link.
    async fn create(&self, link: &ActivationLink) -> Result<(), StoreError>;
    /// One link and the ETag to change it with.
    async fn get(&self, id: Uuid) -> Result<Option<(ActivationLink, ETag)>, StoreError>;
    /// All links.
    async fn list(&self) -> Result<Vec<ActivationLink>, StoreError>;
    /// Marks the link used by `tenant_id` if it is still at `etag`; false when another
    /// request changed it first.
    async fn claim(
        &self,
        link: &ActivationLink,
        etag: ETag,
        tenant_id: Uuid,
        at: OffsetDateTime,
    ) -> Result<Option<ETag>, StoreError>;
    /// Makes a claimed link usable again (the tenant could not be confirmed).
    async fn release(&self, link: &ActivationLink, etag: ETag) -> Result<(), StoreError>;
    /// Revokes a link; false when it does not exist.
    async fn revoke(&self, id: Uuid, at: OffsetDateTime) -> Result<bool, StoreError>;
    /// Marks a used link failed with the reason (its consent was given up on); false when
    /// it does not exist.
    async fn fail(&self, id: Uuid, reason: &str, at: OffsetDateTime) -> Result<bool, StoreError>;
}

const PARTITION: &str = "link";

/// [`LinkStore`] on a table.
pub struct TableLinkStore {
    table: Table,
}

impl TableLinkStore {
    /// Links in `table`.
    pub fn new(table: Table) -> TableLinkStore {
        TableLinkStore { table }
    }

    fn to_entity(l: &ActivationLink) -> Entity {
        let mut e = Entity::new(PARTITION, l.id.to_string())
            .with("Cloud", l.cloud.as_str())
            .with("SecretHash", l.secret_hash.as_str())
            .with("CreatedAt", l.created_at)
            .with("ExpiresAt", l.expires_at);
        if let Some(at) = l.used_at {
            e.set("UsedAt", at);
        }
        if let Some(at) = l.revoked_at {
            e.set("RevokedAt", at);
        }
        if let Some(t) = l.tenant_id {
            e.set("TenantId", t.to_string());
        }
        if let Some(at) = l.failed_at {
            e.set("FailedAt", at);
        }
        if let Some(reason) = &l.failure_reason {
            e.set("FailureReason", reason.as_str());
        }
        e
    }

    fn from_entity(e: &Entity) -> Result<ActivationLink, StoreError> {
        Ok(ActivationLink {
            id: Uuid::try_parse(&e.row_key).map_err(|_| StoreError::Corrupt("link key".into()))?,
            cloud: str_property(e, "Cloud")?
                .parse()
                .map_err(|_| StoreError::Corrupt("link cloud".into()))?,
            secret_hash: str_property(e, "SecretHash")?.to_string(),
            created_at: time_property(e, "CreatedAt")?,
            expires_at: time_property(e, "ExpiresAt")?,
            used_at: e.get_datetime("UsedAt"),
            revoked_at: e.get_datetime("RevokedAt"),
            tenant_id: e.get_str("TenantId").and_then(|t| Uuid::try_parse(t).ok()),
            failed_at: e.get_datetime("FailedAt"),
            failure_reason: e.get_str("FailureReason").map(str::to_string),
        })
    }
}

#[async_trait]
impl LinkStore for TableLinkStore {
    async fn create(&self, link: &ActivationLink) -> Result<(), StoreError> {
        self.table.insert(&Self::to_entity(link)).await?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<(ActivationLink, ETag)>, StoreError> {
        let Some(e) = self.table.try_get(PARTITION, &id.to_string()).await? else {
            return Ok(None);
        };
        let etag = e
            .etag
            .clone()
            .ok_or_else(|| StoreError::Corrupt("read without ETag".into()))?;
        Ok(Some((Self::from_entity(&e)?, etag)))
    }

    async fn list(&self) -> Result<Vec<ActivationLink>, StoreError> {
        let rows = self.table.query_all(Query::partition(PARTITION)).await?;
        rows.iter().map(Self::from_entity).collect()
    }

    async fn claim(
        &self,
        link: &ActivationLink,
        etag: ETag,
        tenant_id: Uuid,
        at: OffsetDateTime,
    ) -> Result<Option<ETag>, StoreError> {
        let claimed = ActivationLink {
            used_at: Some(at),
            tenant_id: Some(tenant_id),
            ..link.clone()
        };
        match self
            .table
            .replace(&Self::to_entity(&claimed), IfMatch::ETag(etag))
            .await
        {
            Ok(etag) => Ok(Some(etag)),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, link: &ActivationLink, etag: ETag) -> Result<(), StoreError> {
        let released = ActivationLink {
            used_at: None,
            tenant_id: None,
            ..link.clone()
        };
        match self
            .table
            .replace(&Self::to_entity(&released), IfMatch::ETag(etag))
            .await
        {
            Ok(_) => Ok(()),
            // revoked meanwhile: leave it as it is
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn revoke(&self, id: Uuid, at: OffsetDateTime) -> Result<bool, StoreError> {
        let update = Entity::new(PARTITION, id.to_string()).with("RevokedAt", at);
        match self.table.merge(&update, IfMatch::Any).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn fail(&self, id: Uuid, reason: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        // a property holds at most 32K characters; reasons are short, but never fail on one
        let reason: String = reason.chars().take(1000).collect();
        let update = Entity::new(PARTITION, id.to_string())
            .with("FailedAt", at)
            .with("FailureReason", reason.as_str());
        match self.table.merge(&update, IfMatch::Any).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
