//! A small in-memory cache with two ages: past `soft` an entry is still served while a
//! background reload runs; past `hard` it is reloaded before answering. Writes on this
//! instance invalidate at once; other instances see changes within `hard`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

struct Slot<V> {
    value: V,
    loaded: Instant,
    refreshing: Arc<AtomicBool>,
}

/// The cache.
pub struct TtlCache<K, V> {
    entries: RwLock<HashMap<K, Slot<V>>>,
    /// Bumped by every invalidation: a load that started before one is not stored, so a
    /// write on this instance is never undone by a read that raced it.
    epoch: std::sync::atomic::AtomicU64,
    soft: Duration,
    hard: Duration,
    capacity: usize,
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries.
    pub fn new(soft: Duration, hard: Duration, capacity: usize) -> Arc<TtlCache<K, V>> {
        Arc::new(TtlCache {
            entries: RwLock::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            soft,
            hard,
            capacity,
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
            entries
                .get(&key)
                .map(|s| (s.value.clone(), s.loaded.elapsed(), s.refreshing.clone()))
        };
        if let Some((value, age, refreshing)) = cached {
            if age < self.soft {
                return Ok(value);
            }
            if age < self.hard {
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
        Self::insert(&mut entries, self.capacity, self.hard, key, value);
    }

    fn insert(
        entries: &mut HashMap<K, Slot<V>>,
        capacity: usize,
        hard: Duration,
        key: K,
        value: V,
    ) {
        if entries.len() >= capacity && !entries.contains_key(&key) {
            // drop what is too old anyway, then one arbitrary entry: never the whole cache
            entries.retain(|_, slot| slot.loaded.elapsed() < hard);
            if entries.len() >= capacity
                && let Some(victim) = entries.keys().next().cloned()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(
            key,
            Slot {
                value,
                loaded: Instant::now(),
                refreshing: Arc::new(AtomicBool::new(false)),
            },
        );
    }

    /// Forgets one entry (after a write on this instance).
    pub fn invalidate(&self, key: &K) {
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    /// Forgets every entry matching `predicate`.
    pub fn invalidate_where(&self, predicate: impl Fn(&K) -> bool) {
        let mut entries = self.entries.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.retain(|k, _| !predicate(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn fresh_entries_are_served_stale_ones_reloaded_and_old_ones_waited_for() {
        let cache: Arc<TtlCache<u8, u32>> =
            TtlCache::new(Duration::from_millis(100), Duration::from_secs(2), 10);
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
            TtlCache::new(Duration::from_secs(10), Duration::from_secs(20), 10);
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
            TtlCache::new(Duration::from_secs(10), Duration::from_secs(20), 3);
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
        assert_eq!(cache.entries.read().unwrap().len(), 3);
    }
}
