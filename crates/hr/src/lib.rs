//! HR-driven write-back to Entra: HR records and their bulk import, per-tenant rules
//! (attribute mappings with simple expressions, the UPN pattern, group rules, the leaver
//! policy), plans computed purely from HR records and a view of Entra, the guard rails a
//! plan carries, the engine that applies a plan idempotently, and the stores behind them.

pub mod apply;
pub mod connection;
pub mod import;
pub mod plan;
pub mod record;
pub mod rules;
pub mod store;

pub use apply::{
    AppliedStore, Applier, ApplyReport, EntraWriter, HrEvents, NoEvents, StepJournal, StepResult,
    StepState, StepStatus, Write, WriteError, WriteErrorKind, WriteOutcome,
};
pub use connection::{Connection, ConnectionType, CredentialKind, DelegatedLink};
pub use plan::{Action, Applied, DirectoryView, EntraUser, Plan, PlanInput, Step, UserRef};
pub use record::{HrPosition, HrRecord};
pub use rules::{CompiledRules, Rules};
pub use store::{HrRecordStore, HrSettingsStore, HrStoreError, TableHrStore};
