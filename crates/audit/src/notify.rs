//! Who hears about a tenant's incidents, and the incidents' state: the store trait and
//! its Table Storage implementation (one partition per tenant: a settings row and one row
//! per open incident, changed under ETags so that instances never double a notice).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tables::{ETag, Entity, IfMatch, Table};
use uuid::Uuid;

use crate::incident::{Incident, IncidentKind, NoticeKind, RateThreshold};
use crate::store::AuditError;

/// A tenant's notification settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSettings {
    /// E-mail recipients.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Where signed JSON notices are POSTed (https, or http on loopback).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Which incidents notify.
    #[serde(default = "all_kinds")]
    pub notify_on: Vec<IncidentKind>,
    /// When SCIM requests fail often enough to be an incident.
    #[serde(default)]
    pub scim_failure_rate: RateThreshold,
}

fn all_kinds() -> Vec<IncidentKind> {
    IncidentKind::ALL.to_vec()
}

impl NotificationSettings {
    /// True when `kind` notifies someone.
    pub fn wants(&self, kind: IncidentKind) -> bool {
        (!self.emails.is_empty() || self.webhook_url.is_some()) && self.notify_on.contains(&kind)
    }
}

/// One notification to deliver (the queue message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Unique: the receiver may see a retried delivery twice and can drop the repeat.
    pub id: String,
    pub tenant: Uuid,
    pub notice: NoticeKind,
    /// None for a test notice.
    pub kind: Option<IncidentKind>,
    pub incident: Option<Incident>,
}

impl Notice {
    /// The subject line of its e-mail.
    pub fn subject(&self) -> String {
        let what = self.kind.map(|k| k.as_str()).unwrap_or("test");
        match self.notice {
            NoticeKind::Opened => format!(
                "[entra-connector] {what}: failing for tenant {}",
                self.tenant
            ),
            NoticeKind::Reminder => format!(
                "[entra-connector] {what}: still failing for tenant {}",
                self.tenant
            ),
            NoticeKind::Recovered => format!(
                "[entra-connector] {what}: recovered for tenant {}",
                self.tenant
            ),
            NoticeKind::Test => format!(
                "[entra-connector] test notification for tenant {}",
                self.tenant
            ),
        }
    }

    /// The plain-text body of its e-mail.
    pub fn text(&self) -> String {
        match (&self.incident, self.notice) {
            (_, NoticeKind::Test) => "This is a test of this tenant's notifications.".into(),
            (Some(i), NoticeKind::Recovered) => format!(
                "Recovered after {} failures since {}.\nFirst failure: {}\nLast failure: {}\n",
                i.failures, i.opened_at, i.reason, i.last_reason
            ),
            (Some(i), _) => format!(
                "Failing since {} ({} failures so far).\nFirst failure: {}\nLatest: {}\nSee GET /api/v1/tenants/{}/audit?outcome=failure for every failure.\n",
                i.opened_at, i.failures, i.reason, i.last_reason, self.tenant
            ),
            (None, _) => String::new(),
        }
    }
}

/// Settings and incidents.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    async fn settings(&self, tenant: Uuid) -> Result<Option<NotificationSettings>, AuditError>;
    async fn put_settings(
        &self,
        tenant: Uuid,
        settings: &NotificationSettings,
    ) -> Result<(), AuditError>;
    /// The open incident of a kind, with its version.
    async fn incident(
        &self,
        tenant: Uuid,
        kind: IncidentKind,
    ) -> Result<Option<(Incident, ETag)>, AuditError>;
    /// Writes it if it is still at `version` (None: not open yet); false when another
    /// writer changed it first.
    async fn save_incident(
        &self,
        tenant: Uuid,
        incident: &Incident,
        version: Option<&ETag>,
    ) -> Result<bool, AuditError>;
    /// Closes it if it is still at `version`; false when another writer changed it first.
    async fn close_incident(
        &self,
        tenant: Uuid,
        kind: IncidentKind,
        version: &ETag,
    ) -> Result<bool, AuditError>;
}

/// The Table Storage implementation.
pub struct TableNotificationStore {
    table: Table,
}

impl TableNotificationStore {
    /// The store over one table.
    pub fn new(table: Table) -> TableNotificationStore {
        TableNotificationStore { table }
    }
}

fn lost_race(e: &tables::Error) -> bool {
    e.is_conflict() || e.is_precondition_failed() || e.is_not_found()
}

#[async_trait]
impl NotificationStore for TableNotificationStore {
    async fn settings(&self, tenant: Uuid) -> Result<Option<NotificationSettings>, AuditError> {
        let Some(row) = self.table.try_get(&tenant.to_string(), "settings").await? else {
            return Ok(None);
        };
        let json = row.get_str("Settings").unwrap_or("{}");
        serde_json::from_str(json)
            .map(Some)
            .map_err(|e| AuditError::Malformed(format!("notification settings: {e}")))
    }

    async fn put_settings(
        &self,
        tenant: Uuid,
        settings: &NotificationSettings,
    ) -> Result<(), AuditError> {
        let json = serde_json::to_string(settings).expect("settings serialize");
        self.table
            .upsert_replace(&Entity::new(tenant.to_string(), "settings").with("Settings", json))
            .await?;
        Ok(())
    }

    async fn incident(
        &self,
        tenant: Uuid,
        kind: IncidentKind,
    ) -> Result<Option<(Incident, ETag)>, AuditError> {
        let row = self
            .table
            .try_get(&tenant.to_string(), &format!("incident-{}", kind.as_str()))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let incident = serde_json::from_str(row.get_str("Incident").unwrap_or("{}"))
            .map_err(|e| AuditError::Malformed(format!("incident: {e}")))?;
        let etag = row
            .etag
            .clone()
            .ok_or_else(|| AuditError::Malformed("incident without ETag".into()))?;
        Ok(Some((incident, etag)))
    }

    async fn save_incident(
        &self,
        tenant: Uuid,
        incident: &Incident,
        version: Option<&ETag>,
    ) -> Result<bool, AuditError> {
        let row = Entity::new(
            tenant.to_string(),
            format!("incident-{}", incident.kind.as_str()),
        )
        .with(
            "Incident",
            serde_json::to_string(incident).expect("incident serializes"),
        );
        let written = match version {
            None => self.table.insert(&row).await,
            Some(etag) => self.table.replace(&row, IfMatch::ETag(etag.clone())).await,
        };
        match written {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn close_incident(
        &self,
        tenant: Uuid,
        kind: IncidentKind,
        version: &ETag,
    ) -> Result<bool, AuditError> {
        match self
            .table
            .delete(
                &tenant.to_string(),
                &format!("incident-{}", kind.as_str()),
                IfMatch::ETag(version.clone()),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
