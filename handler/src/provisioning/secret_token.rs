//! SCIM Secret Tokens carry a MAC of their tenant, so a token made up by anyone without the
//! service's token key is refused before it can cost a storage request: `scim_` and the
//! base64url of a 16-byte random nonce followed by the first 16 bytes of
//! HMAC-SHA256(key, label, tenant, nonce). The key authenticates nothing by itself (the
//! stored hash of the whole token does that); it only keeps forged tokens away from storage.
//! It lives in one row of the SCIM table, created by the first instance that needs it and
//! read once per process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tables::{Entity, Table};
use uuid::Uuid;

use crate::store::StoreError;

/// What every token starts with.
const PREFIX: &str = "scim_";
const NONCE_BYTES: usize = 16;
const TAG_BYTES: usize = 16;
/// Base64url characters of nonce and tag: 32 bytes.
const BODY_CHARS: usize = 43;
/// Binds the MAC to this use of the key.
const LABEL: &[u8] = b"entra-connector scim secret token v1\0";
/// Where the key is kept: a partition no tenant id can name.
const KEY_PARTITION: &str = "service";
const KEY_ROW: &str = "scim-token-key";
/// Least time between two attempts to load the key after one failed, so that while
/// storage is down unauthenticated requests do not each cost a storage request.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why the key could not be had.
#[derive(Debug)]
pub(crate) enum KeyUnavailable {
    /// A recent attempt failed; not tried again yet.
    Backoff,
    Store(StoreError),
}

impl std::fmt::Display for KeyUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyUnavailable::Backoff => f.write_str("the token key could not be loaded recently"),
            KeyUnavailable::Store(e) => write!(f, "the token key could not be loaded: {e}"),
        }
    }
}

/// The token key of this deployment, loaded on first use.
pub(crate) struct TokenKey {
    table: Table,
    key: tokio::sync::OnceCell<hmac::Key>,
    failed_at: Mutex<Option<Instant>>,
}

impl TokenKey {
    /// The key kept in `table`.
    pub(crate) fn new(table: Table) -> TokenKey {
        TokenKey {
            table,
            key: tokio::sync::OnceCell::new(),
            failed_at: Mutex::new(None),
        }
    }

    /// The key for an unauthenticated request: read (or created) once per process and
    /// shared by every concurrent caller; after a failed load, not tried again for a while.
    pub(crate) async fn get(&self) -> Result<&hmac::Key, KeyUnavailable> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let recently_failed = self
            .failed_at
            .lock()
            .expect("token key lock")
            .is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if recently_failed {
            return Err(KeyUnavailable::Backoff);
        }
        self.load().await.map_err(KeyUnavailable::Store)
    }

    /// The key, loading it now if it is not loaded (for callers already authenticated).
    pub(crate) async fn load(&self) -> Result<&hmac::Key, StoreError> {
        self.key
            .get_or_try_init(|| async {
                let loaded = load_or_create(&self.table).await;
                if loaded.is_err() {
                    *self.failed_at.lock().expect("token key lock") = Some(Instant::now());
                }
                loaded
            })
            .await
    }
}

async fn load_or_create(table: &Table) -> Result<hmac::Key, StoreError> {
    for _ in 0..3 {
        if let Some(row) = table.try_get(KEY_PARTITION, KEY_ROW).await? {
            let bytes = row
                .get_str("Key")
                .and_then(|k| STANDARD.decode(k).ok())
                .filter(|k| k.len() == 32)
                .ok_or_else(|| StoreError::Corrupt("the SCIM token key row".into()))?;
            return Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
        let row = Entity::new(KEY_PARTITION, KEY_ROW).with("Key", STANDARD.encode(bytes));
        match table.insert(&row).await {
            Ok(_) => return Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
            // another instance created it first: use theirs
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended)
}

fn tag(key: &hmac::Key, tenant: Uuid, nonce: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(LABEL);
    context.update(tenant.as_bytes());
    context.update(nonce);
    context.sign()
}

/// A new token for `tenant`.
pub(crate) fn mint(key: &hmac::Key, tenant: Uuid) -> String {
    let mut body = [0u8; NONCE_BYTES + TAG_BYTES];
    aws_lc_rs::rand::fill(&mut body[..NONCE_BYTES]).expect("the system random source works");
    let tag = tag(key, tenant, &body[..NONCE_BYTES]);
    body[NONCE_BYTES..].copy_from_slice(&tag.as_ref()[..TAG_BYTES]);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
}

/// The nonce and tag of a token shaped like ours; `None` for anything else. Needs no key.
pub(crate) fn parse(token: &str) -> Option<[u8; NONCE_BYTES + TAG_BYTES]> {
    let body = token.strip_prefix(PREFIX)?;
    if body.len() != BODY_CHARS {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
    bytes.try_into().ok()
}

/// Whether a parsed token was made by [`mint`] for `tenant` with `key` (constant time).
pub(crate) fn made_for(
    key: &hmac::Key,
    tenant: Uuid,
    body: &[u8; NONCE_BYTES + TAG_BYTES],
) -> bool {
    let expected = tag(key, tenant, &body[..NONCE_BYTES]);
    verify_slices_are_equal(&expected.as_ref()[..TAG_BYTES], &body[NONCE_BYTES..]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32])
    }

    #[test]
    fn a_token_verifies_for_its_tenant_and_key_only() {
        let tenant = Uuid::new_v4();
        let token = mint(&key(1), tenant);
        assert!(
            token.starts_with("scim_") && token.len() == 5 + 43,
            "{token}"
        );
        let body = parse(&token).expect("our own shape");
        assert!(made_for(&key(1), tenant, &body));
        assert!(!made_for(&key(1), Uuid::new_v4(), &body), "another tenant");
        assert!(
            !made_for(&key(2), tenant, &body),
            "another deployment's key"
        );
        assert_ne!(mint(&key(1), tenant), token, "a fresh nonce each time");
    }

    #[test]
    fn malformed_tokens_are_refused_without_a_key() {
        let good = mint(&key(1), Uuid::new_v4());
        for bad in [
            "",
            "scim_",
            "Bearer abc",
            &good[5..],
            &format!("{good}A"),
            &good[..good.len() - 1],
            &good.replace("scim_", "SCIM_"),
            &format!("scim_{}", "!".repeat(43)),
            &format!("scim_{}", "A".repeat(42) + "="),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
