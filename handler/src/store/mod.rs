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

/// A storage failure, as the domain sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be reached or answered with an error.
    #[error("storage unavailable: {0}")]
    Unavailable(#[from] tables::Error),
    /// Stored data could not be read back (written by an incompatible version?).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A uniqueness rule would be broken; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The record kept changing under concurrent writers; try again.
    #[error("the record changed concurrently; try again")]
    Contended,
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

    /// Directory sync state and leases.
    pub fn sync(&self) -> String {
        format!("{}Sync", self.prefix)
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
            self.sync(),
        ]
    }
}
