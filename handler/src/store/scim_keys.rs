//! The layout of the SCIM table's keys, owned here and nowhere else. Each tenant has one
//! partition (its id); its rows, by row-key prefix:
//!
//! | row key                                   | holds                                        |
//! |-------------------------------------------|----------------------------------------------|
//! | `audit-<µs>-<event id>`                   | a user write's audit event, committed with it, until moved to the trail (`audit::outbox`) |
//! | `deleted-group-<id>`, `deleted-user-<id>` | a deletion whose membership cleanup is not finished |
//! | `group-<id>`                              | a group, without its members                 |
//! | `groupname-<lowercased displayName>`      | a copy of the group; makes names unique      |
//! | `invite-<id>`                             | an invitation                                |
//! | `member-<group>-<member>`                 | one member of a group (value, display, type) |
//! | `scim-settings`, `scim-token`             | the tenant's SCIM settings and token hash    |
//! | `user-<id>`                               | a user                                       |
//! | `user-<member>.g.<group>`                 | the same membership, beside its user         |
//! | `userext-<externalId>-<id>`               | a copy of the user, for externalId matches   |
//! | `username-<lowercased userName>`          | a copy of the user; makes userNames unique   |
//!
//! Everything of a tenant sits in one partition so that one transaction can change a
//! resource and its memberships together: both rows of a membership are written or
//! deleted in the same transaction as a conditional write of the group row, so a group's
//! ETag (and version) changes with every member change, and a deleted group row lets no
//! member in afterwards. Free text (names, external ids, non-GUID member values) is
//! encoded with [`tables::key::encode`]; GUIDs appear in their canonical form.

use tables::{Query, Value as TableValue, key};
use uuid::Uuid;

/// The partition of a tenant's SCIM rows.
pub fn partition(tenant: Uuid) -> String {
    tenant.to_string()
}

/// The tenant's Secret Token (its hash).
pub const TOKEN: &str = "scim-token";
/// The tenant's SCIM settings.
pub const SETTINGS: &str = "scim-settings";

/// Row keys from `start` (inclusive) to `end` (exclusive) within one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: String,
    pub end: String,
}

impl KeyRange {
    /// Every row key that starts with `prefix` (which ends in ASCII).
    fn prefixed(prefix: &str) -> KeyRange {
        let mut end = prefix.to_string();
        let last = end.pop().expect("a non-empty prefix");
        debug_assert!(last.is_ascii() && last != '\u{7f}');
        end.push((last as u8 + 1) as char);
        KeyRange {
            start: prefix.to_string(),
            end,
        }
    }

    /// The query for this range in `partition`.
    pub fn query(&self, partition: &str) -> Query {
        Query::filter(format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            TableValue::from(partition).filter_literal(),
            TableValue::from(self.start.as_str()).filter_literal(),
            TableValue::from(self.end.as_str()).filter_literal()
        ))
    }

    /// True when `row_key` is in the range.
    #[cfg(test)]
    pub fn contains(&self, row_key: &str) -> bool {
        row_key >= self.start.as_str() && row_key < self.end.as_str()
    }
}

/// A member value as it appears in keys: a GUID in canonical form, anything else encoded.
fn member_segment(member: &str) -> String {
    match Uuid::try_parse(member) {
        Ok(id) => id.to_string(),
        Err(_) => key::encode(member),
    }
}

// ---- users

const USER: &str = "user-";
const MEMBERSHIP: &str = ".g.";

/// A user's row.
pub fn user(id: Uuid) -> String {
    format!("{USER}{id}")
}

/// The userName index row; userName compares case-insensitively, so the key is lowercased.
pub fn user_name(user_name: &str) -> String {
    format!("username-{}", key::encode(&user_name.to_lowercase()))
}

/// True for a userName index row.
pub fn is_user_name(row_key: &str) -> bool {
    row_key.starts_with("username-")
}

/// The externalId index row of user `id`.
pub fn user_external(external_id: &str, id: Uuid) -> String {
    format!("userext-{}-{id}", key::encode(external_id))
}

/// The externalId index rows for `external_id` (and, as the encoding does not end the
/// segment, those of external ids that start with it followed by `-`: read the data).
pub fn users_by_external(external_id: &str) -> KeyRange {
    KeyRange::prefixed(&format!("userext-{}-", key::encode(external_id)))
}

/// Every user row, with the membership rows between them (see [`is_membership`]).
pub fn users() -> KeyRange {
    KeyRange::prefixed(USER)
}

/// A user's row and its membership rows: `user-<id>.g.<group>` sorts right after
/// `user-<id>` and before `user-<id>/`. Rows of non-GUID members whose value starts
/// like this id are in the range too; [`group_of_membership`] tells them apart.
pub fn user_with_memberships(id: Uuid) -> KeyRange {
    KeyRange {
        start: user(id),
        end: format!("{}/", user(id)),
    }
}

/// The membership row beside member `member` (a user id or any value) of `group`.
pub fn membership(member: &str, group: Uuid) -> String {
    format!("{USER}{}{MEMBERSHIP}{group}", member_segment(member))
}

/// True for a membership row (which sits among the user rows).
pub fn is_membership(row_key: &str) -> bool {
    row_key.starts_with(USER) && row_key.contains(MEMBERSHIP)
}

/// The group a membership row of `user` names; `None` for any other row.
pub fn group_of_membership(user_id: Uuid, row_key: &str) -> Option<Uuid> {
    let group = row_key.strip_prefix(&format!("{}{MEMBERSHIP}", user(user_id)))?;
    Uuid::try_parse(group).ok()
}

// ---- groups

const GROUP: &str = "group-";

/// A group's row.
pub fn group(id: Uuid) -> String {
    format!("{GROUP}{id}")
}

/// The displayName index row, lowercased like userName.
pub fn group_name(name: &str) -> String {
    format!("groupname-{}", key::encode(&name.to_lowercase()))
}

/// Every group row (the name rows sort after `group.`).
pub fn groups() -> KeyRange {
    KeyRange::prefixed(GROUP)
}

/// The row of member `member` in `group`.
pub fn member(group: Uuid, member: &str) -> String {
    format!("member-{group}-{}", member_segment(member))
}

/// The member rows of `group`.
pub fn members(group: Uuid) -> KeyRange {
    KeyRange::prefixed(&format!("member-{group}-"))
}

/// Both rows of one membership, group side first.
pub fn membership_rows(group: Uuid, member_value: &str) -> [String; 2] {
    [member(group, member_value), membership(member_value, group)]
}

// ---- deletions whose cleanup is under way

/// A user deletion whose membership rows are still being removed.
pub fn deleted_user(id: Uuid) -> String {
    format!("deleted-user-{id}")
}

/// A group deletion whose member rows are still being removed.
pub fn deleted_group(id: Uuid) -> String {
    format!("deleted-group-{id}")
}

/// The tombstones of user deletions.
pub fn deleted_users() -> KeyRange {
    KeyRange::prefixed("deleted-user-")
}

/// The tombstones of group deletions.
pub fn deleted_groups() -> KeyRange {
    KeyRange::prefixed("deleted-group-")
}

/// The id a tombstone in `range` names.
pub fn tombstone_id(range: &KeyRange, row_key: &str) -> Option<Uuid> {
    Uuid::try_parse(row_key.strip_prefix(range.start.as_str())?).ok()
}

// ---- invitations

/// An invitation's row.
pub fn invitation(id: Uuid) -> String {
    format!("invite-{id}")
}

/// Every invitation row.
pub fn invitations() -> KeyRange {
    KeyRange::prefixed("invite-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_row_sorts_into_its_own_range() {
        let (u, g) = (Uuid::new_v4(), Uuid::new_v4());
        let kinds: Vec<(&str, String)> = vec![
            ("user", user(u)),
            ("membership", membership(&u.to_string(), g)),
            ("user name", user_name("Ada@Contoso.com")),
            ("external", user_external("ada", u)),
            ("group", group(g)),
            ("group name", group_name("Engineering")),
            ("member", member(g, &u.to_string())),
            ("deleted user", deleted_user(u)),
            ("deleted group", deleted_group(g)),
            ("invitation", invitation(u)),
            ("token", TOKEN.to_string()),
            ("settings", SETTINGS.to_string()),
            ("audit outbox", {
                let event = audit::Event::new(
                    u,
                    audit::Actor::entra_provisioning(),
                    "scim.user.update",
                    audit::Target::new("user", u),
                );
                audit::outbox::row_key(&event)
            }),
        ];
        let ranges = [
            ("users", users()),
            ("groups", groups()),
            ("members", members(g)),
            ("deleted users", deleted_users()),
            ("deleted groups", deleted_groups()),
            ("invitations", invitations()),
            ("with memberships", user_with_memberships(u)),
            ("by external", users_by_external("ada")),
        ];
        let expected: &[(&str, &[&str])] = &[
            ("users", &["user", "membership"]),
            ("groups", &["group"]),
            ("members", &["member"]),
            ("deleted users", &["deleted user"]),
            ("deleted groups", &["deleted group"]),
            ("invitations", &["invitation"]),
            ("with memberships", &["user", "membership"]),
            ("by external", &["external"]),
        ];
        for ((name, range), (_, inside)) in ranges.iter().zip(expected) {
            let found: Vec<&str> = kinds
                .iter()
                .filter(|(_, k)| range.contains(k))
                .map(|(kind, _)| *kind)
                .collect();
            assert_eq!(&found, inside, "{name}");
        }
    }

    #[test]
    fn memberships_parse_back_and_member_spellings_meet() {
        let (u, g) = (Uuid::new_v4(), Uuid::new_v4());
        let row = membership(&u.to_string().to_uppercase(), g);
        assert_eq!(row, membership(&u.to_string(), g));
        assert!(is_membership(&row));
        assert_eq!(group_of_membership(u, &row), Some(g));
        // a non-GUID member whose value starts with the user's id is someone else
        let other = membership(&format!("{u}-x"), g);
        assert!(user_with_memberships(u).contains(&other));
        assert_eq!(group_of_membership(u, &other), None);
        assert!(!is_membership(&user(u)));
        assert_eq!(tombstone_id(&deleted_groups(), &deleted_group(g)), Some(g));
        assert_eq!(tombstone_id(&deleted_users(), &deleted_group(g)), None);
        assert_eq!(member(g, "a/b"), format!("member-{g}-a~2Fb"));
    }
}
