//! JSON Web Key Sets as Entra serves them, including the `issuer` field that generic JWK
//! types drop. RSA keys are parsed once into verification-ready form.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// One signing key, ready to verify RS256 signatures.
pub struct SigningKey {
    pub kid: String,
    /// The issuer this key may sign for, possibly a `{tenantid}` template.
    pub issuer: Option<String>,
    key: ParsedPublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl SigningKey {
    /// A key from its RSA modulus and exponent (big-endian bytes).
    pub fn from_components(
        kid: &str,
        issuer: Option<String>,
        n: &[u8],
        e: &[u8],
    ) -> Option<SigningKey> {
        // RS256 keys of 2048 to 8192 bits only; parsing alone does not check the size
        let n = n.strip_prefix(&[0u8]).unwrap_or(n);
        if !(256..=1024).contains(&n.len()) || e.is_empty() || e.len() > 8 {
            return None;
        }
        let key = PublicKeyComponents { n, e }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .ok()?;
        Some(SigningKey {
            kid: kid.to_string(),
            issuer,
            key,
        })
    }

    /// Checks an RS256 signature (RSA-2048 or larger, PKCS#1 v1.5, SHA-256).
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(signing_input, signature).is_ok()
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    issuer: Option<String>,
}

/// Parses a key set, keeping the RSA signing keys and skipping anything else. Fails only
/// when the document itself is not a key set.
pub fn parse_key_set(body: &[u8]) -> Result<HashMap<String, Arc<SigningKey>>, String> {
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for k in raw.keys {
        if k.kty.as_deref() != Some("RSA") || k.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
            continue;
        };
        let (Ok(n), Ok(e)) = (
            URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')),
            URL_SAFE_NO_PAD.decode(e.trim_end_matches('=')),
        ) else {
            tracing::warn!(%kid, "skipping a JWK whose n or e is not base64url");
            continue;
        };
        match SigningKey::from_components(&kid, k.issuer, &n, &e) {
            Some(key) => {
                keys.insert(kid, Arc::new(key));
            }
            None => tracing::warn!(%kid, "skipping an RSA JWK that does not parse (too small?)"),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};

    fn jwk(pair: &RsaKeyPair, kid: &str, issuer: &str) -> serde_json::Value {
        let public = pair.public_key();
        serde_json::json!({
            "kty": "RSA", "use": "sig", "kid": kid, "x5t": kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            "issuer": issuer,
        })
    }

    #[test]
    fn entra_key_sets_parse_with_their_issuer_and_verify() {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let set = serde_json::json!({"keys": [
            jwk(&pair, "k1", "https://login.microsoftonline.com/{tenantid}/v2.0"),
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse_key_set(&serde_json::to_vec(&set).unwrap()).unwrap();
        assert_eq!(keys.len(), 1, "only the RSA signing key of a usable size");
        let key = &keys["k1"];
        assert_eq!(
            key.issuer.as_deref(),
            Some("https://login.microsoftonline.com/{tenantid}/v2.0")
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            b"message",
            &mut sig,
        )
        .unwrap();
        assert!(key.verify(b"message", &sig));
        assert!(!key.verify(b"other message", &sig));
        assert!(parse_key_set(b"{\"nokeys\":1}").is_err());
    }
}
