//! The directory's domain types: users, groups, memberships, the changes sources report,
//! and the counters kept beside them.

use time::OffsetDateTime;
use uuid::Uuid;

/// Which sources a record came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    /// Provisioned by Entra over SCIM.
    pub scim: bool,
    /// Read from Microsoft Graph by directory sync.
    pub graph: bool,
}

impl Sources {
    /// The names, as the API shows them (`["graph", "scim"]`).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.graph {
            names.push("graph");
        }
        if self.scim {
            names.push("scim");
        }
        names
    }
}

/// Who writes a change. Counters are kept per writer, so writers never contend on one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Directory sync; one round per tenant at a time (the sync lease), so one counter row.
    Graph,
    /// SCIM requests, many at once: counters spread over a few rows.
    Scim,
}

/// A property as a source reports it. Graph delta responses carry only what changed for an
/// updated object, so an absent property must leave the stored value alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<T> {
    /// Not reported: keep what is stored.
    #[default]
    Keep,
    /// Reported as null or empty: clear it.
    Clear,
    /// Reported with a value.
    Set(T),
}

impl<T: Clone> Field<T> {
    /// The value after applying this report to `current`.
    pub fn apply(&self, current: Option<T>) -> Option<T> {
        match self {
            Field::Keep => current,
            Field::Clear => None,
            Field::Set(v) => Some(v.clone()),
        }
    }
}

impl Field<String> {
    /// A reported string: null and "" clear it.
    pub fn reported(value: Option<String>) -> Field<String> {
        match value {
            Some(v) if !v.is_empty() => Field::Set(v),
            _ => Field::Clear,
        }
    }
}

/// What a source reports about a user's attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFields {
    pub upn: Field<String>,
    pub name: Field<String>,
    pub email: Field<String>,
    pub given_name: Field<String>,
    pub surname: Field<String>,
    pub job_title: Field<String>,
    pub department: Field<String>,
    pub employee_id: Field<String>,
    /// accountEnabled (Graph) or active (SCIM); None when not reported.
    pub enabled: Option<bool>,
}

/// One change to a user, as a source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// A user Graph returned (new, changed, or restored from the recycle bin) in `round`.
    Graph {
        entra_id: Uuid,
        fields: UserFields,
        round: i64,
    },
    /// Graph's `@removed` with reason `changed`: soft-deleted, restorable for 30 days.
    GraphSoftDeleted { entra_id: Uuid, round: i64 },
    /// Graph's `@removed` with reason `deleted`: gone for good.
    GraphDeleted { entra_id: Uuid },
    /// A Graph user a full round did not see (the mark and sweep after it): treated as
    /// soft-deleted. Names the record by its local id, whatever its Entra id resolves to.
    GraphUnseen { id: Uuid, round: i64 },
    /// A SCIM user written by Entra provisioning; `id` is its SCIM id.
    Scim { id: Uuid, fields: UserFields },
    /// A SCIM user deleted by Entra provisioning.
    ScimDeleted { id: Uuid },
}

/// A user of a tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The stable local id: the Entra object id for users first seen by Graph, the SCIM id
    /// for users first provisioned over SCIM.
    pub id: Uuid,
    pub entra_id: Option<Uuid>,
    /// The SCIM resource id, when Entra provisioned the user over SCIM.
    pub scim_id: Option<Uuid>,
    /// The UPN (SCIM's userName).
    pub upn: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub employee_id: Option<String>,
    /// accountEnabled in Entra, or SCIM's active.
    pub enabled: bool,
    pub sources: Sources,
    /// When Graph sync last wrote this user.
    pub entra_last_sync: Option<OffsetDateTime>,
    /// Soft-deleted in Entra (in its recycle bin) since then.
    pub deleted_in_entra_at: Option<OffsetDateTime>,
    /// The last sync round that saw this user (mark and sweep after a full round).
    pub seen_round: i64,
    pub updated_at: OffsetDateTime,
}

impl User {
    /// Active: enabled and not deleted in Entra.
    pub fn is_active(&self) -> bool {
        self.enabled && self.deleted_in_entra_at.is_none()
    }
}

/// A group of a tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The Entra object id for groups from Graph.
    pub id: Uuid,
    pub entra_id: Option<Uuid>,
    pub name: Option<String>,
    pub sources: Sources,
    pub seen_round: i64,
    pub updated_at: OffsetDateTime,
}

/// A direct membership: nested groups are not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub group: Uuid,
    pub user: Uuid,
}

/// One member added to or removed from a group; members are named by Entra object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberChange {
    pub entra_id: Uuid,
    pub removed: bool,
}

/// One change to a group, as Graph reports it. A group that spans delta pages arrives as
/// several changes, each with a slice of its member changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// A group returned in `round`, with the member changes of this slice.
    Graph {
        entra_id: Uuid,
        name: Field<String>,
        members: Vec<MemberChange>,
        round: i64,
    },
    /// A group removed from Entra (deleted or soft-deleted).
    GraphDeleted { entra_id: Uuid },
}

/// A tenant's counters, kept at write time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub users: i64,
    pub active_users: i64,
    /// Users that came (also) from SCIM.
    pub scim_users: i64,
    pub groups: i64,
    pub memberships: i64,
}

impl Counters {
    /// Users that are not active.
    pub fn inactive_users(&self) -> i64 {
        self.users - self.active_users
    }

    pub(crate) fn add(&mut self, other: &Counters) {
        self.users += other.users;
        self.active_users += other.active_users;
        self.scim_users += other.scim_users;
        self.groups += other.groups;
        self.memberships += other.memberships;
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Which users a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub active: Option<bool>,
    /// Only users Graph sync wrote at or after this time.
    pub synced_since: Option<OffsetDateTime>,
    /// A case-insensitive prefix of the name, e-mail or UPN.
    pub search: Option<String>,
    /// Users per page (1 to 100).
    pub per_page: usize,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more may follow.
    pub next_cursor: Option<String>,
}

/// A change, as reported back: what kind of write it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
    Deleted,
}
