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
                    tokio::spawn(async move {
                        match load().await {
                            Ok(fresh) => cache.put(key, fresh),
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
        let value = load().await?;
        self.put(key, value.clone());
        Ok(value)
    }

    /// Stores a freshly loaded value.
    pub fn put(&self, key: K, value: V) {
        let mut entries = self.entries.write().expect("cache lock");
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.clear();
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
        self.entries.write().expect("cache lock").remove(key);
    }

    /// Forgets every entry matching `predicate`.
    pub fn invalidate_where(&self, predicate: impl Fn(&K) -> bool) {
        self.entries
            .write()
            .expect("cache lock")
            .retain(|k, _| !predicate(k));
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
}
