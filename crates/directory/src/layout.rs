//! The layout of a tenant's partition: every row key and range bound is built here.
//!
//! | row key | what |
//! |---|---|
//! | `u-<id>` | a user record |
//! | `o-<entra id>` | the local id of a user whose id is not its Entra object id |
//! | `x-<scim id>` | the local id of a user whose id is not its SCIM id |
//! | `s-<term>\|<id>` | a search term of a user (lowercased UPN, e-mail, name), in the search table beside the directory's (`{directory}Search`), same partition |
//! | `g-<id>` | a group record |
//! | `gm-<group>.<user>` | a direct membership, group side |
//! | `ug-<user>.<group>` | the same membership, user side |
//! | `c-graph`, `c-scim-<n>` | counters, one row per writer (SCIM's spread over shards) |

use tables::Value;
use uuid::Uuid;

pub const USER: &str = "u-";
pub const GROUP: &str = "g-";
/// Search rows start with this (and live in the search table).
pub const SEARCH: &str = "s-";

/// True for a search row's key.
pub fn is_search(row_key: &str) -> bool {
    row_key.starts_with(SEARCH)
}

/// SCIM requests run concurrently: their counter deltas go to one of this many rows.
pub const SCIM_COUNTER_SHARDS: u32 = 8;

pub fn user(id: Uuid) -> String {
    format!("u-{id}")
}

pub fn entra_index(entra_id: Uuid) -> String {
    format!("o-{entra_id}")
}

pub fn scim_index(scim_id: Uuid) -> String {
    format!("x-{scim_id}")
}

pub fn group(id: Uuid) -> String {
    format!("g-{id}")
}

pub fn group_member(group: Uuid, user: Uuid) -> String {
    format!("gm-{group}.{user}")
}

pub fn user_group(user: Uuid, group: Uuid) -> String {
    format!("ug-{user}.{group}")
}

/// A search term as stored: lowercased, then made key-safe.
pub fn term(raw: &str) -> String {
    // `|` ends a term in a search row's key: escaped like the characters keys forbid
    tables::key::encode(&raw.trim().to_lowercase()).replace('|', "~7C")
}

pub fn search(term: &str, id: Uuid) -> String {
    format!("s-{term}|{id}")
}

pub fn counter_graph() -> String {
    "c-graph".into()
}

pub fn counter_scim(shard: u32) -> String {
    format!("c-scim-{shard}")
}

/// The half-open range of row keys that start with `prefix`.
pub fn prefix_range(prefix: &str) -> (String, String) {
    (prefix.to_string(), format!("{prefix}\u{ffff}"))
}

/// Search rows whose term starts with `term` (an already-stored term).
pub fn search_prefix(term: &str) -> (String, String) {
    prefix_range(&format!("s-{term}"))
}

/// Search rows of exactly `term`.
pub fn search_exact(term: &str) -> (String, String) {
    // '}' follows '|': every `s-<term>|<id>` row and nothing of a longer term but those
    // that continue with '|' (checked against the stored term by the caller)
    (format!("s-{term}|"), format!("s-{term}}}"))
}

/// Membership rows of a group.
pub fn members_of(group: Uuid) -> (String, String) {
    (format!("gm-{group}."), format!("gm-{group}/"))
}

/// Membership rows of a user.
pub fn groups_of(user: Uuid) -> (String, String) {
    (format!("ug-{user}."), format!("ug-{user}/"))
}

/// An OData filter for rows of `partition` in `[from, to)`, plus `extra` conditions.
pub fn range_filter(partition: &str, (from, to): (String, String), extra: &[String]) -> String {
    // the row bounds first: Azurite evaluates a query's filter on every row of the table,
    // left to right, and most rows fail a bound (Azure plans by keys either way)
    let mut filter = format!(
        "RowKey ge {} and RowKey lt {} and PartitionKey eq {}",
        Value::from(from).filter_literal(),
        Value::from(to).filter_literal(),
        Value::from(partition).filter_literal()
    );
    for condition in extra {
        filter.push_str(" and ");
        filter.push_str(condition);
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_overlap_other_prefixes() {
        let id = Uuid::nil();
        let (from, to) = prefix_range(USER);
        assert!(user(id) >= from && user(id) < to);
        assert!(!(user_group(id, id) >= from && user_group(id, id) < to));
        let (from, to) = prefix_range(GROUP);
        assert!(!(group_member(id, id) >= from && group_member(id, id) < to));
        let (from, to) = members_of(id);
        assert!(group_member(id, Uuid::max()) >= from && group_member(id, Uuid::max()) < to);
        let (from, to) = search_exact("alice@contoso.com");
        assert!(search("alice@contoso.com", id) >= from);
        assert!(search("alice@contoso.com", id) < to);
        let longer = search("alice@contoso.com.au", id);
        assert!(!(longer >= from && longer < to));
    }

    #[test]
    fn terms_are_lowercased_and_key_safe() {
        assert_eq!(
            term(" Alice#EXT#@Contoso.com "),
            "alice~23ext~23@contoso.com"
        );
        assert_eq!(term("a|b"), "a~7Cb");
    }
}
