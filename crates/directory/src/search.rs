//! Search terms of a user and the cursor of a listing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::layout;
use crate::model::User;

/// The distinct search terms of a user: its UPN first, then e-mail and name.
pub fn terms(user: &User) -> Vec<String> {
    let mut terms: Vec<String> = Vec::with_capacity(3);
    for raw in [Some(&user.upn), user.email.as_ref(), user.name.as_ref()]
        .into_iter()
        .flatten()
    {
        let term = layout::term(raw);
        // keys are at most 1 KiB; a longer term is not searchable rather than unstorable
        if !term.is_empty() && term.len() <= 512 && !terms.contains(&term) {
            terms.push(term);
        }
    }
    terms
}

/// A user found under `term` is shown there only if no other of its terms that also
/// matches `query` sorts before it, so a user matching twice is listed once.
pub fn shown_under(term: &str, all_terms: &[String], query: &str) -> bool {
    !all_terms
        .iter()
        .any(|t| t.as_str() < term && t.starts_with(query))
}

/// A cursor is the last row key a page used, opaque to callers.
pub fn encode_cursor(row_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(row_key)
}

/// The row key a cursor names, if it is one of ours for rows that start with `prefix`.
pub fn decode_cursor(cursor: &str, prefix: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let key = String::from_utf8(bytes).ok()?;
    key.starts_with(prefix).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_matching_twice_is_shown_once() {
        let all = vec!["alice@contoso.com".to_string(), "alice smith".to_string()];
        // ' ' sorts before '@': the name row is the one shown
        assert!(shown_under("alice smith", &all, "alice"));
        assert!(!shown_under("alice@contoso.com", &all, "alice"));
        assert!(shown_under("alice smith", &all, "alice s"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_prefixes() {
        let c = encode_cursor("u-123");
        assert_eq!(decode_cursor(&c, "u-").as_deref(), Some("u-123"));
        assert_eq!(decode_cursor(&c, "s-"), None);
        assert_eq!(decode_cursor("%%%", "u-"), None);
    }
}
