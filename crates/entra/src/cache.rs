//! A bounded cache of tokens already validated, keyed by the SHA-256 of the token (the
//! token itself is never stored) and never used past the token's expiry.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

const SHARDS: usize = 16;

/// The digest is already uniformly random: use its first bytes as the map hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }
}

/// One shard: the entries, and their keys in insertion order, so that the oldest go
/// first when the shard is full and each insert costs O(1) whatever the shard holds.
struct Shard<V> {
    entries: HashMap<[u8; 32], (i64, Arc<V>), BuildHasherDefault<DigestHasher>>,
    order: VecDeque<[u8; 32]>,
}

/// The cache; `V` is what a successful validation produced.
pub struct TokenCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

impl<V> TokenCache<V> {
    /// A cache holding at most about `capacity` tokens.
    pub fn new(capacity: usize) -> TokenCache<V> {
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::default(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The key of a token.
    pub fn key(token: &str) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        key
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<Shard<V>> {
        &self.shards[key[31] as usize % SHARDS]
    }

    /// The cached result, if present and `now` (unix seconds) is before its expiry; an
    /// expired entry is dropped when seen.
    pub fn get(&self, key: &[u8; 32], now: i64) -> Option<Arc<V>> {
        let mut shard = self.shard(key).lock().expect("token cache lock");
        match shard.entries.get(key) {
            Some((expires, value)) if now < *expires => Some(value.clone()),
            Some(_) => {
                shard.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a result until `expires` (unix seconds). Each insert also looks at the
    /// oldest entries: expired ones are dropped, and when the shard is full the oldest goes.
    pub fn insert(&self, key: [u8; 32], expires: i64, value: Arc<V>, now: i64) {
        let mut guard = self.shard(&key).lock().expect("token cache lock");
        let shard = &mut *guard;
        if shard.entries.insert(key, (expires, value)).is_none() {
            shard.order.push_back(key);
        }
        // keys of entries already gone (seen expired, or cleared) are skipped over here
        let mut looked = 0;
        while let Some(oldest) = shard.order.front().copied() {
            let full =
                shard.entries.len() > self.per_shard || shard.order.len() > 2 * self.per_shard;
            let state = shard.entries.get(&oldest).map(|(e, _)| *e <= now);
            match state {
                None => {}
                Some(expired) if full || (expired && looked < 2) => {
                    shard.entries.remove(&oldest);
                }
                Some(_) => break,
            }
            shard.order.pop_front();
            looked += 1;
        }
    }

    /// Forgets everything (for example when a tenant is offboarded).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().expect("token cache lock");
            shard.entries.clear();
            shard.order.clear();
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("token cache lock").entries.len())
            .sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache: TokenCache<u32> = TokenCache::new(32);
        let k = TokenCache::<u32>::key("token-a");
        cache.insert(k, 100, Arc::new(1), 0);
        assert_eq!(cache.get(&k, 99).as_deref(), Some(&1));
        assert_eq!(cache.get(&k, 100), None, "never at or past expiry");
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
        for i in 0..1000 {
            cache.insert(
                TokenCache::<u32>::key(&format!("t{i}")),
                1000,
                Arc::new(i),
                0,
            );
        }
        assert!(cache.len() <= 32, "bounded: {}", cache.len());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_entries_are_reclaimed_by_later_inserts_without_being_read() {
        let cache: TokenCache<u32> = TokenCache::new(16 * 1000);
        for i in 0..1000 {
            cache.insert(
                TokenCache::<u32>::key(&format!("old{i}")),
                100,
                Arc::new(i),
                0,
            );
        }
        for i in 0..1000 {
            cache.insert(
                TokenCache::<u32>::key(&format!("new{i}")),
                900,
                Arc::new(i),
                200,
            );
        }
        assert_eq!(cache.len(), 1000, "only the live entries are left");
    }

    #[test]
    fn keys_are_digests_not_tokens() {
        let k = TokenCache::<u32>::key("secret-token");
        assert_ne!(&k[..], b"secret-token");
        assert_eq!(k, TokenCache::<u32>::key("secret-token"));
    }
}
