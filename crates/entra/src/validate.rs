//! Access-token validation, following ../shared/reference/entra.md rule by rule: RS256 only,
//! no key URLs from the token, `kid` looked up only in cached keys, `tid` a GUID of a known
//! tenant, `iss` equal to the metadata's `{tenantid}` template for that tenant and to the
//! signing key's own `issuer`, audience ours and never Graph's, `exp` and `nbf` required.
//!
//! The signature is checked before the tenant is looked up: the lookup may read storage,
//! and nothing an unauthenticated caller sends may cost a storage request. So the key is
//! first found among the clouds' cached keys, then (when no cache has it) fetched from the
//! authorities whose issuer fits, each at most once per cooldown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cache::TokenCache;
use crate::cloud::{Cloud, Endpoints};
use crate::jwks::SigningKey;
use crate::jwt;
use crate::keys::{Cached, KeyCachePolicy, KeyError, KeySource, TokenVersion};

/// Audiences of Microsoft Graph: such tokens are Graph's to validate, never ours.
const GRAPH_AUDIENCES: &[&str] = &[
    "00000003-0000-0000-c000-000000000000",
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
];

/// Header parameters that would let a token choose its own key or extensions.
const FORBIDDEN_HEADERS: &[&str] = &["jku", "x5u", "jwk", "x5c", "crit"];

/// Issuer prefix of development tokens (`handler dev-token`); a reserved `.invalid` host.
pub const DEV_ISSUER_PREFIX: &str = "https://dev-auth.entra-connector.invalid";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm must be RS256")]
    Algorithm,
    #[error("header parameter {0} is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("kid is missing or not a key identifier")]
    BadKid,
    #[error("no signing key with that kid")]
    UnknownKid,
    #[error("claim {0} is missing")]
    MissingClaim(&'static str),
    #[error("claim {0} is malformed")]
    BadClaim(&'static str),
    #[error("the token's tenant is not registered with this service")]
    UnknownTenant,
    #[error("the token was not signed in the tenant's cloud")]
    WrongCloud,
    #[error("issuer does not match the tenant's issuer")]
    IssuerMismatch,
    #[error("the signing key may not sign for this issuer")]
    KeyIssuerMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("Microsoft Graph tokens are not accepted")]
    GraphAudience,
    #[error("audience is not this service")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("cannot validate tokens right now: {0}")]
    Unavailable(String),
}

impl Rejection {
    /// The OAuth error code: `invalid_token`, or `temporarily_unavailable` when the fault is ours.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unavailable(_) => "temporarily_unavailable",
            _ => "invalid_token",
        }
    }

    /// True when the token may be fine and the service could not check it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Rejection::Unavailable(_))
    }
}

/// Tells the validator which tenants exist and in which cloud.
#[async_trait]
pub trait TenantLookup: Send + Sync {
    /// The cloud of a tenant this service knows, whatever its status; `None` if unknown.
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String>;
}

/// A token that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedToken {
    pub tenant_id: Uuid,
    pub version: TokenVersion,
    /// `None` for development tokens.
    pub cloud: Option<Cloud>,
    pub expires_at: i64,
    pub claims: Map<String, Value>,
}

impl ValidatedToken {
    fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// The user's or service principal's object id in the tenant (`oid`).
    pub fn object_id(&self) -> Option<&str> {
        self.str_claim("oid")
    }

    /// The client application: `azp` (v2) or `appid` (v1).
    pub fn client_app(&self) -> Option<&str> {
        self.str_claim("azp").or_else(|| self.str_claim("appid"))
    }

    /// Delegated scopes (`scp`), empty for app-only tokens.
    pub fn scopes(&self) -> Vec<&str> {
        self.str_claim("scp")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// App roles (`roles`).
    pub fn roles(&self) -> Vec<&str> {
        self.claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// An app-only token: `idtyp=app`, or `roles` without `scp`.
    pub fn is_app_only(&self) -> bool {
        self.str_claim("idtyp") == Some("app")
            || (self.claims.contains_key("roles") && !self.claims.contains_key("scp"))
    }

    /// A delegated (user) token: it carries `scp` and is not app-only.
    pub fn is_delegated(&self) -> bool {
        self.claims.contains_key("scp") && self.str_claim("idtyp") != Some("app")
    }
}

/// How tokens are judged.
#[derive(Clone)]
pub struct ValidatorConfig {
    /// Accepted `aud` values: our client id, and the App ID URI if set.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub keys: KeyCachePolicy,
    /// Most validated tokens remembered.
    pub cache_capacity: usize,
    pub endpoints: Endpoints,
    /// The development key, trusted only when development authentication is on.
    pub dev_key: Option<Arc<SigningKey>>,
}

/// The validator. One per process; cheap to share behind an `Arc`.
pub struct Validator {
    config: ValidatorConfig,
    /// Clouds with the same login authority (US Gov L4 and L5; every cloud under an
    /// override) share one source, so their keys are fetched once.
    sources: HashMap<(Cloud, TokenVersion), Arc<KeySource>>,
    cache: TokenCache<ValidatedToken>,
}

impl Validator {
    /// A validator; nothing is fetched until the first token needs it.
    pub fn new(config: ValidatorConfig) -> Validator {
        let http = reqwest::Client::builder()
            .connect_timeout(config.keys.fetch_timeout)
            .build()
            .expect("an HTTP client builds");
        Validator::with_http(config, http)
    }

    /// A validator sharing an HTTP client (building one loads the trust roots: share it).
    /// Every fetch still has the configured timeout.
    pub fn with_http(config: ValidatorConfig, http: reqwest::Client) -> Validator {
        let mut sources = HashMap::new();
        let mut by_authority: HashMap<(String, TokenVersion), Arc<KeySource>> = HashMap::new();
        for cloud in Cloud::ALL {
            for version in [TokenVersion::V1, TokenVersion::V2] {
                let source = by_authority
                    .entry((config.endpoints.login(cloud), version))
                    .or_insert_with(|| {
                        Arc::new(KeySource::new(
                            cloud,
                            version,
                            config.endpoints.clone(),
                            http.clone(),
                            config.keys.clone(),
                        ))
                    });
                sources.insert((cloud, version), source.clone());
            }
        }
        Validator {
            cache: TokenCache::new(config.cache_capacity),
            config,
            sources,
        }
    }

    /// The key source of one cloud and version (tests read its fetch count).
    pub fn key_source(&self, cloud: Cloud, version: TokenVersion) -> &Arc<KeySource> {
        &self.sources[&(cloud, version)]
    }

    /// Forgets every cached validation.
    pub fn forget_cached(&self) {
        self.cache.clear();
    }

    /// Validates a bearer token. Repeated tokens are answered from the cache until they expire.
    pub async fn validate(
        &self,
        token: &str,
        tenants: &dyn TenantLookup,
    ) -> Result<Arc<ValidatedToken>, Rejection> {
        let now = now_unix();
        let cache_key = TokenCache::<ValidatedToken>::key(token);
        if let Some(hit) = self.cache.get(&cache_key, now) {
            return Ok(hit);
        }
        let validated = Arc::new(self.validate_uncached(token, tenants, now).await?);
        self.cache
            .insert(cache_key, validated.expires_at, validated.clone(), now);
        Ok(validated)
    }

    /// Validates without consulting or filling the validated-token cache (signing keys are
    /// still cached). For benchmarks and diagnostics.
    pub async fn validate_fresh(
        &self,
        token: &str,
        tenants: &dyn TenantLookup,
    ) -> Result<ValidatedToken, Rejection> {
        self.validate_uncached(token, tenants, now_unix()).await
    }

    async fn validate_uncached(
        &self,
        token: &str,
        tenants: &dyn TenantLookup,
        now: i64,
    ) -> Result<ValidatedToken, Rejection> {
        let parsed = jwt::parse(token)?;
        let header = &parsed.header;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(Rejection::Algorithm);
        }
        if let Some(name) = FORBIDDEN_HEADERS.iter().find(|h| header.contains_key(**h)) {
            return Err(Rejection::ForbiddenHeader(name));
        }
        if header.contains_key("nonce") {
            // Graph access tokens carry a nonce header and are Graph's alone
            return Err(Rejection::GraphAudience);
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(Rejection::BadKid)?;
        let kid_ok = (1..=128).contains(&kid.len())
            && kid.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'.')
            });
        if !kid_ok {
            return Err(Rejection::BadKid);
        }

        let claims = &parsed.claims;
        let string = |name: &'static str| -> Result<&str, Rejection> {
            match claims.get(name) {
                None | Some(Value::Null) => Err(Rejection::MissingClaim(name)),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(Rejection::BadClaim(name)),
            }
        };
        let number = |name: &'static str| -> Result<i64, Rejection> {
            match claims.get(name) {
                None | Some(Value::Null) => Err(Rejection::MissingClaim(name)),
                // numbers only: a string exp or nbf is a malformed token
                Some(Value::Number(n)) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                    .ok_or(Rejection::BadClaim(name)),
                Some(_) => Err(Rejection::BadClaim(name)),
            }
        };
        let version = match string("ver")? {
            "1.0" => TokenVersion::V1,
            "2.0" => TokenVersion::V2,
            _ => return Err(Rejection::BadClaim("ver")),
        };
        let tid_text = string("tid")?;
        let tenant_id = Uuid::try_parse(tid_text).map_err(|_| Rejection::BadClaim("tid"))?;
        let mut tid_buf = [0u8; 36];
        let tenant = &*tenant_id.hyphenated().encode_lower(&mut tid_buf);
        if !tenant.eq_ignore_ascii_case(tid_text) {
            return Err(Rejection::BadClaim("tid")); // only the hyphenated GUID form
        }
        let iss = string("iss")?;
        let audience = match claims.get("aud") {
            None | Some(Value::Null) => return Err(Rejection::MissingClaim("aud")),
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Array(items)) if items.len() == 1 => {
                items[0].as_str().ok_or(Rejection::BadClaim("aud"))?
            }
            Some(_) => return Err(Rejection::BadClaim("aud")),
        };
        let exp = number("exp")?;
        let nbf = number("nbf")?;

        let signing_input = &token.as_bytes()[..parsed.signing_input_len];
        let is_dev_issuer = self.config.dev_key.is_some()
            && issuer_matches(
                &format!("{DEV_ISSUER_PREFIX}/{{tenantid}}/v2.0"),
                tenant,
                iss,
            );
        let signed = Signed {
            kid,
            tenant,
            iss,
            input: signing_input,
            signature: &parsed.signature,
        };
        // the signature first: only a token Microsoft (or the dev key) signed may cost the
        // tenant lookup, which can read storage
        let cloud = match (&self.config.dev_key, is_dev_issuer) {
            (Some(dev_key), true) => {
                if kid != dev_key.kid || !dev_key.verify(signing_input, &parsed.signature) {
                    return Err(Rejection::BadSignature);
                }
                if tenants
                    .cloud_of(tenant_id)
                    .await
                    .map_err(Rejection::Unavailable)?
                    .is_none()
                {
                    return Err(Rejection::UnknownTenant);
                }
                None
            }
            _ => {
                let verified_by = self.verify_signature(version, &signed).await?;
                let cloud = tenants
                    .cloud_of(tenant_id)
                    .await
                    .map_err(Rejection::Unavailable)?
                    .ok_or(Rejection::UnknownTenant)?;
                let own = &self.sources[&(cloud, version)];
                if !Arc::ptr_eq(own, verified_by) {
                    // tokens never cross clouds: the tenant's own cloud must have signed it
                    let (template, key) = own.lookup(kid).await.map_err(|e| match e {
                        KeyError::UnknownKid => Rejection::WrongCloud,
                        KeyError::Unavailable(why) => Rejection::Unavailable(why),
                    })?;
                    signed.check(&template, &key)?;
                }
                Some(cloud)
            }
        };

        let is_graph = |g: &&str| {
            audience.len() >= g.len()
                && audience.is_char_boundary(g.len())
                && audience[..g.len()].eq_ignore_ascii_case(g)
                && (audience.len() == g.len() || audience[g.len()..].starts_with('/'))
        };
        if GRAPH_AUDIENCES.iter().any(is_graph) {
            return Err(Rejection::GraphAudience);
        }
        if !self.config.audiences.iter().any(|a| a == audience) {
            return Err(Rejection::WrongAudience);
        }
        let leeway = self.config.leeway.as_secs() as i64;
        if now >= exp.saturating_add(leeway) {
            return Err(Rejection::Expired);
        }
        if nbf.saturating_sub(leeway) > now {
            return Err(Rejection::NotYetValid);
        }
        Ok(ValidatedToken {
            tenant_id,
            version,
            cloud,
            expires_at: exp,
            claims: parsed.claims,
        })
    }
}

impl Validator {
    /// The source whose key signed the token. Cached keys of every authority are tried
    /// first; then the sources that could have issued `iss` and lack the `kid` (or have
    /// nothing cached) fetch, each within its own cooldown, in cloud order.
    async fn verify_signature(
        &self,
        version: TokenVersion,
        signed: &Signed<'_>,
    ) -> Result<&Arc<KeySource>, Rejection> {
        let mut sources: Vec<&Arc<KeySource>> = Vec::with_capacity(Cloud::ALL.len());
        for cloud in Cloud::ALL {
            let source = &self.sources[&(cloud, version)];
            if !sources.iter().any(|s| Arc::ptr_eq(s, source)) {
                sources.push(source);
            }
        }
        let mut refusal = None;
        let mut to_fetch = Vec::new();
        for source in sources {
            match source.cached(signed.kid) {
                Cached::Key(template, key) => match signed.check(&template, &key) {
                    Ok(()) => return Ok(source),
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                },
                Cached::UnknownKid(template) => {
                    if issuer_matches(&template, signed.tenant, signed.iss) {
                        to_fetch.push(source);
                    }
                }
                Cached::NotLoaded => to_fetch.push(source),
            }
        }
        let mut unavailable = None;
        for source in to_fetch {
            match source.lookup(signed.kid).await {
                Ok((template, key)) => match signed.check(&template, &key) {
                    Ok(()) => return Ok(source),
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                },
                Err(KeyError::UnknownKid) => {}
                Err(KeyError::Unavailable(why)) => {
                    unavailable.get_or_insert(why);
                }
            }
        }
        // a source we could not reach may hold the key: that is our fault, not the token's
        Err(match (unavailable, refusal) {
            (Some(why), _) => Rejection::Unavailable(why),
            (None, Some(refusal)) => refusal,
            (None, None) => Rejection::UnknownKid,
        })
    }
}

/// What a signature check needs of a parsed token.
struct Signed<'a> {
    kid: &'a str,
    /// The lowercase hyphenated `tid`.
    tenant: &'a str,
    iss: &'a str,
    input: &'a [u8],
    signature: &'a [u8],
}

impl Signed<'_> {
    /// The key's issuer template and own `issuer` must fit `iss`, and the key must verify.
    fn check(&self, template: &str, key: &SigningKey) -> Result<(), Rejection> {
        if !issuer_matches(template, self.tenant, self.iss) {
            return Err(Rejection::IssuerMismatch);
        }
        if let Some(key_issuer) = &key.issuer
            && !issuer_matches(key_issuer, self.tenant, self.iss)
        {
            return Err(Rejection::KeyIssuerMismatch);
        }
        if !key.verify(self.input, self.signature) {
            return Err(Rejection::BadSignature);
        }
        Ok(())
    }
}

/// Whether `iss` is `template` with `{tenantid}` replaced by `tenant` (without allocating).
fn issuer_matches(template: &str, tenant: &str, iss: &str) -> bool {
    match template.split_once("{tenantid}") {
        Some((prefix, suffix)) => iss
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(|t| t == tenant),
        None => template == iss,
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
