//! Signing keys and issuer metadata per (cloud, token version), cached. An unknown `kid`
//! triggers at most one fetch per cooldown, shared by every concurrent caller; when
//! Microsoft is unreachable the cached keys keep working until they are too old.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cloud::{Cloud, Endpoints};
use crate::jwks::{SigningKey, parse_key_set};

/// Which token format: v1 (`sts.windows.net` issuers) or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenVersion {
    V1,
    V2,
}

impl TokenVersion {
    /// The `ver` claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenVersion::V1 => "1.0",
            TokenVersion::V2 => "2.0",
        }
    }
}

/// Timings of the key cache.
#[derive(Debug, Clone)]
pub struct KeyCachePolicy {
    /// Least time between two fetches triggered by unknown `kid`s.
    pub refresh_cooldown: Duration,
    /// Keys older than this are refreshed in the background on use.
    pub refresh_interval: Duration,
    /// Keys older than this are no longer trusted (Microsoft unreachable for too long).
    pub max_age: Duration,
    /// Timeout of one metadata or key-set fetch.
    pub fetch_timeout: Duration,
}

impl Default for KeyCachePolicy {
    fn default() -> Self {
        KeyCachePolicy {
            refresh_cooldown: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(12 * 3600),
            max_age: Duration::from_secs(48 * 3600),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Why keys could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key with that `kid`, even after a permitted refresh.
    #[error("no signing key with that kid")]
    UnknownKid,
    /// Metadata or keys have never been fetched, or are too old, and Microsoft is unreachable.
    #[error("signing keys unavailable: {0}")]
    Unavailable(String),
}

struct Snapshot {
    issuer_template: String,
    jwks_uri: String,
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Instant,
    generation: u64,
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
}

/// What a source's cached keys say about a `kid`, without fetching anything.
pub enum Cached {
    /// Nothing usable is cached: never fetched, or too old to trust.
    NotLoaded,
    /// The issuer template and the key with that `kid`.
    Key(String, Arc<SigningKey>),
    /// Keys are cached, none with that `kid`; the issuer template they sign for.
    UnknownKid(String),
}

/// The keys and issuer template of one login authority and token version (clouds that share
/// an authority share its source).
pub struct KeySource {
    cloud: Cloud,
    version: TokenVersion,
    endpoints: Endpoints,
    http: reqwest::Client,
    policy: KeyCachePolicy,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Held while fetching; remembers when the last fetch was tried.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl KeySource {
    /// A source that fetches lazily, on first use.
    pub fn new(
        cloud: Cloud,
        version: TokenVersion,
        endpoints: Endpoints,
        http: reqwest::Client,
        policy: KeyCachePolicy,
    ) -> KeySource {
        KeySource {
            cloud,
            version,
            endpoints,
            http,
            policy,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many fetch rounds ran (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.read().expect("key snapshot lock").clone()
    }

    /// What the cached keys hold for `kid`; never waits for a fetch (old keys are refreshed
    /// in the background, as on every use).
    pub fn cached(self: &Arc<Self>, kid: &str) -> Cached {
        let Some(snap) = self.snapshot() else {
            return Cached::NotLoaded;
        };
        let age = snap.fetched_at.elapsed();
        if age >= self.policy.max_age {
            return Cached::NotLoaded;
        }
        if age > self.policy.refresh_interval {
            let source = self.clone();
            let generation = snap.generation;
            tokio::spawn(async move { source.refresh(Some(generation)).await });
        }
        match snap.keys.get(kid) {
            Some(key) => Cached::Key(snap.issuer_template.clone(), key.clone()),
            None => Cached::UnknownKid(snap.issuer_template.clone()),
        }
    }

    /// The issuer template (`https://.../{tenantid}/v2.0`) and the key for `kid`.
    pub async fn lookup(
        self: &Arc<Self>,
        kid: &str,
    ) -> Result<(String, Arc<SigningKey>), KeyError> {
        let seen = self.snapshot();
        if let Some(snap) = &seen {
            let age = snap.fetched_at.elapsed();
            if age < self.policy.max_age {
                if age > self.policy.refresh_interval {
                    let source = self.clone();
                    let generation = snap.generation;
                    tokio::spawn(async move { source.refresh(Some(generation)).await });
                }
                if let Some(key) = snap.keys.get(kid) {
                    return Ok((snap.issuer_template.clone(), key.clone()));
                }
            }
        }
        // unknown kid, nothing cached, or too old: one shared, rate-limited refresh
        let stale = seen.as_ref().map(|s| s.generation);
        self.refresh(stale).await;
        let snap = self.snapshot().ok_or_else(|| {
            KeyError::Unavailable(format!(
                "{} {} metadata could not be fetched",
                self.cloud,
                self.version.as_str()
            ))
        })?;
        if snap.fetched_at.elapsed() >= self.policy.max_age {
            return Err(KeyError::Unavailable(
                "cached keys are too old and could not be refreshed".into(),
            ));
        }
        snap.keys
            .get(kid)
            .map(|key| (snap.issuer_template.clone(), key.clone()))
            .ok_or(KeyError::UnknownKid)
    }

    /// Fetches unless someone already replaced `seen_generation`, or the cooldown forbids it.
    async fn refresh(&self, seen_generation: Option<u64>) {
        let mut last_attempt = self.refresh.lock().await;
        let current = self.snapshot();
        if current.as_ref().map(|s| s.generation) != seen_generation {
            return; // another caller refreshed while we waited
        }
        // the cooldown holds for first loads too: when Microsoft is unreachable at a cold
        // start, waiting callers fail fast instead of fetching one after another
        if last_attempt.is_some_and(|t| t.elapsed() < self.policy.refresh_cooldown) {
            return;
        }
        *last_attempt = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch(current.as_deref()).await {
            Ok(snapshot) => {
                *self.current.write().expect("key snapshot lock") = Some(Arc::new(snapshot));
            }
            Err(e) => {
                tracing::warn!(cloud = %self.cloud, version = self.version.as_str(), error = %e, "signing key refresh failed")
            }
        }
    }

    async fn fetch(&self, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let (issuer_template, jwks_uri) = match previous {
            Some(p) => (p.issuer_template.clone(), p.jwks_uri.clone()),
            None => {
                let base = self.endpoints.login(self.cloud);
                let url = match self.version {
                    TokenVersion::V1 => format!("{base}/common/.well-known/openid-configuration"),
                    TokenVersion::V2 => {
                        format!("{base}/common/v2.0/.well-known/openid-configuration")
                    }
                };
                let config: OpenIdConfiguration = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|e| format!("{url}: not OpenID configuration: {e}"))?;
                let jwks_uri = self
                    .endpoints
                    .rebase_login_url(self.cloud, &config.jwks_uri)?;
                (config.issuer, jwks_uri)
            }
        };
        let keys = parse_key_set(&self.get(&jwks_uri).await?)?;
        Ok(Snapshot {
            issuer_template,
            jwks_uri,
            keys,
            fetched_at: Instant::now(),
            generation: previous.map_or(1, |p| p.generation + 1),
        })
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .timeout(self.policy.fetch_timeout)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status().as_u16()));
        }
        let bytes = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > 1024 * 1024 {
            return Err(format!("{url}: larger than 1 MiB"));
        }
        Ok(bytes.to_vec())
    }
}
