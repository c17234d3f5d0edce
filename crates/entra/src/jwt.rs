//! Compact JWS parsing: three base64url parts, a JSON header and a JSON claims set. Nothing
//! here trusts the token; it only takes it apart so the validator can judge it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::validate::Rejection;

/// Longest token accepted (Entra tokens with many claims stay well under this).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token taken apart, signature not yet checked.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(claims)`: what the signature covers.
    pub signing_input_len: usize,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS.
pub fn parse(token: &str) -> Result<Parsed, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed(
            "not a compact JWS (three dot-separated parts)",
        ));
    };
    let header = decode_object(h).ok_or(Rejection::Malformed("header is not base64url JSON"))?;
    let claims = decode_object(c).ok_or(Rejection::Malformed("claims are not base64url JSON"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Rejection::Malformed("signature is not base64url"))?;
    Ok(Parsed {
        header,
        claims,
        signing_input_len: h.len() + 1 + c.len(),
        signature,
    })
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Encodes a header and claims and signs them with `sign`, for development tokens and tests.
pub fn encode(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("JSON serializes"));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("JSON serializes")));
    let signature = sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_is_taken_apart() {
        let token = encode(
            &json!({"alg":"RS256","kid":"k"}),
            &json!({"tid":"t"}),
            |input| input[..3].to_vec(),
        );
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.header["kid"], "k");
        assert_eq!(parsed.claims["tid"], "t");
        assert_eq!(
            &token[..parsed.signing_input_len],
            token.rsplit_once('.').unwrap().0
        );
        assert_eq!(parsed.signature, token.as_bytes()[..3].to_vec());
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.AA",
            "e30.W10.AA",
            "e30.e30.***",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }
}
