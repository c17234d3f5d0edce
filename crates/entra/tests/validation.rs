//! Token validation against a local stand-in for the Entra login endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entra::{
    Cloud, Endpoints, KeyCachePolicy, Rejection, TenantLookup, TokenVersion, Validator,
    ValidatorConfig,
};
use serde_json::{Value, json};
use system_tests::fake_entra::{self, CloudIssuers, FakeEntra};
use uuid::Uuid;

const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const APP_ID_URI: &str = "api://entra-connector";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9";

struct Tenants(HashMap<Uuid, Cloud>);

#[async_trait]
impl TenantLookup for Tenants {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        Ok(self.0.get(&tenant_id).copied())
    }
}

fn tenants(cloud: Cloud) -> Tenants {
    Tenants(HashMap::from([
        (Uuid::parse_str(TENANT).unwrap(), cloud),
        (Uuid::parse_str(OTHER_TENANT).unwrap(), cloud),
    ]))
}

fn validator(fake: &FakeEntra, cooldown: Duration) -> Validator {
    Validator::new(ValidatorConfig {
        audiences: vec![CLIENT_ID.into(), APP_ID_URI.into()],
        leeway: Duration::from_secs(60),
        keys: KeyCachePolicy {
            refresh_cooldown: cooldown,
            fetch_timeout: Duration::from_secs(2),
            ..KeyCachePolicy::default()
        },
        cache_capacity: 1000,
        endpoints: Endpoints::new(Some(&fake.base_url), None).unwrap(),
        dev_key: None,
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A v2 delegated token's claims, as Entra issues them.
fn v2_claims(fake: &FakeEntra) -> Value {
    json!({
        "aud": CLIENT_ID, "iss": fake.issuer(true, TENANT), "iat": now() - 10, "nbf": now() - 10, "exp": now() + 3600,
        "aio": "AXQAi/8UAAAA", "azp": "1950a258-227b-4e31-a9cf-717495945fc2", "azpacr": "0",
        "name": "Ada Lovelace", "oid": "8f2b5e0a-1a7c-4c52-9a0e-2f3f6c1f7d11", "preferred_username": "ada@contoso.com",
        "rh": "0.ARoAv4j5cvGGr0GRqy180BHbR", "scp": "records.read", "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": TENANT, "uti": "fqiBqXLPj0eQa82S-IYFAA", "ver": "2.0",
    })
}

/// A v1 app-only token's claims.
fn v1_claims(fake: &FakeEntra) -> Value {
    json!({
        "aud": APP_ID_URI, "iss": fake.issuer(false, TENANT), "iat": now() - 10, "nbf": now() - 10, "exp": now() + 3600,
        "appid": "0f8fad5b-d9cb-469f-a165-70867728950e", "appidacr": "2", "idp": fake.issuer(false, TENANT),
        "idtyp": "app", "oid": "4d8f4c36-3b9a-4a2c-9d9f-2b1c1a2f3e4d", "roles": ["Records.Read.All"],
        "sub": "4d8f4c36-3b9a-4a2c-9d9f-2b1c1a2f3e4d", "tid": TENANT, "ver": "1.0",
    })
}

async fn setup(issuers: CloudIssuers) -> (FakeEntra, Validator) {
    let fake = FakeEntra::start(issuers).await;
    let v = validator(&fake, Duration::from_secs(30));
    (fake, v)
}

async fn check(v: &Validator, token: &str) -> Result<Arc<entra::ValidatedToken>, Rejection> {
    v.validate(token, &tenants(Cloud::Global)).await
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, val) in changes.as_object().unwrap() {
        if val.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = val.clone();
        }
    }
    claims
}

#[tokio::test]
async fn v2_delegated_and_v1_app_only_tokens_validate() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    let user = check(&v, &fake.sign(&kid, json!({}), &v2_claims(&fake)))
        .await
        .unwrap();
    assert_eq!(user.version, TokenVersion::V2);
    assert!(user.is_delegated() && !user.is_app_only());
    assert_eq!(user.scopes(), ["records.read"]);
    assert_eq!(user.cloud, Some(Cloud::Global));

    let app = check(&v, &fake.sign(&kid, json!({}), &v1_claims(&fake)))
        .await
        .unwrap();
    assert_eq!(app.version, TokenVersion::V1);
    assert!(app.is_app_only() && !app.is_delegated());
    assert_eq!(
        app.client_app(),
        Some("0f8fad5b-d9cb-469f-a165-70867728950e")
    );
    // roles without scp and without idtyp is app-only too
    let no_idtyp = with(v1_claims(&fake), json!({"idtyp": null}));
    assert!(
        check(&v, &fake.sign(&kid, json!({}), &no_idtyp))
            .await
            .unwrap()
            .is_app_only()
    );
}

#[tokio::test]
async fn alg_none_and_hs256_with_the_public_key_are_rejected() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v2_claims(&fake)).unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        check(&v, &format!("{none_header}.{claims}."))
            .await
            .unwrap_err(),
        Rejection::Algorithm
    );

    // the classic confusion: HMAC keyed with the published RSA public key
    let kid = fake.first_kid();
    let hs_header = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"alg":"HS256","typ":"JWT","kid":kid})).unwrap());
    let input = format!("{hs_header}.{claims}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, kid.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()));
    assert_eq!(
        check(&v, &format!("{input}.{tag}")).await.unwrap_err(),
        Rejection::Algorithm
    );
    let rs_lower = fake.sign(&kid, json!({"alg": "rs256"}), &v2_claims(&fake));
    assert_eq!(
        check(&v, &rs_lower).await.unwrap_err(),
        Rejection::Algorithm
    );
}

#[tokio::test]
async fn key_urls_and_embedded_keys_in_the_header_are_never_followed() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    for (name, value) in [
        ("jku", json!("https://evil.example/keys")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("jwk", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
        ("x5c", json!(["MIIB"])),
    ] {
        let token = fake.sign(&kid, json!({ name: value }), &v2_claims(&fake));
        assert!(
            matches!(check(&v, &token).await, Err(Rejection::ForbiddenHeader(_))),
            "{name}"
        );
    }
}

#[tokio::test]
async fn unknown_and_path_like_kids_are_rejected_without_fetching_anything_odd() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    check(&v, &fake.sign(&kid, json!({}), &v2_claims(&fake)))
        .await
        .unwrap();

    let stranger =
        aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let forged = fake_entra::sign_with(&stranger, "not-published", json!({}), &v2_claims(&fake));
    assert_eq!(check(&v, &forged).await.unwrap_err(), Rejection::UnknownKid);
    // a forged token that names a real kid fails on the signature
    let forged_kid = fake_entra::sign_with(&stranger, &kid, json!({}), &v2_claims(&fake));
    assert_eq!(
        check(&v, &forged_kid).await.unwrap_err(),
        Rejection::BadSignature
    );

    let fetches = fake.key_fetches();
    for bad in ["../../etc/passwd", "a/b", "k?x=1", "%2e%2e", ""] {
        let token = fake_entra::sign_with(&stranger, bad, json!({}), &v2_claims(&fake));
        assert_eq!(
            check(&v, &token).await.unwrap_err(),
            Rejection::BadKid,
            "{bad:?}"
        );
    }
    assert_eq!(
        fake.key_fetches(),
        fetches,
        "a malformed kid triggers no fetch"
    );
}

#[tokio::test]
async fn time_claims_are_required_and_checked_with_the_leeway() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    let sign = |changes: Value| fake.sign(&kid, json!({}), &with(v2_claims(&fake), changes));
    assert_eq!(
        check(&v, &sign(json!({"exp": now() - 61})))
            .await
            .unwrap_err(),
        Rejection::Expired
    );
    assert!(
        check(&v, &sign(json!({"exp": now() - 30}))).await.is_ok(),
        "inside the 60 s leeway"
    );
    assert_eq!(
        check(&v, &sign(json!({"nbf": now() + 120})))
            .await
            .unwrap_err(),
        Rejection::NotYetValid
    );
    assert_eq!(
        check(&v, &sign(json!({"exp": null}))).await.unwrap_err(),
        Rejection::MissingClaim("exp")
    );
    assert_eq!(
        check(&v, &sign(json!({"nbf": null}))).await.unwrap_err(),
        Rejection::MissingClaim("nbf")
    );
    let string_exp = sign(json!({"exp": (now() + 3600).to_string()}));
    assert_eq!(
        check(&v, &string_exp).await.unwrap_err(),
        Rejection::BadClaim("exp")
    );
}

#[tokio::test]
async fn audiences_other_than_ours_and_graph_tokens_are_rejected() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    let sign = |changes: Value| fake.sign(&kid, json!({}), &with(v2_claims(&fake), changes));
    assert_eq!(
        check(&v, &sign(json!({"aud": "api://someone-else"})))
            .await
            .unwrap_err(),
        Rejection::WrongAudience
    );
    for graph in [
        "00000003-0000-0000-c000-000000000000",
        "https://graph.microsoft.com",
    ] {
        assert_eq!(
            check(&v, &sign(json!({"aud": graph}))).await.unwrap_err(),
            Rejection::GraphAudience
        );
    }
    let with_nonce = fake.sign(&kid, json!({"nonce": "abc"}), &v2_claims(&fake));
    assert_eq!(
        check(&v, &with_nonce).await.unwrap_err(),
        Rejection::GraphAudience
    );
    assert!(
        check(&v, &sign(json!({"aud": APP_ID_URI}))).await.is_ok(),
        "the App ID URI is ours too"
    );
    assert!(check(&v, &sign(json!({"aud": [CLIENT_ID]}))).await.is_ok());
    assert_eq!(
        check(&v, &sign(json!({"aud": [CLIENT_ID, "x"]})))
            .await
            .unwrap_err(),
        Rejection::BadClaim("aud")
    );
}

#[tokio::test]
async fn the_issuer_must_be_the_tokens_own_tenant_and_the_tenant_must_be_known() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    let sign = |changes: Value| fake.sign(&kid, json!({}), &with(v2_claims(&fake), changes));
    let other_issuer = sign(json!({"iss": fake.issuer(true, OTHER_TENANT)}));
    assert_eq!(
        check(&v, &other_issuer).await.unwrap_err(),
        Rejection::IssuerMismatch
    );
    let v1_issuer_on_v2 = sign(json!({"iss": fake.issuer(false, TENANT)}));
    assert_eq!(
        check(&v, &v1_issuer_on_v2).await.unwrap_err(),
        Rejection::IssuerMismatch
    );
    let unregistered = Uuid::new_v4().to_string();
    let stranger = sign(json!({"tid": unregistered, "iss": fake.issuer(true, &unregistered)}));
    assert_eq!(
        check(&v, &stranger).await.unwrap_err(),
        Rejection::UnknownTenant
    );
    assert_eq!(
        check(&v, &sign(json!({"tid": "common"})))
            .await
            .unwrap_err(),
        Rejection::BadClaim("tid")
    );
    assert_eq!(
        check(&v, &sign(json!({"tid": null}))).await.unwrap_err(),
        Rejection::MissingClaim("tid")
    );
}

#[tokio::test]
async fn a_key_may_only_sign_for_its_own_issuer() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let narrow = fake.add_key_with_issuer(Some(format!(
        "https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"
    )));
    let token = fake.sign(&narrow, json!({}), &v2_claims(&fake));
    assert_eq!(
        check(&v, &token).await.unwrap_err(),
        Rejection::KeyIssuerMismatch
    );
    let for_other = with(
        v2_claims(&fake),
        json!({"tid": OTHER_TENANT, "iss": fake.issuer(true, OTHER_TENANT)}),
    );
    assert!(
        check(&v, &fake.sign(&narrow, json!({}), &for_other))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn each_national_cloud_accepts_its_own_issuers_only() {
    for (cloud, issuers) in [
        (Cloud::Global, fake_entra::GLOBAL),
        (Cloud::UsGov, fake_entra::US_GOV),
        (Cloud::UsGovDod, fake_entra::US_GOV),
        (Cloud::China, fake_entra::CHINA),
    ] {
        let fake = FakeEntra::start(issuers).await;
        let v = validator(&fake, Duration::from_secs(30));
        let kid = fake.first_kid();
        for claims in [v2_claims(&fake), v1_claims(&fake)] {
            let token = fake.sign(&kid, json!({}), &claims);
            let ok = v
                .validate(&token, &tenants(cloud))
                .await
                .unwrap_or_else(|e| panic!("{cloud}: {e}"));
            assert_eq!(ok.cloud, Some(cloud));
        }
        let global_issuer = with(
            v2_claims(&fake),
            json!({"iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0")}),
        );
        let token = fake.sign(&kid, json!({}), &global_issuer);
        let outcome = v.validate(&token, &tenants(cloud)).await;
        assert_eq!(
            outcome.is_ok(),
            cloud == Cloud::Global,
            "{cloud}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn key_rotation_is_picked_up_with_one_shared_fetch() {
    // RSA key generation can take longer than the cooldown: do it before the clock matters
    let stranger =
        aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let fake = FakeEntra::start(fake_entra::GLOBAL).await;
    let cooldown = Duration::from_secs(1);
    let v = Arc::new(validator(&fake, cooldown));
    let old = fake.first_kid();
    check(&v, &fake.sign(&old, json!({}), &v2_claims(&fake)))
        .await
        .unwrap();
    let before = fake.key_fetches();

    let new = fake.add_key();
    let tokens: Vec<String> = (0..50)
        .map(|i| {
            fake.sign(
                &new,
                json!({}),
                &with(v2_claims(&fake), json!({"uti": format!("u{i}")})),
            )
        })
        .collect();
    let forged: Vec<String> = (0..5)
        .map(|i| {
            fake_entra::sign_with(
                &stranger,
                &format!("rotating-attacker-{i}"),
                json!({}),
                &v2_claims(&fake),
            )
        })
        .collect();
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    // 50 concurrent requests with distinct tokens signed by the new key
    let mut tasks = Vec::new();
    for token in tokens {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            v.validate(&token, &tenants(Cloud::Global)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.key_fetches() - before, 1, "one fetch, not a stampede");

    // within the cooldown, unknown kids do not fetch again
    for token in &forged {
        assert_eq!(check(&v, token).await.unwrap_err(), Rejection::UnknownKid);
    }
    assert_eq!(fake.key_fetches() - before, 1, "cooldown holds");
}

#[tokio::test]
async fn cached_keys_keep_working_while_microsoft_is_unreachable() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let kid = fake.first_kid();
    check(&v, &fake.sign(&kid, json!({}), &v2_claims(&fake)))
        .await
        .unwrap();
    fake.set_down(true);
    let fresh = fake.sign(
        &kid,
        json!({}),
        &with(v2_claims(&fake), json!({"uti": "another"})),
    );
    assert!(
        check(&v, &fresh).await.is_ok(),
        "warm cache validates new tokens"
    );

    // a cold validator cannot validate, and says so as its own fault, not the token's
    let cold = validator(&fake, Duration::from_secs(30));
    let err = check(&cold, &fresh).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.code(), "temporarily_unavailable");
}

#[tokio::test]
async fn repeated_tokens_are_served_from_the_cache() {
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let token = fake.sign(&fake.first_kid(), json!({}), &v2_claims(&fake));
    let first = check(&v, &token).await.unwrap();
    fake.set_down(true);
    let fetches = fake.key_fetches();
    for _ in 0..100 {
        assert!(Arc::ptr_eq(&first, &check(&v, &token).await.unwrap()));
    }
    assert_eq!(fake.key_fetches(), fetches);
    assert_eq!(fake.metadata_fetches(), 1, "metadata fetched once");
}

#[tokio::test]
async fn a_cold_start_with_microsoft_down_fails_fast_with_one_fetch() {
    let fake = FakeEntra::start(fake_entra::GLOBAL).await;
    fake.set_down(true);
    let v = Arc::new(validator(&fake, Duration::from_secs(30)));
    let token = fake.sign(&fake.first_kid(), json!({}), &v2_claims(&fake));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let v = v.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            v.validate(&token, &tenants(Cloud::Global)).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap_err().is_unavailable());
    }
    assert_eq!(fake.metadata_fetches(), 0, "the stand-in was down");
    assert_eq!(
        v.key_source(Cloud::Global, TokenVersion::V2).fetch_count(),
        1,
        "one attempt, shared"
    );
}

/// Counts lookups: each one may be a storage read in the service.
struct CountingTenants {
    known: Tenants,
    lookups: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl TenantLookup for CountingTenants {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.known.cloud_of(tenant_id).await
    }
}

#[tokio::test]
async fn forged_tokens_are_refused_before_the_tenant_is_looked_up() {
    let stranger =
        aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let (fake, v) = setup(fake_entra::GLOBAL).await;
    let tenants = CountingTenants {
        known: tenants(Cloud::Global),
        lookups: Default::default(),
    };
    let lookups = || tenants.lookups.load(std::sync::atomic::Ordering::SeqCst);
    let kid = fake.first_kid();
    for i in 0..50 {
        let tid = Uuid::new_v4().to_string();
        let claims = with(
            v2_claims(&fake),
            json!({"tid": tid, "iss": fake.issuer(true, &tid)}),
        );
        let unknown_kid =
            fake_entra::sign_with(&stranger, &format!("forged-{i}"), json!({}), &claims);
        assert_eq!(
            v.validate(&unknown_kid, &tenants).await.unwrap_err(),
            Rejection::UnknownKid
        );
        let real_kid = fake_entra::sign_with(&stranger, &kid, json!({}), &claims);
        assert_eq!(
            v.validate(&real_kid, &tenants).await.unwrap_err(),
            Rejection::BadSignature
        );
    }
    assert_eq!(lookups(), 0, "no forged token cost a tenant lookup");

    // a token Microsoft signed is looked up: an unknown tenant is refused after that
    let tid = Uuid::new_v4().to_string();
    let signed = fake.sign(
        &kid,
        json!({}),
        &with(
            v2_claims(&fake),
            json!({"tid": tid, "iss": fake.issuer(true, &tid)}),
        ),
    );
    assert_eq!(
        v.validate(&signed, &tenants).await.unwrap_err(),
        Rejection::UnknownTenant
    );
    assert_eq!(lookups(), 1);
}
