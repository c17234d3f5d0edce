//! Where authorities and certificates are kept: one partition per tenant of the
//! `{prefix}Certificates` table, the authority in row `ca`, each certificate in `cert-{id}`.
//! Private keys are never stored here (the CA's is in the vault; issued keys are returned
//! once and forgotten).

use async_trait::async_trait;
use tables::{ETag, Entity, IfMatch, Query, Table, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Authority, CertificateRecord, CertificateStatus, CertificateType, RevocationReason};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be reached, or answered with an error a retry may cure.
    #[error("storage unavailable: {0}")]
    Unavailable(tables::Error),
    /// A stored row could not be read back.
    #[error("stored certificate data is unreadable: {0}")]
    Corrupt(String),
}

impl From<tables::Error> for StoreError {
    fn from(e: tables::Error) -> StoreError {
        StoreError::Unavailable(e)
    }
}

/// Authorities and certificates, per tenant.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    /// The tenant's authority, with its ETag.
    async fn authority(&self, tenant: Uuid) -> Result<Option<(Authority, ETag)>, StoreError>;
    /// Stores a new authority; false when the tenant already has one.
    async fn create_authority(&self, authority: &Authority) -> Result<bool, StoreError>;
    /// Replaces the authority (a new CRL) if it is unchanged since `etag`; false otherwise.
    async fn replace_authority(
        &self,
        authority: &Authority,
        etag: &ETag,
    ) -> Result<bool, StoreError>;
    /// Stores a newly issued certificate.
    async fn insert(&self, record: &CertificateRecord) -> Result<(), StoreError>;
    /// One certificate of a tenant, with its ETag.
    async fn get(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<(CertificateRecord, ETag)>, StoreError>;
    /// Replaces a certificate (its revocation) if it is unchanged since `etag`.
    async fn replace(&self, record: &CertificateRecord, etag: &ETag) -> Result<bool, StoreError>;
    /// Certificates of a tenant: of the given users only (all when None), of a status only.
    async fn list(
        &self,
        tenant: Uuid,
        users: Option<&[Uuid]>,
        status: Option<CertificateStatus>,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
}

/// The Table Storage implementation.
pub struct TableCertificateStore {
    table: Table,
}

impl TableCertificateStore {
    /// A store over `table` (created on first write when missing).
    pub fn new(table: Table) -> TableCertificateStore {
        TableCertificateStore { table }
    }
}

const CA_ROW: &str = "ca";
/// Users named in one query's filter (with the four other comparisons, 14 of the 15 a
/// Table Storage filter may hold).
const USERS_PER_QUERY: usize = 10;

fn cert_row(id: Uuid) -> String {
    format!("cert-{id}")
}

fn corrupt(row: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{row}: {what}"))
}

fn text<'a>(e: &'a Entity, name: &str) -> Result<&'a str, StoreError> {
    e.get_str(name)
        .ok_or_else(|| corrupt(&e.row_key, &format!("no {name}")))
}

fn binary<'a>(e: &'a Entity, name: &str) -> Result<&'a [u8], StoreError> {
    match e.get(name) {
        Some(Value::Binary(b)) => Ok(b),
        _ => Err(corrupt(&e.row_key, &format!("no {name}"))),
    }
}

fn when(e: &Entity, name: &str) -> Result<OffsetDateTime, StoreError> {
    e.get_datetime(name)
        .ok_or_else(|| corrupt(&e.row_key, &format!("no {name}")))
}

fn guid(e: &Entity, name: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(text(e, name)?).map_err(|_| corrupt(&e.row_key, &format!("{name} not a GUID")))
}

fn authority_entity(a: &Authority) -> Entity {
    Entity::new(a.tenant.to_string(), CA_ROW)
        .with("KeyName", a.key_name.as_str())
        .with("Der", Value::Binary(a.der.clone()))
        .with("CrlDer", Value::Binary(a.crl_der.clone()))
        .with("CrlNumber", Value::Int64(a.crl_number as i64))
        .with("CrlThisUpdate", Value::DateTime(a.crl_this_update))
        .with("CrlNextUpdate", Value::DateTime(a.crl_next_update))
        .with("CreatedAt", Value::DateTime(a.created_at))
}

fn authority_of(e: &Entity) -> Result<Authority, StoreError> {
    Ok(Authority {
        tenant: Uuid::try_parse(&e.partition_key)
            .map_err(|_| corrupt(&e.row_key, "partition is not a tenant"))?,
        key_name: text(e, "KeyName")?.to_string(),
        der: binary(e, "Der")?.to_vec(),
        crl_der: binary(e, "CrlDer")?.to_vec(),
        crl_number: e
            .get_i64("CrlNumber")
            .ok_or_else(|| corrupt(CA_ROW, "no CrlNumber"))? as u64,
        crl_this_update: when(e, "CrlThisUpdate")?,
        crl_next_update: when(e, "CrlNextUpdate")?,
        created_at: when(e, "CreatedAt")?,
    })
}

fn record_entity(r: &CertificateRecord) -> Entity {
    let mut e = Entity::new(r.tenant.to_string(), cert_row(r.id))
        .with("UserId", r.user_id.to_string())
        .with("Serial", r.serial.as_str())
        .with("Type", r.kind.as_str())
        .with("Subject", r.subject.as_str())
        .with("NotBefore", Value::DateTime(r.not_before))
        .with("NotAfter", Value::DateTime(r.not_after))
        .with("Thumbprint", r.thumbprint.as_str())
        .with("Der", Value::Binary(r.der.clone()))
        .with("KeySource", r.key_source.as_str())
        .with("Status", r.status.as_str())
        .with("CreatedAt", Value::DateTime(r.created_at));
    if let Some(at) = r.revoked_at {
        e.set("RevokedAt", Value::DateTime(at));
    }
    if let Some(reason) = r.reason {
        e.set("Reason", reason.as_str());
    }
    if let Some(by) = &r.revoked_by {
        e.set("RevokedBy", by.as_str());
    }
    if let Some(recorded) = r.revocation_recorded {
        e.set("RevocationRecorded", recorded);
    }
    e
}

fn record_of(e: &Entity) -> Result<CertificateRecord, StoreError> {
    let row = &e.row_key;
    let id = row
        .strip_prefix("cert-")
        .and_then(|s| Uuid::try_parse(s).ok())
        .ok_or_else(|| corrupt(row, "not a certificate row"))?;
    Ok(CertificateRecord {
        id,
        tenant: Uuid::try_parse(&e.partition_key)
            .map_err(|_| corrupt(row, "partition is not a tenant"))?,
        user_id: guid(e, "UserId")?,
        serial: text(e, "Serial")?.to_string(),
        kind: CertificateType::parse(text(e, "Type")?).ok_or_else(|| corrupt(row, "Type"))?,
        subject: text(e, "Subject")?.to_string(),
        not_before: when(e, "NotBefore")?,
        not_after: when(e, "NotAfter")?,
        thumbprint: text(e, "Thumbprint")?.to_string(),
        der: binary(e, "Der")?.to_vec(),
        key_source: text(e, "KeySource")?.to_string(),
        status: CertificateStatus::parse(text(e, "Status")?)
            .ok_or_else(|| corrupt(row, "Status"))?,
        revoked_at: e.get_datetime("RevokedAt"),
        reason: e
            .get_str("Reason")
            .map(|r| RevocationReason::parse(r).ok_or_else(|| corrupt(row, "Reason")))
            .transpose()?,
        revoked_by: e.get_str("RevokedBy").map(str::to_string),
        revocation_recorded: e.get_bool("RevocationRecorded"),
        created_at: when(e, "CreatedAt")?,
    })
}

#[async_trait]
impl CertificateStore for TableCertificateStore {
    async fn authority(&self, tenant: Uuid) -> Result<Option<(Authority, ETag)>, StoreError> {
        match self.table.try_get(&tenant.to_string(), CA_ROW).await {
            Ok(Some(e)) => {
                let etag = e.etag.clone().ok_or_else(|| corrupt(CA_ROW, "no ETag"))?;
                Ok(Some((authority_of(&e)?, etag)))
            }
            Ok(None) => Ok(None),
            Err(tables::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn create_authority(&self, authority: &Authority) -> Result<bool, StoreError> {
        let entity = authority_entity(authority);
        match self.table.insert(&entity).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace_authority(
        &self,
        authority: &Authority,
        etag: &ETag,
    ) -> Result<bool, StoreError> {
        let entity = authority_entity(authority);
        match self
            .table
            .replace(&entity, IfMatch::ETag(etag.clone()))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn insert(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        let entity = record_entity(record);
        self.table.insert(&entity).await?;
        Ok(())
    }

    async fn get(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<(CertificateRecord, ETag)>, StoreError> {
        match self.table.try_get(&tenant.to_string(), &cert_row(id)).await {
            Ok(Some(e)) => {
                let etag = e
                    .etag
                    .clone()
                    .ok_or_else(|| corrupt(&e.row_key, "no ETag"))?;
                Ok(Some((record_of(&e)?, etag)))
            }
            Ok(None) | Err(tables::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace(&self, record: &CertificateRecord, etag: &ETag) -> Result<bool, StoreError> {
        let entity = record_entity(record);
        match self
            .table
            .replace(&entity, IfMatch::ETag(etag.clone()))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_precondition_failed() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(
        &self,
        tenant: Uuid,
        users: Option<&[Uuid]>,
        status: Option<CertificateStatus>,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        // Table Storage allows 15 comparisons in one filter: at most 10 users per query
        if let Some(users) = users
            && users.len() > USERS_PER_QUERY
        {
            let mut all = Vec::new();
            for chunk in users.chunks(USERS_PER_QUERY) {
                all.extend(self.list(tenant, Some(chunk), status).await?);
            }
            all.sort_by_key(|r| r.created_at);
            return Ok(all);
        }
        if users.is_some_and(<[Uuid]>::is_empty) {
            return Ok(Vec::new());
        }
        let mut filter = format!(
            "PartitionKey eq {} and RowKey ge 'cert-' and RowKey lt 'cert.'",
            Value::from(tenant.to_string()).filter_literal()
        );
        if let Some(status) = status {
            filter.push_str(&format!(
                " and Status eq {}",
                Value::from(status.as_str()).filter_literal()
            ));
        }
        if let Some(users) = users {
            let any: Vec<String> = users
                .iter()
                .map(|u| format!("UserId eq {}", Value::from(u.to_string()).filter_literal()))
                .collect();
            filter.push_str(&format!(" and ({})", any.join(" or ")));
        }
        let entities = match self.table.query_all(Query::filter(filter)).await {
            Ok(e) => e,
            Err(tables::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut records = entities
            .iter()
            .map(record_of)
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }
}
