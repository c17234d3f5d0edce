//! A local stand-in for the Entra login endpoints: OpenID configuration for v1 and v2 at
//! `common`, `organizations` and tenant paths, and JWK sets with `issuer` fields, served
//! over loopback http with keys the tests control. Shapes follow Microsoft's documents.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

/// The issuers one cloud's metadata names (templates with `{tenantid}`).
#[derive(Debug, Clone)]
pub struct CloudIssuers {
    /// The cloud's real authority, used in the `jwks_uri` the metadata names.
    pub authority: &'static str,
    pub v1: &'static str,
    pub v2: &'static str,
}

/// Microsoft's published issuers per cloud.
pub const GLOBAL: CloudIssuers = CloudIssuers {
    authority: "https://login.microsoftonline.com",
    v1: "https://sts.windows.net/{tenantid}/",
    v2: "https://login.microsoftonline.com/{tenantid}/v2.0",
};
pub const US_GOV: CloudIssuers = CloudIssuers {
    authority: "https://login.microsoftonline.us",
    v1: "https://sts.windows.net/{tenantid}/",
    v2: "https://login.microsoftonline.us/{tenantid}/v2.0",
};
pub const CHINA: CloudIssuers = CloudIssuers {
    authority: "https://login.partner.microsoftonline.cn",
    v1: "https://sts.chinacloudapi.cn/{tenantid}/",
    v2: "https://login.partner.microsoftonline.cn/{tenantid}/v2.0",
};

struct Key {
    pair: RsaKeyPair,
    /// Overrides the key's `issuer` field (None: the cloud's template for the key set).
    issuer: Option<String>,
}

struct State {
    issuers: CloudIssuers,
    keys: Mutex<BTreeMap<String, Arc<Key>>>,
    down: AtomicBool,
    key_fetches: AtomicU64,
    metadata_fetches: AtomicU64,
}

/// The running stand-in.
pub struct FakeEntra {
    pub base_url: String,
    state: Arc<State>,
}

fn random_kid() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    URL_SAFE_NO_PAD.encode(bytes)
}

impl FakeEntra {
    /// Starts on a free loopback port with one signing key.
    pub async fn start(issuers: CloudIssuers) -> FakeEntra {
        let state = Arc::new(State {
            issuers,
            keys: Mutex::new(BTreeMap::new()),
            down: AtomicBool::new(false),
            key_fetches: AtomicU64::new(0),
            metadata_fetches: AtomicU64::new(0),
        });
        let fake_state = state.clone();
        let routes = warp::get()
            .and(warp::path::full())
            .map(move |path: warp::path::FullPath| respond(&fake_state, path.as_str()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        let fake = FakeEntra {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
        };
        fake.add_key();
        fake
    }

    /// Adds a new signing key (key rotation) and returns its kid.
    pub fn add_key(&self) -> String {
        self.add_key_with_issuer(None)
    }

    /// Adds a key whose JWK `issuer` field is the given string.
    pub fn add_key_with_issuer(&self, issuer: Option<String>) -> String {
        let kid = random_kid();
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
        self.state
            .keys
            .lock()
            .unwrap()
            .insert(kid.clone(), Arc::new(Key { pair, issuer }));
        kid
    }

    /// Removes a key from the published set.
    pub fn remove_key(&self, kid: &str) {
        self.state.keys.lock().unwrap().remove(kid);
    }

    /// The kid of the oldest published key.
    pub fn first_kid(&self) -> String {
        self.state
            .keys
            .lock()
            .unwrap()
            .keys()
            .next()
            .cloned()
            .expect("a key")
    }

    /// Makes every endpoint answer 503 (Microsoft unreachable) or serve again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Key-set requests served so far.
    pub fn key_fetches(&self) -> u64 {
        self.state.key_fetches.load(Ordering::SeqCst)
    }

    /// Metadata requests served so far.
    pub fn metadata_fetches(&self) -> u64 {
        self.state.metadata_fetches.load(Ordering::SeqCst)
    }

    /// The issuer for a tenant, as tokens of this cloud carry it.
    pub fn issuer(&self, v2: bool, tenant: &str) -> String {
        let template = if v2 {
            self.state.issuers.v2
        } else {
            self.state.issuers.v1
        };
        template.replace("{tenantid}", tenant)
    }

    /// Signs an RS256 token with `kid` (which must be published or have been).
    pub fn sign(&self, kid: &str, header_extra: Value, claims: &Value) -> String {
        let key = self
            .state
            .keys
            .lock()
            .unwrap()
            .get(kid)
            .cloned()
            .expect("signing with a known kid");
        sign_with(&key.pair, kid, header_extra, claims)
    }
}

/// Signs a compact RS256 JWS with any key pair (also used to forge tokens in tests).
pub fn sign_with(pair: &RsaKeyPair, kid: &str, header_extra: Value, claims: &Value) -> String {
    let mut header = json!({"typ": "JWT", "alg": "RS256", "x5t": kid, "kid": kid});
    if let (Some(h), Some(extra)) = (header.as_object_mut(), header_extra.as_object()) {
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
    }
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()));
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        token.as_bytes(),
        &mut signature,
    )
    .expect("signing");
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

fn respond(state: &State, path: &str) -> warp::reply::Response {
    use warp::Reply as _;
    if state.down.load(Ordering::SeqCst) {
        return warp::reply::with_status("unavailable", StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let json_reply = |v: Value| warp::reply::json(&v).into_response();
    match segments.as_slice() {
        [_tenant, ".well-known", "openid-configuration"] => {
            state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
            json_reply(metadata(state, false))
        }
        [_tenant, "v2.0", ".well-known", "openid-configuration"] => {
            state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
            json_reply(metadata(state, true))
        }
        ["common", "discovery", "keys"] => {
            state.key_fetches.fetch_add(1, Ordering::SeqCst);
            json_reply(key_set(state, false))
        }
        ["common", "discovery", "v2.0", "keys"] => {
            state.key_fetches.fetch_add(1, Ordering::SeqCst);
            json_reply(key_set(state, true))
        }
        _ => warp::reply::with_status("not found", StatusCode::NOT_FOUND).into_response(),
    }
}

fn metadata(state: &State, v2: bool) -> Value {
    let a = state.issuers.authority;
    if v2 {
        json!({
            "token_endpoint": format!("{a}/common/oauth2/v2.0/token"),
            "jwks_uri": format!("{a}/common/discovery/v2.0/keys"),
            "issuer": state.issuers.v2,
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": null,
        })
    } else {
        json!({
            "token_endpoint": format!("{a}/common/oauth2/token"),
            "jwks_uri": format!("{a}/common/discovery/keys"),
            "issuer": state.issuers.v1,
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

fn key_set(state: &State, v2: bool) -> Value {
    let keys = state.keys.lock().unwrap();
    let template = if v2 {
        state.issuers.v2
    } else {
        state.issuers.v1
    };
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, key)| {
            let public = key.pair.public_key();
            json!({
                "kty": "RSA", "use": "sig", "kid": kid, "x5t": kid,
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                "x5c": [],
                "issuer": key.issuer.clone().unwrap_or_else(|| template.to_string()),
            })
        })
        .collect();
    json!({ "keys": keys })
}
