//! Shared Key signing for the Table service.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The Table service's string to sign:
/// `VERB\nContent-MD5\nContent-Type\nDate\nCanonicalizedResource`, where Date is the
/// `x-ms-date` value and the resource is `/account/path` (plus `?comp=` when present).
pub fn string_to_sign(
    method: &str,
    content_type: &str,
    date: &str,
    account: &str,
    path: &str,
    comp: Option<&str>,
) -> String {
    let mut s = format!("{method}\n\n{content_type}\n{date}\n/{account}{path}");
    if let Some(comp) = comp {
        s.push_str("?comp=");
        s.push_str(comp);
    }
    s
}

/// The `Authorization` header value for a string to sign.
pub fn authorization(account: &str, key: &[u8], string_to_sign: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, string_to_sign.as_bytes());
    format!("SharedKey {account}:{}", BASE64.encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_repeats_the_account_for_path_style_urls() {
        let s = string_to_sign(
            "GET",
            "",
            "Tue, 24 Nov 2026 10:00:00 GMT",
            "devstoreaccount1",
            "/devstoreaccount1/Tables('t')",
            None,
        );
        assert_eq!(
            s,
            "GET\n\n\nTue, 24 Nov 2026 10:00:00 GMT\n/devstoreaccount1/devstoreaccount1/Tables('t')"
        );
        let with_comp = string_to_sign("PUT", "application/json", "d", "acct", "/t", Some("acl"));
        assert_eq!(with_comp, "PUT\n\napplication/json\nd\n/acct/t?comp=acl");
    }

    #[test]
    fn signature_matches_an_independent_hmac_sha256() {
        // HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog"), RFC 4231-style known answer.
        let auth = authorization(
            "acct",
            b"key",
            "The quick brown fox jumps over the lazy dog",
        );
        assert_eq!(
            auth,
            "SharedKey acct:97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
        );
    }
}
