//! Storage behind traits that speak the domain; the Table Storage implementations live
//! beside them and handle keys, ETags and batches in one place.

pub mod runs;

pub use runs::{RunLog, RunOutcome, RunRecord, TableRunLog};

/// A storage failure, as the domain sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be reached or answered with an error.
    #[error("storage unavailable: {0}")]
    Unavailable(#[from] tables::Error),
    /// Stored data could not be read back (written by an incompatible version?).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
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

    /// Every table this version uses, to create at start-up.
    pub fn all(&self) -> Vec<String> {
        vec![self.runs()]
    }
}
