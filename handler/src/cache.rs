//! A small in-memory cache with two ages: past `soft` an entry is still served while a
//! background reload runs; past `hard` it is reloaded before answering. Writes on this
//! instance invalidate at once; other instances see changes within `hard`.
//!
//! Memory is bounded and given back: entries sit in a queue in the order they were loaded
//! (which, with one `hard` age per cache, is the order they expire in), so every insert
//! drops the expired entries at its old end, and the oldest entries go first when the cache
//! holds too many entries or bytes; an expired entry is also dropped when it is looked up,
//! and [`TtlCache::sweep`] drops expired ones when nothing is inserted. Each of these costs
//! O(1) per entry dropped, whatever the cache holds.
//!
//! Every cache's limits are set in [`limits`], the one place to change them.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a cache keeps entries and how much it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Served without a reload up to this age...
    pub soft: Duration,
    /// ...served while a background reload runs up to this one, never past it.
    pub hard: Duration,
    /// Most entries held.
    pub entries: usize,
    /// Most bytes held, as the cache's weigher estimates them (`None`: entries only).
    pub bytes: Option<usize>,
}

/// The limits of every cache in the handler, with why each is what it is. Only the SCIM
/// read cache's age is a setting (`SCIM_READ_CACHE_SECONDS`): the others bound how long a
/// revocation on another instance takes to show, which operators should not stretch.
pub mod limits {
    use super::CacheLimits;
    use std::time::Duration;

    /// Fresh for 10 s; another instance's change (an offboarding, a revoked grant, a
    /// terminated employee) shows within 25 s.
    const SOFT: Duration = Duration::from_secs(10);
    const HARD: Duration = Duration::from_secs(25);

    /// Registered tenants by id (access control and token validation), misses included.
    pub const TENANTS: CacheLimits = CacheLimits {
        soft: SOFT,
        hard: HARD,
        entries: 100_000,
        bytes: None,
    };
    /// Each tenant's access grants.
    pub const GRANTS: CacheLimits = CacheLimits {
        soft: SOFT,
        hard: HARD,
        entries: 100_000,
        bytes: None,
    };
    /// Employee records by (tenant, object id), misses included.
    pub const EMPLOYEES: CacheLimits = CacheLimits {
        soft: SOFT,
        hard: HARD,
        entries: 200_000,
        bytes: None,
    };
    /// Each tenant's SCIM Secret Token hash.
    pub const SCIM_TOKENS: CacheLimits = CacheLimits {
        soft: SOFT,
        hard: HARD,
        entries: 100_000,
        bytes: None,
    };
    /// Each tenant's SCIM settings.
    pub const SCIM_SETTINGS: CacheLimits = CacheLimits {
        soft: SOFT,
        hard: HARD,
        entries: 100_000,
        bytes: None,
    };
    /// SCIM users as GETs read them, for `SCIM_READ_CACHE_SECONDS`: parsed resources
    /// are large, so bytes are bounded too (64 MiB as estimated by `json_bytes`).
    pub fn scim_reads(age: Duration) -> CacheLimits {
        CacheLimits {
            soft: age,
            hard: age,
            entries: 50_000,
            bytes: Some(64 << 20),
        }
    }
    /// Validated access tokens (entra's cache, keyed by digest, never past `exp`).
    pub const VALIDATED_TOKENS: usize = 50_000;
}

/// About how many bytes a parsed JSON value takes in memory (for the byte bound).
pub fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    const NODE: usize = std::mem::size_of::<Value>();
    NODE + match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(json_bytes).sum(),
        // a map entry: the key, its bookkeeping, and the value
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.len() + 2 * NODE + json_bytes(v))
            .sum(),
        _ => 0,
    }
}

struct Slot<V> {
    value: V,
    loaded: Instant,
    refreshing: Arc<AtomicBool>,
    /// Which queue entry is this slot's: older entries for the key are stale.
    stamp: u64,
    weight: usize,
}

struct Entries<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in load order, with the stamp of the slot they were queued for.
    order: VecDeque<(u64, K)>,
    next_stamp: u64,
    weight: usize,
}

impl<K: Hash + Eq + Clone, V> Entries<K, V> {
    fn remove(&mut self, key: &K) -> Option<Slot<V>> {
        let slot = self.map.remove(key)?;
        self.weight -= slot.weight;
        Some(slot)
    }

    /// Drops entries at the old end while they are expired or the cache is over a limit,
    /// skipping queue entries of slots that are gone.
    fn sweep(&mut self, limits: &CacheLimits) {
        while let Some((stamp, key)) = self.order.front() {
            let over = self.map.len() > limits.entries
                || limits.bytes.is_some_and(|max| self.weight > max);
            match self.map.get(key) {
                Some(slot) if slot.stamp == *stamp => {
                    if !over && slot.loaded.elapsed() < limits.hard {
                        break;
                    }
                    let key = key.clone();
                    self.remove(&key);
                }
                _ => {} // stale: the key was reloaded or invalidated since
            }
            self.order.pop_front();
        }
        // stale queue entries pile up behind a live one only when keys are invalidated or
        // reloaded often; drop them once they outnumber the entries
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(stamp, key)| map.get(key).is_some_and(|s| s.stamp == *stamp));
        }
    }
}

/// The cache.
pub struct TtlCache<K, V> {
    entries: RwLock<Entries<K, V>>,
    /// Bumped by every invalidation: a load that started before one is not stored, so a
    /// write on this instance is never undone by a read that raced it.
    epoch: std::sync::atomic::AtomicU64,
    limits: CacheLimits,
    weigh: fn(&V) -> usize,
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache within `limits`, counting entries only.
    pub fn new(limits: CacheLimits) -> Arc<TtlCache<K, V>> {
        TtlCache::weighed(limits, |_| 0)
    }

    /// A cache within `limits` whose entries weigh what `weigh` says (bytes).
    pub fn weighed(limits: CacheLimits, weigh: fn(&V) -> usize) -> Arc<TtlCache<K, V>> {
        Arc::new(TtlCache {
            entries: RwLock::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_stamp: 0,
                weight: 0,
            }),
            epoch: std::sync::atomic::AtomicU64::new(0),
            limits,
            weigh,
        })
    }

    /// The value for `key`, loading it with `load` when absent or too old.
    pub async fn get_or_load<E, F, Fut>(self: &Arc<Self>, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let cached = {
            let entries = self.entries.read().expect("cache lock");
            entries.map.get(&key).map(|s| {
                (
                    s.value.clone(),
                    s.loaded.elapsed(),
                    s.refreshing.clone(),
                    s.stamp,
                )
            })
        };
        if let Some((value, age, refreshing, stamp)) = cached {
            if age < self.limits.soft {
                return Ok(value);
            }
            if age < self.limits.hard {
                if !refreshing.swap(true, Ordering::AcqRel) {
                    let cache = self.clone();
                    let epoch = self.epoch.load(Ordering::Acquire);
                    tokio::spawn(async move {
                        match load().await {
                            Ok(fresh) => cache.put_if_current(key, fresh, epoch),
                            Err(e) => {
                                refreshing.store(false, Ordering::Release);
                                tracing::warn!(error = %e, "background cache reload failed");
                            }
                        }
                    });
                }
                return Ok(value);
            }
            // expired: gone now, whether or not the reload below succeeds
            let mut entries = self.entries.write().expect("cache lock");
            if entries.map.get(&key).is_some_and(|s| s.stamp == stamp) {
                entries.remove(&key);
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let value = load().await?;
        self.put_if_current(key, value.clone(), epoch);
        Ok(value)
    }

    /// Stores a value loaded when the epoch was `epoch`, unless an invalidation came since.
    fn put_if_current(&self, key: K, value: V, epoch: u64) {
        let mut entries = self.entries.write().expect("cache lock");
        if self.epoch.load(Ordering::Acquire) != epoch {
            entries.remove(&key);
            return;
        }
        let weight = (self.weigh)(&value);
        let stamp = entries.next_stamp;
        entries.next_stamp += 1;
        entries.remove(&key);
        entries.map.insert(
            key.clone(),
            Slot {
                value,
                loaded: Instant::now(),
                refreshing: Arc::new(AtomicBool::new(false)),
                stamp,
                weight,
            },
        );
        entries.weight += weight;
        entries.order.push_back((stamp, key));
        entries.sweep(&self.limits);
    }

    /// Drops expired entries (for a periodic call: inserts sweep on their own).
    pub fn sweep(&self) {
        self.entries
            .write()
            .expect("cache lock")
            .sweep(&self.limits);
    }

    /// Forgets one entry (after a write on this instance).
    pub fn invalidate(&self, key: &K) {
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    /// Forgets every entry matching `predicate` (rare: a tenant's offboarding).
    pub fn invalidate_where(&self, predicate: impl Fn(&K) -> bool) {
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let doomed: Vec<K> = entries
            .map
            .keys()
            .filter(|k| predicate(k))
            .cloned()
            .collect();
        for key in doomed {
            entries.remove(&key);
        }
    }

    /// Entries held now, and their weight.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        let entries = self.entries.read().expect("cache lock");
        (entries.map.len(), entries.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn limits(soft: Duration, hard: Duration, entries: usize) -> CacheLimits {
        CacheLimits {
            soft,
            hard,
            entries,
            bytes: None,
        }
    }

    #[tokio::test]
    async fn fresh_entries_are_served_stale_ones_reloaded_and_old_ones_waited_for() {
        let cache: Arc<TtlCache<u8, u32>> = TtlCache::new(limits(
            Duration::from_millis(100),
            Duration::from_secs(2),
            10,
        ));
        let loads = Arc::new(AtomicU32::new(0));
        let load = |loads: Arc<AtomicU32>| {
            move || async move { Ok::<u32, String>(loads.fetch_add(1, Ordering::SeqCst) + 1) }
        };
        assert_eq!(cache.get_or_load(1, load(loads.clone())).await.unwrap(), 1);
        assert_eq!(
            cache.get_or_load(1, load(loads.clone())).await.unwrap(),
            1,
            "fresh: no load"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            cache.get_or_load(1, load(loads.clone())).await.unwrap(),
            1,
            "stale: old value, reload behind"
        );
        let mut landed = 0;
        for _ in 0..100 {
            landed = cache.get_or_load(1, load(loads.clone())).await.unwrap();
            if landed == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(landed, 2, "the background reload landed");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            cache.get_or_load(1, load(loads.clone())).await.unwrap(),
            3,
            "too old: reloaded first"
        );
        cache.invalidate(&1);
        assert_eq!(
            cache.get_or_load(1, load(loads.clone())).await.unwrap(),
            4,
            "invalidated: reloaded"
        );
    }

    #[tokio::test]
    async fn a_load_that_raced_an_invalidation_is_not_kept() {
        let cache: Arc<TtlCache<u8, u32>> =
            TtlCache::new(limits(Duration::from_secs(10), Duration::from_secs(20), 10));
        let loads = Arc::new(AtomicU32::new(0));
        let slow = {
            let loads = loads.clone();
            move || async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<u32, String>(loads.fetch_add(1, Ordering::SeqCst) + 1)
            }
        };
        let racing = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_load(1, slow).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.invalidate(&1); // a revocation lands while the old state is being read
        assert_eq!(racing.await.unwrap().unwrap(), 1);
        let again = {
            let loads = loads.clone();
            move || async move { Ok::<u32, String>(loads.fetch_add(1, Ordering::SeqCst) + 1) }
        };
        assert_eq!(
            cache.get_or_load(1, again).await.unwrap(),
            2,
            "the stale read was not cached"
        );
    }

    #[tokio::test]
    async fn a_full_cache_evicts_one_entry_not_all() {
        let cache: Arc<TtlCache<u32, u32>> =
            TtlCache::new(limits(Duration::from_secs(10), Duration::from_secs(20), 3));
        for k in 0..3 {
            cache
                .get_or_load(k, move || async move { Ok::<u32, String>(k) })
                .await
                .unwrap();
        }
        cache
            .get_or_load(99, || async { Ok::<u32, String>(99) })
            .await
            .unwrap();
        assert_eq!(cache.held().0, 3);
        let loads = Arc::new(AtomicU32::new(0));
        for k in [1, 2, 99, 0] {
            let loads = loads.clone();
            cache
                .get_or_load(k, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, String>(k)
                })
                .await
                .unwrap();
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "the oldest entry (0) went, the others stayed: only 0 loads"
        );
    }

    async fn put(cache: &Arc<TtlCache<u32, u32>>, k: u32) {
        cache
            .get_or_load(k, move || async move { Ok::<u32, String>(k) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn expired_entries_are_dropped_by_later_inserts_by_access_and_by_a_sweep() {
        let hard = Duration::from_millis(50);
        let cache: Arc<TtlCache<u32, u32>> = TtlCache::new(limits(hard, hard, 100_000));
        for k in 0..1000 {
            put(&cache, k).await;
        }
        assert_eq!(cache.held().0, 1000);
        tokio::time::sleep(hard + Duration::from_millis(20)).await;
        put(&cache, 5000).await;
        assert_eq!(cache.held().0, 1, "one insert dropped every expired entry");

        tokio::time::sleep(hard + Duration::from_millis(20)).await;
        let failed = cache
            .get_or_load(5000, || async { Err::<u32, String>("storage down".into()) })
            .await;
        assert!(failed.is_err());
        assert_eq!(cache.held().0, 0, "an expired entry looked up is gone");

        put(&cache, 1).await;
        tokio::time::sleep(hard + Duration::from_millis(20)).await;
        cache.sweep();
        assert_eq!(
            cache.held(),
            (0, 0),
            "a sweep without inserts frees them too"
        );
    }

    #[tokio::test]
    async fn the_byte_bound_holds_and_invalidations_do_not_grow_the_queue() {
        let long = Duration::from_secs(60);
        let cache: Arc<TtlCache<u32, u32>> = TtlCache::weighed(
            CacheLimits {
                soft: long,
                hard: long,
                entries: 1000,
                bytes: Some(100),
            },
            |v| *v as usize,
        );
        for k in [40, 41, 42] {
            put(&cache, k).await;
        }
        assert_eq!(
            cache.held(),
            (2, 83),
            "the oldest (40) went for the byte bound"
        );
        for _ in 0..10_000 {
            cache.invalidate(&41);
            put(&cache, 41).await;
        }
        assert_eq!(cache.held(), (2, 83));
        assert!(cache.entries.read().unwrap().order.len() <= 2 * 2 + 64 + 1);
    }
}
