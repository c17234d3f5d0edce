//! One directory per tenant: the users, groups and direct memberships that SCIM
//! provisioning and Microsoft Graph sync both write, with the store trait and its Table
//! Storage implementation.
//!
//! A user that arrives both ways is one record: matched on the Entra object id where it is
//! known, otherwise on the UPN (SCIM's userName), case-insensitively. Every record says
//! which sources it came from. Counters (users, active, groups, memberships) are changed in
//! the same transaction as the rows they count, so statistics never need a scan.

mod layout;
mod model;
mod search;
mod table;

pub use model::{
    Change, Counters, Field, Group, GroupChange, ListFilter, MemberChange, Membership, Page,
    Sources, User, UserChange, UserFields, Writer,
};
pub use table::{Applied, ApplyMode, ObjectChange, ObjectChangeKind, TableDirectory};

use async_trait::async_trait;
use uuid::Uuid;

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Storage could not be reached, or answered with an error.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] tables::Error),
    /// The input cannot be stored (a key too long, a property too large).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored row could not be read back.
    #[error("stored directory data is unreadable: {0}")]
    Corrupt(String),
    /// Rows kept changing under concurrent writers; the caller may try again.
    #[error("the directory changed concurrently; try again")]
    Contended,
    /// What a write was about to change could not be recorded ([`BeforeCommit`]), so it
    /// was not written.
    #[error("{0}")]
    Unrecorded(String),
}

/// Told what a write is about to change, before any of it commits: a record kept there (the
/// audit trail) cannot then be lost to a crash between the commit and the record. A write
/// retried (a conflict, a page replayed after a crash) names its changes again, so the
/// record must be idempotent. An error stops the write before anything is written.
#[async_trait]
pub trait BeforeCommit: Send + Sync {
    async fn changing(&self, objects: &[ObjectChange]) -> Result<(), String>;

    /// A write committed with `applied` (its users left inactive among them): what must
    /// follow at once (revoking their certificates) is done here, before the next write
    /// (a sweep's next batch), so that a later failure does not lose it. Also called when a
    /// write gives up after conflicts, and when one fails otherwise naming inactive users
    /// (`applied` holds what its committed transactions did, and users it found inactive
    /// already), since a replay may no longer find those users (deleted); so it must be
    /// idempotent.
    async fn committed(&self, _applied: &Applied) -> Result<(), String> {
        Ok(())
    }

    /// Changes [`BeforeCommit::changing`] announced that the write then did not make, so
    /// that a record of the announcement can be corrected (idempotently: a replay may say
    /// it again). An attempt that lost a race (a conflict: nothing of that transaction
    /// committed) is retried, and the retry may find nothing to change there any more
    /// (another writer made the same change meanwhile) or make a different change. Called
    /// once when the write ends, after [`BeforeCommit::committed`]:
    /// - committed, or given up after conflicts ([`DirectoryError::Contended`]): every
    ///   announced change no transaction made. A made change whose last announcement (by an
    ///   attempt that then lost) described it otherwise is announced again first, through
    ///   [`BeforeCommit::changing`], as it was made;
    /// - failed otherwise (a transaction in flight may or may not have committed): the
    ///   changes earlier attempts announced (of what they read) and lost that the failing
    ///   attempt did not announce again (a replay of the page that makes one after all
    ///   announces it again); creations announced without reading are not named then.
    ///
    /// A user announced as created by an attempt that did not read first
    /// ([`ApplyMode::Optimistic`]) is named only if no attempt then found a record with its
    /// id: one found may be this write's own, from its earlier run (a page replayed after a
    /// crash), so made. An error fails a write that ended the first way, as
    /// [`DirectoryError::Unrecorded`]; after a failure it is logged.
    async fn not_made(&self, _objects: &[ObjectChange]) -> Result<(), String> {
        Ok(())
    }

    /// Names the write, so that another run of the same write can be told from other
    /// writers: every user and group record it writes carries the name and the kind of
    /// change it made there. Two runs of one write (a sync page run by an instance that
    /// stalled past its lease and by the one that took the lease over) must give the same
    /// name, and no other write may. Then a change this run announced and did not make,
    /// whose record carries the name and that kind of change, was made by the other run: it
    /// is not named to [`BeforeCommit::not_made`]. None (the default) names nothing, and a
    /// record it writes carries no name.
    fn write_tag(&self) -> Option<String> {
        None
    }
}

impl From<tables::Error> for DirectoryError {
    fn from(e: tables::Error) -> DirectoryError {
        match e {
            tables::Error::Invalid(m) => DirectoryError::Invalid(m),
            tables::Error::Batch { source, .. } if matches!(*source, tables::Error::Invalid(_)) => {
                DirectoryError::Invalid(source.to_string())
            }
            other => DirectoryError::Unavailable(other),
        }
    }
}

/// The directory, as the rest of the service sees it.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Applies a page of user changes from one writer, idempotently: a change applied twice
    /// (a page replayed after a crash, an object that repeats) leaves the same state.
    async fn apply_users(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<UserChange>,
        mode: ApplyMode,
    ) -> Result<Applied, DirectoryError> {
        self.apply_users_noting(tenant, writer, changes, mode, None)
            .await
    }
    /// [`Directory::apply_users`], telling `hook` what will change before it commits.
    async fn apply_users_noting(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<UserChange>,
        mode: ApplyMode,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError>;
    /// Applies a page of group changes (records and direct members), idempotently.
    async fn apply_groups(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<GroupChange>,
        mode: ApplyMode,
    ) -> Result<Applied, DirectoryError> {
        self.apply_groups_noting(tenant, writer, changes, mode, None)
            .await
    }
    /// [`Directory::apply_groups`], telling `hook` what will change before it commits.
    async fn apply_groups_noting(
        &self,
        tenant: Uuid,
        writer: Writer,
        changes: Vec<GroupChange>,
        mode: ApplyMode,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError>;
    /// After a full round numbered `round`: marks every Graph user it did not see as
    /// deleted in Entra, and removes Graph groups and memberships it did not see; `hook`
    /// hears of each batch of changes before it commits.
    async fn sweep(
        &self,
        tenant: Uuid,
        round: i64,
        hook: Option<&dyn BeforeCommit>,
    ) -> Result<Applied, DirectoryError>;
    /// One user by local id.
    async fn user(&self, tenant: Uuid, id: Uuid) -> Result<Option<User>, DirectoryError>;
    /// One user by Entra object id.
    async fn user_by_entra_id(
        &self,
        tenant: Uuid,
        entra_id: Uuid,
    ) -> Result<Option<User>, DirectoryError>;
    /// One user by UPN, case-insensitively.
    async fn user_by_upn(&self, tenant: Uuid, upn: &str) -> Result<Option<User>, DirectoryError>;
    /// The direct groups of a user.
    async fn groups_of(&self, tenant: Uuid, user: Uuid) -> Result<Vec<Group>, DirectoryError>;
    /// A page of users: filtered, searched by prefix, from a cursor.
    async fn list_users(
        &self,
        tenant: Uuid,
        filter: &ListFilter,
    ) -> Result<Page<User>, DirectoryError>;
    /// The tenant's counters, summed over every writer.
    async fn counters(&self, tenant: Uuid) -> Result<Counters, DirectoryError>;
}
