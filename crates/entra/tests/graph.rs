//! Client credentials and the Graph client against local stand-ins for Entra's token
//! endpoint and Microsoft Graph.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA256, RsaKeyPair};
use entra::credentials::{
    AppCredential, AppRegistration, AssertionSigner, TokenError, TokenProvider,
};
use entra::graph::{BatchRequest, GraphClient, GraphError, GraphPolicy};
use entra::{Cloud, Endpoints};
use serde_json::json;
use system_tests::fake_graph::FakeMicrosoft;
use uuid::Uuid;

const TENANT: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

struct LocalSigner(RsaKeyPair);

#[async_trait]
impl AssertionSigner for LocalSigner {
    async fn sign_ps256(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut signature = vec![0; self.0.public_modulus_len()];
        self.0
            .sign(
                &RSA_PSS_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|e| e.to_string())?;
        Ok(signature)
    }
}

struct Setup {
    fake: FakeMicrosoft,
    tokens: Arc<TokenProvider>,
    graph: GraphClient,
    app: AppRegistration,
}

async fn setup() -> Setup {
    let fake = FakeMicrosoft::start().await;
    let client_id = Uuid::new_v4();
    fake.register_secret_app(&client_id.to_string(), "s3cret-value");
    fake.add_tenant(TENANT, "Contoso", "contoso.onmicrosoft.com");
    fake.consent(TENANT, &client_id.to_string(), 0);
    let endpoints = Endpoints::new(Some(&fake.login_url), Some(&fake.graph_url)).unwrap();
    let tokens = Arc::new(TokenProvider::new(
        endpoints.clone(),
        Duration::from_secs(5),
    ));
    let policy = GraphPolicy {
        initial_backoff: Duration::from_millis(50),
        total_budget: Duration::from_secs(10),
        ..GraphPolicy::default()
    };
    let graph = GraphClient::new(endpoints, tokens.clone(), policy);
    let app = AppRegistration {
        cloud: Cloud::Global,
        client_id,
        credential: AppCredential::Secret("s3cret-value".into()),
    };
    Setup {
        fake,
        tokens,
        graph,
        app,
    }
}

#[tokio::test]
async fn a_secret_credential_gets_one_token_for_many_concurrent_callers() {
    let s = setup().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let tokens = s.tokens.clone();
        let app = s.app.clone();
        tasks.push(tokio::spawn(async move {
            tokens.graph_token(&app, TENANT).await.unwrap()
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().token.to_string());
    }
    assert_eq!(seen.len(), 1, "one token shared");
    assert_eq!(s.tokens.request_count(), 1, "one request, not twenty");
    let (tenant, form) = &s.fake.token_requests()[0];
    assert_eq!(tenant, TENANT);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert_eq!(form["client_secret"], "s3cret-value");
}

#[tokio::test]
async fn token_endpoint_refusals_are_typed() {
    let s = setup().await;
    let wrong_secret = AppRegistration {
        credential: AppCredential::Secret("wrong".into()),
        ..s.app.clone()
    };
    assert!(matches!(
        s.tokens.graph_token(&wrong_secret, TENANT).await,
        Err(TokenError::InvalidClient(_))
    ));
    let other_tenant = Uuid::new_v4().to_string();
    assert!(matches!(
        s.tokens.graph_token(&s.app, &other_tenant).await,
        Err(TokenError::TenantNotFound(_))
    ));
    s.fake
        .add_tenant(&other_tenant, "Fabrikam", "fabrikam.onmicrosoft.com");
    let err = s
        .tokens
        .graph_token(&s.app, &other_tenant)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::ConsentMissing(_)), "{err:?}");
    s.fake
        .consent(&other_tenant, &s.app.client_id.to_string(), 0);
    s.fake
        .set_app_enabled(&other_tenant, &s.app.client_id.to_string(), false);
    let err = s
        .tokens
        .graph_token(&s.app, &other_tenant)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::AppDisabled(_)), "{err:?}");
    assert!(matches!(
        s.tokens.graph_token(&s.app, "../evil").await,
        Err(TokenError::TenantNotFound(_))
    ));
}

#[tokio::test]
async fn a_certificate_credential_signs_a_ps256_assertion_the_endpoint_verifies() {
    let s = setup().await;
    let key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = key.public_key();
    let certificate_der = b"certificate DER as uploaded to the app registration".to_vec();
    let client_id = Uuid::new_v4();
    s.fake.register_certificate_app(
        &client_id.to_string(),
        &certificate_der,
        public.modulus().big_endian_without_leading_zero(),
        public.exponent().big_endian_without_leading_zero(),
    );
    s.fake.consent(TENANT, &client_id.to_string(), 0);
    let app = AppRegistration {
        cloud: Cloud::Global,
        client_id,
        credential: AppCredential::Certificate {
            certificate_der: Arc::new(certificate_der.clone()),
            signer: Arc::new(LocalSigner(key)),
        },
    };
    let org = s.graph.organization(&app, TENANT).await.unwrap();
    assert_eq!(org["id"], TENANT);
    assert_eq!(org["verifiedDomains"][0]["name"], "contoso.onmicrosoft.com");

    // an assertion for another certificate is refused
    let other = AppRegistration {
        credential: AppCredential::Certificate {
            certificate_der: Arc::new(b"another certificate".to_vec()),
            signer: Arc::new(LocalSigner(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())),
        },
        ..app.clone()
    };
    s.tokens.forget(&app, TENANT);
    assert!(matches!(
        s.tokens
            .graph_token(&other, "contoso.onmicrosoft.com")
            .await,
        Err(TokenError::InvalidClient(_))
    ));
}

#[tokio::test]
async fn each_national_cloud_asks_for_its_own_graph_scope() {
    let s = setup().await;
    for (cloud, scope) in [
        (Cloud::Global, "https://graph.microsoft.com/.default"),
        (Cloud::UsGov, "https://graph.microsoft.us/.default"),
        (Cloud::UsGovDod, "https://dod-graph.microsoft.us/.default"),
        (
            Cloud::China,
            "https://microsoftgraph.chinacloudapi.cn/.default",
        ),
    ] {
        let app = AppRegistration {
            cloud,
            ..s.app.clone()
        };
        s.tokens.graph_token(&app, TENANT).await.unwrap();
        let requests = s.fake.token_requests();
        assert_eq!(requests.last().unwrap().1["scope"], scope, "{cloud}");
    }
    assert_eq!(s.tokens.request_count(), 4, "tokens are cached per cloud");
}

#[tokio::test]
async fn throttling_is_honoured_and_outages_retried_within_the_budget() {
    let s = setup().await;
    s.fake.fail_next(429, 1, Some(1));
    let started = Instant::now();
    s.graph.organization(&s.app, TENANT).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );

    s.fake.fail_next(503, 2, None);
    s.graph.organization(&s.app, TENANT).await.unwrap();

    // five attempts in all (the policy's limit), then a typed error
    s.fake.fail_next(503, 5, None);
    let err = s.graph.organization(&s.app, TENANT).await.unwrap_err();
    assert!(matches!(err, GraphError::Unavailable(_)), "{err:?}");
    s.fake.fail_next(429, 5, Some(0));
    let err = s.graph.organization(&s.app, TENANT).await.unwrap_err();
    assert_eq!(
        err,
        GraphError::Throttled {
            retry_after: Some(Duration::ZERO)
        }
    );
    s.graph
        .organization(&s.app, TENANT)
        .await
        .expect("nothing scripted is left over");
}

#[tokio::test]
async fn not_found_forbidden_and_expired_tokens_are_typed() {
    let s = setup().await;
    let err = s
        .graph
        .user(&s.app, TENANT, "nobody@contoso.com", "id")
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::NotFound(_)), "{err:?}");
    s.fake.fail_next(403, 1, None);
    assert!(matches!(
        s.graph.organization(&s.app, TENANT).await,
        Err(GraphError::Forbidden(_))
    ));
    // a 401 makes the client fetch a fresh token once
    s.graph.organization(&s.app, TENANT).await.unwrap();
    let before = s.tokens.request_count();
    s.fake.fail_next(401, 1, None);
    s.graph.organization(&s.app, TENANT).await.unwrap();
    assert_eq!(s.tokens.request_count(), before + 1);
}

#[tokio::test]
async fn users_are_found_by_guest_and_dollar_upns() {
    let s = setup().await;
    for upn in [
        "ada_gmail.com#EXT#@contoso.onmicrosoft.com",
        "$admin@contoso.com",
        "o'neil@contoso.com",
    ] {
        s.fake.add_user(
            TENANT,
            json!({"id": Uuid::new_v4(), "userPrincipalName": upn, "displayName": upn}),
        );
        let user = s
            .graph
            .user(&s.app, TENANT, upn, "id,userPrincipalName")
            .await
            .unwrap();
        assert_eq!(user["userPrincipalName"], upn);
    }
}

#[tokio::test]
async fn batch_sends_twenty_at_a_time_and_retries_throttled_items() {
    let s = setup().await;
    let mut requests = Vec::new();
    for i in 0..25 {
        let upn = format!("user{i}@contoso.com");
        if i % 5 != 4 {
            s.fake.add_user(
                TENANT,
                json!({"id": Uuid::new_v4(), "userPrincipalName": upn}),
            );
        }
        requests.push(BatchRequest {
            method: "GET".into(),
            url: format!("/users/{upn}"),
            body: None,
        });
    }
    s.fake.throttle_batch_item_once("/users/user3@contoso.com");
    let responses = s.graph.batch(&s.app, TENANT, &requests).await.unwrap();
    assert_eq!(responses.len(), 25);
    for (i, r) in responses.iter().enumerate() {
        let expected = if i % 5 == 4 { 404 } else { 200 };
        assert_eq!(r.status, expected, "item {i}: {:?}", r.body);
        if expected == 200 {
            assert_eq!(
                r.body["userPrincipalName"],
                format!("user{i}@contoso.com"),
                "answers in request order"
            );
        }
    }
    let batches = s
        .fake
        .graph_calls()
        .iter()
        .filter(|c| c.ends_with("/$batch"))
        .count();
    assert_eq!(
        batches, 2,
        "20, then the last 5 with the throttled item riding along"
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_policy_waits_is_never_cut_short() {
    let s = setup().await;
    let graph = GraphClient::new(
        Endpoints::new(Some(&s.fake.login_url), Some(&s.fake.graph_url)).unwrap(),
        s.tokens.clone(),
        GraphPolicy {
            max_retry_after: Duration::from_secs(1),
            total_budget: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            ..GraphPolicy::default()
        },
    );
    let calls = |fake: &FakeMicrosoft, suffix: &str| {
        fake.graph_calls()
            .iter()
            .filter(|c| c.ends_with(suffix))
            .count()
    };
    // Graph asks for 3 s; the policy waits at most 1 s: give up, do not retry at 1 s
    s.fake.fail_next(429, 1, Some(3));
    let err = graph.organization(&s.app, TENANT).await.unwrap_err();
    assert!(err.to_string().contains("throttled"), "{err}");
    assert_eq!(calls(&s.fake, "/organization"), 1, "retried early");

    // the same for one item of a $batch
    s.fake.add_user(
        TENANT,
        json!({"id": Uuid::new_v4(), "userPrincipalName": "ada@contoso.com"}),
    );
    s.fake.throttle_batch_item("/users/ada@contoso.com", 1, 3);
    let responses = graph
        .batch(
            &s.app,
            TENANT,
            &[BatchRequest {
                method: "GET".into(),
                url: "/users/ada@contoso.com".into(),
                body: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(responses[0].status, 429, "answered as throttled");
    assert_eq!(calls(&s.fake, "/$batch"), 1, "item retried early");
}
