//! The service's domain: registered tenants, access grants, employee records. Values here
//! are parsed, not merely validated: a `Grant` always has known scopes, a `Position` a
//! start on or before its end.

use entra::Cloud;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// Where a tenant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Registered, but not yet confirmed (onboarding by consent in progress).
    Pending,
    /// Its tokens are accepted and its grants apply.
    Active,
    /// Offboarded: tokens refused, grants revoked, data kept for audit until purged.
    Offboarded,
}

impl TenantStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Pending => "pending",
            TenantStatus::Active => "active",
            TenantStatus::Offboarded => "offboarded",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TenantStatus> {
        [
            TenantStatus::Pending,
            TenantStatus::Active,
            TenantStatus::Offboarded,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A customer tenant known to the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub display_name: String,
    pub cloud: Cloud,
    pub status: TenantStatus,
    /// How the tenant was added: `admin_api` or `admin_consent`.
    pub added_by: String,
    pub created_at: OffsetDateTime,
    /// When an administrator of the tenant consented (onboarding by link).
    pub consented_at: Option<OffsetDateTime>,
    pub offboarded_at: Option<OffsetDateTime>,
    /// Customer-owned application mode: the tenant's own app registration, used for its
    /// Graph calls with a certificate whose key is in our vault.
    pub app_client_id: Option<Uuid>,
}

/// Where an activation link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Pending,
    Used,
    Expired,
    Revoked,
    /// Used by a consent that was never confirmed: the pending tenant was dropped.
    Failed,
}

impl LinkState {
    /// The displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Pending => "pending",
            LinkState::Used => "used",
            LinkState::Expired => "expired",
            LinkState::Revoked => "revoked",
            LinkState::Failed => "failed",
        }
    }
}

/// A single-use, expiring link that lets a customer's administrator onboard their tenant.
/// Only a hash of its secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationLink {
    pub id: Uuid,
    pub cloud: Cloud,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// The tenant that used the link.
    pub tenant_id: Option<Uuid>,
    /// When the consent made with the link was given up on, and why (the record kept of
    /// a pending tenant that was dropped).
    pub failed_at: Option<OffsetDateTime>,
    pub failure_reason: Option<String>,
}

impl ActivationLink {
    /// The state at `now`.
    pub fn state(&self, now: OffsetDateTime) -> LinkState {
        if self.revoked_at.is_some() {
            LinkState::Revoked
        } else if self.failed_at.is_some() {
            LinkState::Failed
        } else if self.used_at.is_some() {
            LinkState::Used
        } else if now >= self.expires_at {
            LinkState::Expired
        } else {
            LinkState::Pending
        }
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A user account, by its object id in the tenant (`oid`).
    User { object_id: Uuid },
    /// A service principal, by its application (client) id (`azp`/`appid`).
    ServicePrincipal { client_id: Uuid },
}

impl Principal {
    /// `user` or `service_principal`.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::User { .. } => "user",
            Principal::ServicePrincipal { .. } => "service_principal",
        }
    }

    /// The identifier grants are matched on.
    pub fn id(&self) -> Uuid {
        match self {
            Principal::User { object_id } => *object_id,
            Principal::ServicePrincipal { client_id } => *client_id,
        }
    }

    /// A key unique per principal within a tenant.
    pub fn index_key(&self) -> String {
        format!("principal-{}-{}", self.kind(), self.id())
    }
}

/// Access to the product's API, for one principal of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub principal: Principal,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    /// Set when the tenant was offboarded; a revoked grant never matches again.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Checks scope names against the configured list; order kept, duplicates dropped.
pub fn parse_scopes(requested: &[String], known: &[String]) -> Result<Vec<String>, String> {
    if requested.is_empty() {
        return Err("scopes: give at least one scope".into());
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in requested {
        if !known.iter().any(|k| k == scope) {
            return Err(format!(
                "scopes: unknown scope {scope:?}; this service offers {}",
                if known.is_empty() {
                    "none (set CONNECTOR_SCOPES)".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    Ok(scopes)
}

/// One position held by an employee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub title: String,
    #[serde(with = "iso_date")]
    pub start: Date,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "iso_date_opt"
    )]
    #[schema(nullable = false)]
    pub end: Option<Date>,
}

impl Position {
    /// Active when `today` falls within start..=end (an open end never ends).
    pub fn is_active_on(&self, today: Date) -> bool {
        self.start <= today && self.end.is_none_or(|end| today <= end)
    }
}

/// An employee record: who the person is in Entra, and their positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Employee {
    pub tenant_id: Uuid,
    pub employee_id: String,
    pub object_id: Uuid,
    pub positions: Vec<Position>,
    pub updated_at: OffsetDateTime,
}

impl Employee {
    /// At least one position is active today (UTC).
    pub fn is_active_on(&self, today: Date) -> bool {
        self.positions.iter().any(|p| p.is_active_on(today))
    }
}

/// Checks an employee id: 1-128 printable characters.
pub fn parse_employee_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.chars().count() > 128 || raw.chars().any(char::is_control) {
        return Err("employee_id: 1-128 printable characters".into());
    }
    Ok(raw.to_string())
}

/// Checks positions: titles present, end not before start, at most 100.
pub fn check_positions(positions: &[Position]) -> Result<(), String> {
    if positions.len() > 100 {
        return Err("positions: at most 100".into());
    }
    for (i, p) in positions.iter().enumerate() {
        if p.title.trim().is_empty() || p.title.chars().count() > 256 {
            return Err(format!("positions[{i}].title: 1-256 characters"));
        }
        if p.end.is_some_and(|end| end < p.start) {
            return Err(format!("positions[{i}]: end is before start"));
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` dates in JSON.
pub mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    const FORMAT: &[time::format_description::FormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(date: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&date.format(FORMAT).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Date, String> {
        Date::parse(s, FORMAT).map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))
    }
}

/// Optional `YYYY-MM-DD` dates in JSON.
pub mod iso_date_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    pub fn serialize<S: Serializer>(date: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(d) => super::iso_date::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::iso_date::parse(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_position_is_active_from_start_through_end_inclusive() {
        let p = Position {
            title: "Engineer".into(),
            start: date!(2026 - 01 - 01),
            end: Some(date!(2026 - 12 - 31)),
        };
        assert!(!p.is_active_on(date!(2025 - 12 - 31)));
        assert!(p.is_active_on(date!(2026 - 01 - 01)));
        assert!(p.is_active_on(date!(2026 - 12 - 31)));
        assert!(!p.is_active_on(date!(2027 - 01 - 01)));
        let open = Position { end: None, ..p };
        assert!(open.is_active_on(date!(2099 - 01 - 01)));
    }

    #[test]
    fn scopes_must_be_configured_ones() {
        let known = vec!["records.read".to_string(), "records.write".to_string()];
        let ok = parse_scopes(
            &[
                "records.write".into(),
                "records.read".into(),
                "records.write".into(),
            ],
            &known,
        )
        .unwrap();
        assert_eq!(ok, ["records.write", "records.read"]);
        assert!(
            parse_scopes(&["records.delete".into()], &known)
                .unwrap_err()
                .contains("records.read, records.write")
        );
        assert!(parse_scopes(&[], &known).is_err());
    }

    #[test]
    fn positions_parse_from_json_and_are_checked() {
        let p: Position =
            serde_json::from_str(r#"{"title":"Analyst","start":"2026-02-01","end":"2026-01-01"}"#)
                .unwrap();
        assert!(check_positions(&[p]).unwrap_err().contains("before start"));
        assert!(serde_json::from_str::<Position>(r#"{"title":"A","start":"01/02/2026"}"#).is_err());
        assert!(
            serde_json::from_str::<Position>(r#"{"title":"A","start":"2026-01-01","boss":1}"#)
                .is_err()
        );
    }
}
