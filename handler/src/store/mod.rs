//! Storage behind traits that speak the domain; the Table Storage implementations live
//! beside them and handle keys, ETags and batches in one place.

pub mod employees;
pub mod grants;
pub mod links;
pub mod runs;
pub mod scim;
pub mod scim_groups;
pub mod scim_keys;
pub mod tenants;

pub use employees::{EmployeeStore, TableEmployeeStore};
pub use grants::{GrantStore, TableGrantStore};
pub use links::{LinkStore, TableLinkStore};
pub use runs::{RunLog, RunOutcome, RunRecord, TableRunLog};
pub use tenants::{TableTenantStore, TenantStore};

/// A storage failure, as the domain sees it. Which variant decides the answer (400, 500,
/// 503): a retry cures only `Unavailable`, so nothing else may be reported as it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be reached or answered with an error a retry may cure.
    #[error("storage unavailable: {0}")]
    Unavailable(tables::Error),
    /// What the caller asked to store cannot be stored (a key or value too long).
    #[error("the value cannot be stored: {0}")]
    Invalid(String),
    /// Stored data could not be read back (written by an incompatible version?).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A request this service should never have built (a forbidden key character, a
    /// malformed transaction): a defect here, which no retry cures.
    #[error("storage request refused: {0}")]
    Internal(String),
    /// A uniqueness rule would be broken; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The record kept changing under concurrent writers; try again.
    #[error("the record changed concurrently; try again")]
    Contended,
}

impl From<tables::Error> for StoreError {
    fn from(e: tables::Error) -> StoreError {
        use tables::Error as E;
        let cause = match &e {
            E::Batch { source, .. } => source.as_ref(),
            other => other,
        };
        match cause {
            E::TooLarge(why) => StoreError::Invalid(why.clone()),
            // the service refused what it was asked to store (too large, out of range)
            E::Rejected {
                status: 400 | 413,
                message,
                ..
            } => StoreError::Invalid(message.clone()),
            E::Invalid(_) | E::Rejected { .. } => StoreError::Internal(e.to_string()),
            _ => StoreError::Unavailable(e),
        }
    }
}

/// Reads a JSON property written by this service.
pub(crate) fn json_property<T: serde::de::DeserializeOwned>(
    entity: &tables::Entity,
    name: &str,
) -> Result<T, StoreError> {
    let text = entity
        .get_str(name)
        .ok_or_else(|| StoreError::Corrupt(format!("{} without {name}", entity.row_key)))?;
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

/// Reads a required string property.
pub(crate) fn str_property<'a>(
    entity: &'a tables::Entity,
    name: &str,
) -> Result<&'a str, StoreError> {
    entity
        .get_str(name)
        .ok_or_else(|| StoreError::Corrupt(format!("{} without {name}", entity.row_key)))
}

/// Reads a required DateTime property.
pub(crate) fn time_property(
    entity: &tables::Entity,
    name: &str,
) -> Result<time::OffsetDateTime, StoreError> {
    entity
        .get_datetime(name)
        .ok_or_else(|| StoreError::Corrupt(format!("{} without {name}", entity.row_key)))
}

/// Reads a required GUID stored as a string.
pub(crate) fn uuid_property(entity: &tables::Entity, name: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::try_parse(str_property(entity, name)?)
        .map_err(|_| StoreError::Corrupt(format!("{name} is not a GUID")))
}

/// Table names, with the deployment's prefix applied.
#[derive(Debug, Clone)]
pub struct TableNames {
    prefix: String,
}

impl TableNames {
    /// Names with `prefix` (letters and digits, checked by the settings).
    pub fn new(prefix: &str) -> TableNames {
        TableNames {
            prefix: prefix.to_string(),
        }
    }

    /// The table of timer runs.
    pub fn runs(&self) -> String {
        format!("{}Runs", self.prefix)
    }

    /// The tenant registry.
    pub fn tenants(&self) -> String {
        format!("{}Tenants", self.prefix)
    }

    /// Access grants, one partition per tenant.
    pub fn grants(&self) -> String {
        format!("{}Grants", self.prefix)
    }

    /// Employee records, one partition per tenant.
    pub fn employees(&self) -> String {
        format!("{}Employees", self.prefix)
    }

    /// Activation links for onboarding by consent.
    pub fn links(&self) -> String {
        format!("{}ActivationLinks", self.prefix)
    }

    /// SCIM resources, one partition per tenant.
    pub fn scim(&self) -> String {
        format!("{}ScimResources", self.prefix)
    }

    /// The directory: users, groups and memberships, one partition per tenant.
    pub fn directory(&self) -> String {
        format!("{}Directory", self.prefix)
    }

    /// The directory's search rows, one partition per tenant (the directory crate names it
    /// after the directory's table).
    pub fn directory_search(&self) -> String {
        format!("{}Search", self.directory())
    }

    /// Directory sync state and leases.
    pub fn sync(&self) -> String {
        format!("{}Sync", self.prefix)
    }

    /// Issuing CAs, certificates and CRLs, one partition per tenant.
    pub fn certificates(&self) -> String {
        format!("{}Certificates", self.prefix)
    }

    /// HR write-back: records, rules, plans and their journals, connections.
    pub fn hr(&self) -> String {
        format!("{}Hr", self.prefix)
    }

    /// The audit trail: its lists of days; the events are in `{this}{yyyymmdd}`, a table per day.
    pub fn audit(&self) -> String {
        format!("{}Audit", self.prefix)
    }

    /// Notification settings and open incidents, one partition per tenant.
    pub fn notifications(&self) -> String {
        format!("{}Notifications", self.prefix)
    }

    /// Every table this version uses, to create at start-up.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.runs(),
            self.tenants(),
            self.grants(),
            self.employees(),
            self.links(),
            self.scim(),
            self.directory(),
            self.directory_search(),
            self.sync(),
            self.certificates(),
            self.hr(),
            self.audit(),
            self.notifications(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_is_reported_as_unavailable() {
        use tables::Error as E;
        let invalid = |e: E| matches!(StoreError::from(e), StoreError::Invalid(_));
        assert!(invalid(E::TooLarge(
            "RowKey is 1109 bytes; at most 1024".into()
        )));
        assert!(invalid(E::Rejected {
            status: 400,
            code: "PropertyValueTooLarge".into(),
            message: "too large".into(),
        }));
        assert!(invalid(E::Batch {
            index: 0,
            source: Box::new(E::TooLarge("entity".into())),
        }));
        assert!(matches!(
            StoreError::from(E::Invalid("a transaction spans one PartitionKey".into())),
            StoreError::Internal(_)
        ));
        for down in [
            E::Timeout(std::time::Duration::from_secs(1)),
            E::Service {
                status: 503,
                code: "ServerBusy".into(),
                message: String::new(),
            },
        ] {
            assert!(matches!(StoreError::from(down), StoreError::Unavailable(_)));
        }
        let scim = |e: StoreError| {
            let e = crate::provisioning::ScimError::from(e);
            (e.status, e.scim_type)
        };
        assert_eq!(
            scim(StoreError::Invalid("x".into())),
            (400, Some("invalidValue"))
        );
        assert_eq!(scim(StoreError::Corrupt("x".into())).0, 500);
        assert_eq!(scim(StoreError::Internal("x".into())).0, 500);
        let api = |e: StoreError| crate::routes::ApiError::from(e).status.as_u16();
        assert_eq!(api(StoreError::Invalid("x".into())), 400);
        assert_eq!(api(StoreError::Corrupt("x".into())), 500);
        assert_eq!(
            api(StoreError::Unavailable(E::Timeout(
                std::time::Duration::ZERO
            ))),
            503
        );
    }
}
