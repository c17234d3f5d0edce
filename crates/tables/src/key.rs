//! PartitionKey and RowKey rules: what Table Storage forbids, a reversible encoding for
//! arbitrary strings, and the `(PartitionKey='..',RowKey='..')` address of an entity.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::Error;

/// Longest key Table Storage accepts, in bytes of UTF-8 (1 KiB).
pub const MAX_KEY_BYTES: usize = 1024;

/// Characters percent-encoded inside a key literal in a URL path: everything but unreserved.
const KEY_IN_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// The escape character of [`encode`]; chosen because `%` in keys trips URL handling.
const ESCAPE: char = '~';

/// True for characters Table Storage refuses in PartitionKey and RowKey.
fn is_forbidden(c: char) -> bool {
    matches!(c, '/' | '\\' | '#' | '?')
        || ('\u{0}'..='\u{1f}').contains(&c)
        || ('\u{7f}'..='\u{9f}').contains(&c)
}

/// Encodes any string into a valid key: forbidden characters, `%` and the escape `~`
/// itself become `~XX` (two hex digits); everything else, unicode included, is kept.
/// The encoding preserves equality, so a lookup by an encoded key is exact.
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if is_forbidden(c) || c == ESCAPE || c == '%' {
            // every such character is below U+0100
            out.push(ESCAPE);
            out.push_str(&format!("{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`encode`]. A malformed escape is an error, never a guess.
pub fn decode(encoded: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        if c == ESCAPE {
            let hex: String = chars.by_ref().take(2).collect();
            let code = u32::from_str_radix(&hex, 16)
                .ok()
                .filter(|_| hex.len() == 2)
                .and_then(char::from_u32)
                .ok_or_else(|| Error::Invalid(format!("malformed key escape '~{hex}'")))?;
            out.push(code);
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Checks a key before it is sent, so a bad key is a clear local error, not a service 400.
pub fn validate(which: &str, key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge(format!(
            "{which} is {} bytes; at most {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| is_forbidden(*c)) {
        return Err(Error::Invalid(format!(
            "{which} contains the forbidden character {:?}; encode it with tables::key::encode",
            c
        )));
    }
    Ok(())
}

/// The path segment addressing one entity: `table(PartitionKey='pk',RowKey='rk')`,
/// quotes doubled and the values percent-encoded.
pub fn entity_path(table: &str, partition_key: &str, row_key: &str) -> String {
    format!(
        "{table}(PartitionKey='{}',RowKey='{}')",
        path_literal(partition_key),
        path_literal(row_key)
    )
}

fn path_literal(value: &str) -> String {
    utf8_percent_encode(&value.replace('\'', "''"), KEY_IN_PATH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_every_awkward_character() {
        for raw in [
            "plain",
            "a/b\\c#d?e",
            "O'Brien",
            "50% off ~tilde~",
            "tab\tnew\nline\u{7f}\u{85}",
            "ünïcødé ✓ 日本 🎉",
            "",
        ] {
            let encoded = encode(raw);
            validate("RowKey", &encoded).unwrap();
            assert_eq!(decode(&encoded).unwrap(), raw);
        }
    }

    #[test]
    fn encoding_leaves_ordinary_keys_alone() {
        assert_eq!(encode("user@contoso.com"), "user@contoso.com");
        assert_eq!(encode("a/b"), "a~2Fb");
        assert_eq!(encode("~"), "~7E");
    }

    #[test]
    fn decode_rejects_malformed_escapes() {
        assert!(decode("~").is_err());
        assert!(decode("~4").is_err());
        assert!(decode("~zz").is_err());
    }

    #[test]
    fn validate_names_the_forbidden_character() {
        let err = validate("PartitionKey", "a#b").unwrap_err().to_string();
        assert!(err.contains("PartitionKey") && err.contains('#'), "{err}");
        assert!(validate("RowKey", &"x".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn entity_path_doubles_quotes_and_percent_encodes() {
        assert_eq!(
            entity_path("T", "O'Brien", "a b"),
            "T(PartitionKey='O%27%27Brien',RowKey='a%20b')"
        );
        assert_eq!(
            entity_path("T", "é", "x"),
            "T(PartitionKey='%C3%A9',RowKey='x')"
        );
    }
}
