//! Directory sync from Microsoft Graph.
//!
//! A round reads `/users/delta`, then `/groups/delta`, page by page, and applies each page
//! to the tenant's [`directory`]. After every committed page the round's checkpoint (the
//! nextLink) is written under the tenant's lease, so a round killed anywhere resumes at
//! the page it was on. A round with no deltaLink to start from (the first, or after Graph
//! answered 410 Gone) is full, and ends with a mark and sweep of what it did not see.
//!
//! The lease is an ETag-guarded row with an expiry, renewed while the round runs: two
//! instances never sync one tenant at once, and a lease left by a dead instance expires.

mod engine;
pub mod graph;
mod schedule;
mod state;

pub use engine::{
    NoObserver, Outcome, RoundObserver, RoundOptions, RoundReport, run_round, write_tag,
};
pub use schedule::{Schedule, SyncRequest};
pub use state::{LastRound, Lease, Phase, Requests, SyncState, SyncStateStore, TableSyncStates};

use std::time::Duration;

use async_trait::async_trait;
use directory::{GroupChange, UserChange};

/// Why a page could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The delta state is gone (410 Gone, syncStateNotFound): a full round is needed.
    #[error("a full resync is needed: {0}")]
    ResyncRequired(String),
    /// Throttled beyond what the client waits out: call again no earlier than this.
    #[error("throttled by Graph (retry after {0:?})")]
    Throttled(Option<Duration>),
    /// Consent revoked, app disabled, credential refused: stop until it works again.
    #[error("access to the tenant was refused: {0}")]
    AccessRevoked(String),
    /// Anything worth retrying later (network, 5xx).
    #[error("Graph unavailable: {0}")]
    Transient(String),
}

/// Where a round goes after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// More pages: the nextLink.
    More(String),
    /// The round is complete for this collection: the deltaLink for the next round.
    Done(String),
}

/// One page of changes, already in the directory's terms.
#[derive(Debug, Clone)]
pub struct SourcePage<T> {
    pub items: Vec<T>,
    pub next: Next,
}

/// What a round reads: one tenant's users and groups from Graph.
#[async_trait]
pub trait DirectorySource: Send + Sync {
    /// A page of users, from `link` or (None) the start of a full round; the changes carry
    /// `round`.
    async fn users(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<UserChange>, SourceError>;
    /// A page of groups with their direct member changes, likewise.
    async fn groups(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<GroupChange>, SourceError>;
}

/// Why a round could not run or went wrong in our own storage.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Directory(#[from] directory::DirectoryError),
    #[error("sync state: {0}")]
    State(#[from] tables::Error),
    #[error("sync state is unreadable: {0}")]
    Corrupt(String),
    /// Another instance took the lease (ours expired): this instance stops at once.
    #[error("the tenant's sync lease was lost")]
    LeaseLost,
}
