//! Microsoft Graph delta queries over users and groups, typed for a sync engine.
//!
//! A round starts at [`DeltaKind::start_path`] and follows `@odata.nextLink` page by page
//! (pages may be empty) until a page carries `@odata.deltaLink`; the next round starts from
//! that deltaLink. Links are opaque and already carry the query options (`$select`), so
//! they are followed exactly as received. [`crate::graph::GraphClient::delta_page`] fetches
//! one page, so the caller can checkpoint [`DeltaNext`] after each page it committed.
//!
//! What Graph documents about the items (user: delta, group: delta, "Use delta query to
//! track changes"), and how it is modelled here:
//!
//! - Without `Prefer: return=minimal` (we never send it), every page returns the selected
//!   properties as they are: a changed value, including a change to `null`, is sent; an
//!   unchanged one is sent with its old value; a property that was never set is left out.
//!   The general overview is looser ("updated instances are represented by their id with
//!   at least the properties that have been updated"). So each property is an
//!   `Option<Option<T>>`: `None` = absent (keep what you have; under the default behaviour
//!   it was never set), `Some(None)` = explicitly `null` (clear it), `Some(Some(v))` = the
//!   value. Both readings of the docs are applied correctly by "absent keeps, null clears".
//! - Removed objects are `{"id", "@removed": {"reason": "changed" | "deleted"}}`:
//!   `changed` = deleted but restorable from deletedItems (soft delete), `deleted` = gone
//!   for good. They can appear in the first round too.
//! - The same object may appear several times in a round (replays): apply idempotently.
//! - Groups carry membership as `members@delta`: `[{"@odata.type", "id"}]`, a removed
//!   member with `"@removed"`. In the first round of a sync (no deltaLink yet) the entries
//!   are the current members; in later rounds only the changes. A group with many members
//!   spans pages: the same group id appears again with the next slice of members.
//! - Nested groups show up as members of type `#microsoft.graph.group`; they are direct
//!   members only (no transitive expansion).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::graph::GraphError;

/// The user properties a sync reads, for delta and for single reads.
pub const USER_SELECT: &str = "id,userPrincipalName,displayName,mail,accountEnabled,givenName,surname,jobTitle,department,employeeId";

/// The group properties a sync reads: its name and its direct members.
pub const GROUP_SELECT: &str = "id,displayName,members";

/// Which collection a delta round reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeltaKind {
    Users,
    Groups,
}

impl DeltaKind {
    /// The first request of a full round, relative to `https://{graph}/v1.0`:
    /// `/users/delta?$select=...` or `/groups/delta?$select=...`.
    pub fn start_path(self) -> String {
        match self {
            DeltaKind::Users => format!("/users/delta?$select={USER_SELECT}"),
            DeltaKind::Groups => format!("/groups/delta?$select={GROUP_SELECT}"),
        }
    }

    /// The collection's path segment (`users`, `groups`).
    pub fn collection(self) -> &'static str {
        match self {
            DeltaKind::Users => "users",
            DeltaKind::Groups => "groups",
        }
    }
}

/// Why Graph reports an object as removed (`@removed.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Removed {
    /// `changed`: deleted, but restorable from deletedItems for 30 days (soft delete).
    /// An unknown or missing reason is read as this, the reversible one.
    Changed,
    /// `deleted`: permanently deleted.
    Deleted,
}

/// A user from a delta page (or a single read, where `removed` is always `None`).
/// See the module docs for what `None` / `Some(None)` mean on each property.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaUser {
    /// The Entra object id (always present).
    pub id: String,
    pub user_principal_name: Option<Option<String>>,
    pub display_name: Option<Option<String>>,
    pub mail: Option<Option<String>>,
    pub account_enabled: Option<Option<bool>>,
    pub given_name: Option<Option<String>>,
    pub surname: Option<Option<String>>,
    pub job_title: Option<Option<String>>,
    pub department: Option<Option<String>>,
    pub employee_id: Option<Option<String>>,
    /// Set when the item is a removal; then the properties are usually absent.
    pub removed: Option<Removed>,
}

/// One entry of a group's `members@delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The member's object id.
    pub id: String,
    /// `@odata.type` as sent, e.g. `#microsoft.graph.user` or `#microsoft.graph.group`
    /// (empty when Graph left it out).
    pub odata_type: String,
    /// The member left the group (`@removed` present).
    pub removed: bool,
}

impl MemberChange {
    /// The member is a user (not a nested group, device, contact or service principal).
    pub fn is_user(&self) -> bool {
        self.odata_type.ends_with("microsoft.graph.user")
    }
}

/// A group from a delta page: maybe its name, and a slice of its membership changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaGroup {
    pub id: String,
    pub display_name: Option<Option<String>>,
    /// `members@delta` on this page (empty when absent); more may follow on later pages.
    pub members_delta: Vec<MemberChange>,
    pub removed: Option<Removed>,
}

/// One object of a delta page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaItem {
    User(DeltaUser),
    Group(DeltaGroup),
}

/// Where a round goes on after a page: the opaque links, to be followed as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeltaNext {
    /// More pages in this round: follow it now (or after a crash, from the checkpoint).
    NextLink(String),
    /// The round is complete: keep it and start the next round from it.
    DeltaLink(String),
}

impl DeltaNext {
    /// The link to request next.
    pub fn link(&self) -> &str {
        match self {
            DeltaNext::NextLink(l) | DeltaNext::DeltaLink(l) => l,
        }
    }

    /// True when the round is complete (a deltaLink).
    pub fn is_delta_link(&self) -> bool {
        matches!(self, DeltaNext::DeltaLink(_))
    }
}

/// One page of a delta round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    pub items: Vec<DeltaItem>,
    pub next: DeltaNext,
}

/// Reads one delta page's JSON body. Items without an `id` cannot be applied and are
/// skipped (logged); a page with neither link is an error (retry the same link).
pub fn parse_page(kind: DeltaKind, body: &Value) -> Result<DeltaPage, GraphError> {
    let next = if let Some(link) = body.get("@odata.nextLink").and_then(Value::as_str) {
        DeltaNext::NextLink(link.to_string())
    } else if let Some(link) = body.get("@odata.deltaLink").and_then(Value::as_str) {
        DeltaNext::DeltaLink(link.to_string())
    } else {
        return Err(GraphError::Unavailable(
            "a delta page with neither @odata.nextLink nor @odata.deltaLink".into(),
        ));
    };
    let values = match body.get("value") {
        Some(Value::Array(values)) => values.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => {
            return Err(GraphError::Unavailable(
                "a delta page whose value is not an array".into(),
            ));
        }
    };
    let mut items = Vec::with_capacity(values.len());
    for value in values {
        let Some(obj) = value.as_object() else {
            tracing::warn!("delta item that is not an object skipped");
            continue;
        };
        let item = match kind {
            DeltaKind::Users => parse_user(obj).map(DeltaItem::User),
            DeltaKind::Groups => parse_group(obj).map(DeltaItem::Group),
        };
        match item {
            Some(item) => items.push(item),
            None => tracing::warn!(
                collection = kind.collection(),
                "delta item without an id skipped"
            ),
        }
    }
    Ok(DeltaPage { items, next })
}

/// Reads a user object (a delta item or the answer of `GET /users/{id}`).
pub fn parse_user(obj: &Map<String, Value>) -> Option<DeltaUser> {
    Some(DeltaUser {
        id: obj.get("id")?.as_str()?.to_string(),
        user_principal_name: string_prop(obj, "userPrincipalName"),
        display_name: string_prop(obj, "displayName"),
        mail: string_prop(obj, "mail"),
        account_enabled: prop(obj, "accountEnabled", Value::as_bool),
        given_name: string_prop(obj, "givenName"),
        surname: string_prop(obj, "surname"),
        job_title: string_prop(obj, "jobTitle"),
        department: string_prop(obj, "department"),
        employee_id: string_prop(obj, "employeeId"),
        removed: removed(obj),
    })
}

/// Reads a group object of a delta page.
pub fn parse_group(obj: &Map<String, Value>) -> Option<DeltaGroup> {
    let members_delta = obj
        .get("members@delta")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let e = e.as_object()?;
                    Some(MemberChange {
                        id: e.get("id")?.as_str()?.to_string(),
                        odata_type: e
                            .get("@odata.type")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        removed: e.contains_key("@removed"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(DeltaGroup {
        id: obj.get("id")?.as_str()?.to_string(),
        display_name: string_prop(obj, "displayName"),
        members_delta,
        removed: removed(obj),
    })
}

fn removed(obj: &Map<String, Value>) -> Option<Removed> {
    let removed = obj.get("@removed")?;
    Some(match removed.get("reason").and_then(Value::as_str) {
        Some(r) if r.eq_ignore_ascii_case("deleted") => Removed::Deleted,
        _ => Removed::Changed,
    })
}

/// Absent -> None; `null` -> Some(None); a value of the right type -> Some(Some(v)).
/// A value of the wrong type is treated as absent: it cannot be applied.
fn prop<T>(
    obj: &Map<String, Value>,
    name: &str,
    read: impl Fn(&Value) -> Option<T>,
) -> Option<Option<T>> {
    match obj.get(name)? {
        Value::Null => Some(None),
        v => read(v).map(Some),
    }
}

fn string_prop(obj: &Map<String, Value>, name: &str) -> Option<Option<String>> {
    prop(obj, name, |v| v.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_null_and_values_are_told_apart() {
        let page = parse_page(
            DeltaKind::Users,
            &json!({
                "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x",
                "value": [
                    {"id": "a", "displayName": "Ada", "jobTitle": null, "accountEnabled": false},
                    {"id": "b", "@removed": {"reason": "deleted"}},
                    {"id": "c", "@removed": {"reason": "changed"}},
                    {"displayName": "no id"},
                ]
            }),
        )
        .unwrap();
        assert_eq!(
            page.next,
            DeltaNext::NextLink("https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x".into())
        );
        assert_eq!(page.items.len(), 3);
        let DeltaItem::User(a) = &page.items[0] else {
            panic!()
        };
        assert_eq!(a.display_name, Some(Some("Ada".into())));
        assert_eq!(a.job_title, Some(None));
        assert_eq!(a.department, None);
        assert_eq!(a.account_enabled, Some(Some(false)));
        assert_eq!(a.removed, None);
        let DeltaItem::User(b) = &page.items[1] else {
            panic!()
        };
        assert_eq!(b.removed, Some(Removed::Deleted));
        let DeltaItem::User(c) = &page.items[2] else {
            panic!()
        };
        assert_eq!(c.removed, Some(Removed::Changed));
    }

    #[test]
    fn group_members_delta_is_read_with_removals() {
        let page = parse_page(
            DeltaKind::Groups,
            &json!({
                "@odata.deltaLink": "https://graph.microsoft.com/v1.0/groups/delta?$deltatoken=y",
                "value": [{
                    "id": "g", "displayName": "Sales",
                    "members@delta": [
                        {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                        {"@odata.type": "#microsoft.graph.group", "id": "g2"},
                        {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}},
                    ]
                }]
            }),
        )
        .unwrap();
        assert!(page.next.is_delta_link());
        let DeltaItem::Group(g) = &page.items[0] else {
            panic!()
        };
        assert_eq!(g.members_delta.len(), 3);
        assert!(g.members_delta[0].is_user() && !g.members_delta[0].removed);
        assert!(!g.members_delta[1].is_user());
        assert!(g.members_delta[2].removed);
    }

    #[test]
    fn a_page_without_links_is_an_error_and_an_empty_page_is_not() {
        assert!(parse_page(DeltaKind::Users, &json!({"value": []})).is_err());
        let empty = parse_page(
            DeltaKind::Users,
            &json!({"value": [], "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=z"}),
        )
        .unwrap();
        assert!(empty.items.is_empty());
    }
}
