//! Onboarding by admin consent, end to end: the built handler on Azurite, with local
//! stand-ins for Entra's token endpoint and Microsoft Graph. The administrator's browser
//! is played by following the redirect by hand and calling back as Microsoft would.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::fake_graph::FakeMicrosoft;
use system_tests::{Azurite, HandlerProcess, run_to_exit, unique_table};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_handler");
const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "test-client-secret";

struct World {
    fake: FakeMicrosoft,
    handler: HandlerProcess,
    prefix: String,
    http: reqwest::Client,
    admin: String,
    data: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

impl World {
    async fn start(extra: &[(&'static str, &str)]) -> World {
        let fake = FakeMicrosoft::start().await;
        fake.register_secret_app(CLIENT_ID, SECRET);
        let data = std::env::temp_dir().join(format!("onboarding-{}", Uuid::new_v4()));
        let prefix = unique_table("o");
        let mut env: Vec<(&str, String)> = vec![
            ("AzureWebJobsStorage", Azurite::shared().connection_string()),
            ("STORAGE_TABLE_PREFIX", prefix.clone()),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.login_url.clone()),
            ("GRAPH_ENDPOINT", fake.graph_url.clone()),
            ("ENTRA_CLIENT_SECRET", SECRET.into()),
            ("ENTRA_DEV_AUTH", "true".into()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
            ("CONSENT_CONFIRM_SECONDS", "5".into()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            if !v.is_empty() {
                env.push((k, v.to_string()));
            }
        }
        let (code, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
        assert_eq!(code, Some(0), "{admin}");
        let handler = HandlerProcess::start(BIN, &["serve"], &env);
        World {
            fake,
            handler,
            prefix,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin: admin.trim().to_string(),
            data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handler.base_url())
    }

    async fn new_link(&self, body: Value) -> Value {
        let response = self
            .http
            .post(self.url("/api/v1/tenants/activation-links"))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    async fn links(&self) -> Vec<Value> {
        let response = self
            .http
            .get(self.url("/api/v1/tenants/activation-links"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()["activation_links"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Opens the link as the administrator's browser would: the answer and its Location.
    async fn open(&self, link: &str) -> (StatusCode, Option<url::Url>, String) {
        let response = self.http.get(link).send().await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| url::Url::parse(l.to_str().unwrap()).unwrap());
        (status, location, response.text().await.unwrap())
    }

    /// The `state` Microsoft would send back for a link.
    async fn state_of(&self, link: &Value) -> String {
        let (status, location, _) = self.open(link["link"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::FOUND);
        let location = location.unwrap();
        let params: HashMap<_, _> = location.query_pairs().into_owned().collect();
        params["state"].clone()
    }

    async fn callback(&self, params: &[(&str, &str)]) -> (StatusCode, String) {
        let url = url::Url::parse_with_params(&self.url("/api/consent/callback"), params).unwrap();
        let response = self.http.get(url).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn tenant(&self, tenant: &str) -> Value {
        let response = self
            .http
            .get(self.url(&format!("/api/v1/tenants/{tenant}")))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }
}

fn success(tenant: &str, state: &str) -> Vec<(&'static str, String)> {
    vec![
        ("admin_consent", "True".into()),
        ("tenant", tenant.into()),
        ("scope", "https://graph.microsoft.com/.default".into()),
        ("state", state.into()),
    ]
}

async fn call(w: &World, params: Vec<(&'static str, String)>) -> (StatusCode, String) {
    let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.callback(&borrowed).await
}

#[tokio::test]
async fn consent_link_is_single_use_and_onboards_the_tenant() {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Contoso <Ltd>", "contoso.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);

    let link = w.new_link(json!({})).await;
    assert_eq!(link["state"], "pending");
    assert_eq!(link["cloud"], "global");
    let url = link["link"].as_str().unwrap();
    assert!(url.starts_with(&w.url("/api/consent/start?link=")), "{url}");

    let (status, location, _) = w.open(url).await;
    assert_eq!(status, StatusCode::FOUND);
    let location = location.unwrap();
    assert_eq!(location.path(), "/organizations/v2.0/adminconsent");
    assert!(location.as_str().starts_with(&w.fake.login_url));
    let params: HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["scope"], "https://graph.microsoft.com/.default");
    assert_eq!(params["redirect_uri"], w.url("/api/consent/callback"));
    let state = params["state"].clone();

    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Contoso &lt;Ltd&gt;") && page.contains(&tenant),
        "{page}"
    );
    assert!(!page.contains("<Ltd>"), "escaped");

    let record = w.tenant(&tenant).await;
    assert_eq!(record["status"], "active");
    assert_eq!(record["added_by"], "admin_consent");
    assert_eq!(record["display_name"], "Contoso <Ltd>");
    assert!(record["consented_at"].is_string());
    let links = w.links().await;
    assert_eq!(links[0]["state"], "used");
    assert_eq!(links[0]["tenant_id"], tenant.as_str());

    // reused link: refused at the start and at the callback
    let (status, _, page) = w.open(url).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("generate a new link"));
    let (status, _) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        !url.contains(&links[0].to_string()),
        "the listing never shows the secret"
    );
    assert!(links[0].get("link").is_none());
}

#[tokio::test]
async fn declined_consent_says_so_and_keeps_the_link() {
    let w = World::start(&[]).await;
    let link = w.new_link(json!({"expires_in_minutes": 30})).await;
    let state = w.state_of(&link).await;
    let (status, page) = call(
        &w,
        vec![
            ("admin_consent", "True".into()),
            ("error", "consent_required".into()),
            (
                "error_description",
                "AADSTS65004: User declined to consent <b>to</b> access the app.".into(),
            ),
            ("state", state),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("Consent was not granted") && page.contains("consent_required"),
        "{page}"
    );
    assert!(
        page.contains("&lt;b&gt;to&lt;/b&gt;") && !page.contains("<b>"),
        "escaped: {page}"
    );
    assert_eq!(w.links().await[0]["state"], "pending");
}

#[tokio::test]
async fn forged_expired_and_revoked_links_are_refused() {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Contoso", "contoso.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let id = link["id"].as_str().unwrap().to_string();
    for forged in [
        format!("{id}.not-the-secret"),
        format!("{}.x", Uuid::new_v4()),
        "garbage".to_string(),
        String::new(),
    ] {
        let (status, page) = call(&w, success(&tenant, &forged)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{forged}: {page}");
        assert!(page.contains("not valid"));
    }
    assert_eq!(
        w.links().await[0]["state"],
        "pending",
        "forgeries do not touch the link"
    );

    // expire the link in storage
    let state = w.state_of(&link).await;
    let table = Azurite::shared()
        .client()
        .table(format!("{}ActivationLinks", w.prefix));
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    table
        .merge(
            &tables::Entity::new("link", id.clone()).with("ExpiresAt", past),
            tables::IfMatch::Any,
        )
        .await
        .unwrap();
    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(
        page.contains("expired") && page.contains("generate a new link"),
        "{page}"
    );
    assert_eq!(w.links().await[0]["state"], "expired");

    let second = w.new_link(json!({})).await;
    let response = w
        .http
        .delete(w.url(&format!(
            "/api/v1/tenants/activation-links/{}",
            second["id"].as_str().unwrap()
        )))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = w.open(second["link"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test]
async fn a_tenant_the_token_endpoint_rejects_is_not_recorded_and_the_link_stays_usable() {
    let w = World::start(&[]).await;
    let link = w.new_link(json!({})).await;
    let state = w.state_of(&link).await;
    let stranger = Uuid::new_v4().to_string();
    let (status, page) = call(&w, success(&stranger, &state)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("could not be confirmed"), "{page}");
    let response = w
        .http
        .get(w.url(&format!("/api/v1/tenants/{stranger}")))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "never trusted the tenant parameter"
    );
    assert_eq!(w.links().await[0]["state"], "pending");
    let (status, _) = call(&w, success("not-a-guid", &state)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn twenty_concurrent_callbacks_on_one_link_give_exactly_one_success() {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Contoso", "contoso.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let state = w.state_of(&link).await;
    let calls = (0..20).map(|_| call(&w, success(&tenant, &state)));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let used = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .count();
    assert_eq!(
        (ok, used),
        (1, 19),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn consent_propagation_is_waited_for_then_left_to_housekeeping() {
    let w = World::start(&[("CONSENT_CONFIRM_SECONDS", "3")]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Slow Corp", "slow.onmicrosoft.com");
    // the first two token requests fail as if consent had not reached the tenant yet
    w.fake.consent(&tenant, CLIENT_ID, 2);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(w.tenant(&tenant).await["status"], "active");

    let late = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&late, "Later Corp", "later.onmicrosoft.com");
    w.fake.consent(&late, CLIENT_ID, 1000);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&late, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{page}");
    assert!(page.contains("Consent recorded"));
    assert_eq!(w.tenant(&late).await["status"], "pending");

    w.fake.consent(&late, CLIENT_ID, 0);
    let timer = r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
    let response = w
        .http
        .post(w.url("/Housekeeping"))
        .body(timer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["Logs"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains("confirmed 1 pending"))),
        "{answer}"
    );
    let record = w.tenant(&late).await;
    assert_eq!(record["status"], "active");
    assert_eq!(record["display_name"], "Later Corp");
}

#[tokio::test]
async fn each_national_cloud_gets_its_own_consent_url() {
    // an app is registered per cloud: China's registration has its own client id here
    let china_app = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let w = World::start(&[("ENTRA_CLIENT_ID_CHINA", china_app)]).await;
    for (cloud, scope, client) in [
        ("global", "https://graph.microsoft.com/.default", CLIENT_ID),
        ("usgov", "https://graph.microsoft.us/.default", CLIENT_ID),
        (
            "usgovdod",
            "https://dod-graph.microsoft.us/.default",
            CLIENT_ID,
        ),
        (
            "china",
            "https://microsoftgraph.chinacloudapi.cn/.default",
            china_app,
        ),
    ] {
        let link = w.new_link(json!({"cloud": cloud})).await;
        assert_eq!(link["cloud"], cloud);
        let (_, location, _) = w.open(link["link"].as_str().unwrap()).await;
        let params: HashMap<_, _> = location.unwrap().query_pairs().into_owned().collect();
        assert_eq!(params["scope"], scope, "{cloud}");
        assert_eq!(params["client_id"], client, "{cloud}");
    }
    for bad in [
        json!({"cloud": "mars"}),
        json!({"expires_in_minutes": 0}),
        json!({"expires_in_minutes": 10081}),
        json!({"colour": 1}),
    ] {
        let response = w
            .http
            .post(w.url("/api/v1/tenants/activation-links"))
            .bearer_auth(&w.admin)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let response = w
        .http
        .get(w.url("/api/v1/tenants/activation-links"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "admin only");
}

#[tokio::test]
async fn without_an_app_credential_the_callback_says_the_service_is_not_ready() {
    let w = World::start(&[("ENTRA_CLIENT_SECRET", "")]).await;
    let tenant = Uuid::new_v4().to_string();
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert_eq!(w.links().await[0]["state"], "pending", "nothing consumed");
}

/// Registers the certificate an export describes with the token-endpoint stand-in.
fn register_certificate(w: &World, client_id: &str, export: &Value) {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(export["certificate_der_base64"].as_str().unwrap())
        .unwrap();
    let b64url = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let jwk = &export["public_key_jwk"];
    w.fake
        .register_certificate_app(client_id, &der, &b64url(&jwk["n"]), &b64url(&jwk["e"]));
}

async fn admin_json(
    w: &World,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = w
        .http
        .request(method.parse().unwrap(), w.url(path))
        .bearer_auth(&w.admin);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_certificate_whose_key_stays_in_the_vault_confirms_consent() {
    let w = World::start(&[("ENTRA_CLIENT_SECRET", "")]).await;
    let (status, missing) = admin_json(&w, "GET", "/api/v1/app-credential/certificate", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, export) = admin_json(
        &w,
        "POST",
        "/api/v1/app-credential/certificate",
        Some(json!({"cloud": "global"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{export}");
    assert!(
        export["certificate_pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(export["client_id"], CLIENT_ID);
    register_certificate(&w, CLIENT_ID, &export);

    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Cert Corp", "cert.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, form) = w.fake.token_requests().last().cloned().unwrap();
    assert!(
        form.contains_key("client_assertion") && !form.contains_key("client_secret"),
        "{form:?}"
    );

    let response = w
        .http
        .get(w.url("/api/v1/app-credential/certificate?cloud=global&format=pem"))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-pem-file");
    assert_eq!(
        response.text().await.unwrap(),
        export["certificate_pem"].as_str().unwrap()
    );
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            export["public_key_jwk"].get(private).is_none(),
            "the private key is never exported"
        );
    }
}

#[tokio::test]
async fn a_customer_owned_app_is_used_for_that_tenants_graph_calls() {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Own App Corp", "own.onmicrosoft.com");
    // the service's app never gets consent there: the tenant uses its own registration
    w.fake.consent(&tenant, CLIENT_ID, 1_000_000);
    let link = w.new_link(json!({})).await;
    let (status, _) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(w.tenant(&tenant).await["status"], "pending");

    let own_app = Uuid::new_v4().to_string();
    let path = format!("/api/v1/tenants/{tenant}/credential-certificate");
    let (status, _) = admin_json(&w, "GET", &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, export) = admin_json(&w, "POST", &path, Some(json!({"client_id": own_app}))).await;
    assert_eq!(status, StatusCode::CREATED, "{export}");
    assert_eq!(export["client_id"], own_app.as_str());
    register_certificate(&w, &own_app, &export);
    w.fake.consent(&tenant, &own_app, 0);
    assert_eq!(w.tenant(&tenant).await["app_client_id"], own_app.as_str());

    let timer = r#"{"Data":{"timer":{"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
    let response = w
        .http
        .post(w.url("/Housekeeping"))
        .body(timer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        w.tenant(&tenant).await["status"],
        "active",
        "confirmed with the tenant's own app"
    );
    let (_, form) = w.fake.token_requests().last().cloned().unwrap();
    assert_eq!(form["client_id"], own_app);
    assert!(form.contains_key("client_assertion"));

    let (status, again) = admin_json(&w, "GET", &path, None).await;
    assert_eq!(
        (status, again["certificate_der_base64"].clone()),
        (StatusCode::OK, export["certificate_der_base64"].clone())
    );
    let (status, _) = admin_json(&w, "POST", &path, Some(json!({"client_id": "not-a-guid"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = admin_json(&w, "DELETE", &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(w.tenant(&tenant).await["app_client_id"].is_null());
    let (status, _) = admin_json(
        &w,
        "POST",
        &format!("/api/v1/tenants/{}/credential-certificate", Uuid::new_v4()),
        Some(json!({"client_id": own_app})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_callback_never_downgrades_or_revives_another_tenant() {
    let w = World::start(&[("CONSENT_CONFIRM_SECONDS", "1")]).await;
    // an active tenant registered by an admin, where the service's app is not consented
    let active = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&active, "Active Corp", "active.onmicrosoft.com");
    let (status, _) = admin_json(
        &w,
        "POST",
        "/api/v1/tenants",
        Some(json!({"tenant_id": active, "display_name": "Active Corp"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let link = w.new_link(json!({})).await;
    let (status, _) = call(&w, success(&active, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let record = w.tenant(&active).await;
    assert_eq!(record["status"], "active", "not downgraded to pending");
    assert_eq!(record["added_by"], "admin_api");

    // an offboarded tenant is not brought back by a consent callback
    let gone = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&gone, "Gone Corp", "gone.onmicrosoft.com");
    w.fake.consent(&gone, CLIENT_ID, 0);
    admin_json(
        &w,
        "POST",
        "/api/v1/tenants",
        Some(json!({"tenant_id": gone, "display_name": "Gone Corp"})),
    )
    .await;
    assert_eq!(
        admin_json(&w, "DELETE", &format!("/api/v1/tenants/{gone}"), None)
            .await
            .0,
        StatusCode::OK
    );
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&gone, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("offboarded"), "{page}");
    assert_eq!(w.tenant(&gone).await["status"], "offboarded");
    let states: Vec<Value> = w.links().await.iter().map(|l| l["state"].clone()).collect();
    assert!(
        states.contains(&json!("pending")),
        "the refused link stays usable: {states:?}"
    );
}

#[tokio::test]
async fn a_certificate_not_yet_uploaded_falls_back_to_the_client_secret() {
    let w = World::start(&[]).await;
    // created in the vault but never uploaded: the app registration knows only the secret
    let (status, _) = admin_json(
        &w,
        "POST",
        "/api/v1/app-credential/certificate",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Patient Corp", "patient.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let forms: Vec<_> = w
        .fake
        .token_requests()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert!(
        forms.iter().any(|f| f.contains_key("client_assertion")),
        "the certificate was tried first"
    );
    assert!(
        forms.last().unwrap().contains_key("client_secret"),
        "then the secret"
    );
}

/// Runs the Housekeeping timer as the Functions host would; its log lines.
async fn housekeeping(w: &World) -> String {
    let timer = r#"{"Data":{"timer":{"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
    let response = w
        .http
        .post(w.url("/Housekeeping"))
        .body(timer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    answer["Logs"].to_string()
}

async fn status_of(w: &World, tenant: &str) -> StatusCode {
    w.http
        .get(w.url(&format!("/api/v1/tenants/{tenant}")))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn an_application_disabled_in_the_tenant_is_a_refusal_that_writes_nothing_and_releases_the_link()
 {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Switched Off Corp", "off.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    // an administrator consented, then disabled the enterprise application
    w.fake.set_app_enabled(&tenant, CLIENT_ID, false);
    let link = w.new_link(json!({})).await;
    let state = w.state_of(&link).await;
    let started = std::time::Instant::now();
    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(
        page.contains("disabled") && page.contains("AADSTS7000112"),
        "the page says why: {page}"
    );
    assert!(page.contains("can still be used"), "{page}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "a refusal is not waited on as if it were propagation"
    );
    assert_eq!(
        status_of(&w, &tenant).await,
        StatusCode::NOT_FOUND,
        "nothing written"
    );
    assert_eq!(
        w.links().await[0]["state"],
        "pending",
        "the link is released"
    );

    // enabled again: the same link onboards the tenant
    w.fake.set_app_enabled(&tenant, CLIENT_ID, true);
    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(w.tenant(&tenant).await["status"], "active");
}

#[tokio::test]
async fn our_own_credential_refused_writes_nothing_releases_the_link_and_says_try_again_later() {
    // the handler holds a secret the app registration does not know: AADSTS7000215
    let wrong = "not-the-registered-secret";
    let w = World::start(&[("ENTRA_CLIENT_SECRET", wrong)]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Patient Corp", "patient.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(page.contains("try again later"), "{page}");
    assert!(
        !page.contains("AADSTS7000215") && !page.contains("secret"),
        "our configuration is not the customer's business: {page}"
    );
    assert_eq!(status_of(&w, &tenant).await, StatusCode::NOT_FOUND);
    assert_eq!(
        w.links().await[0]["state"],
        "pending",
        "the link is released"
    );
    let output = w.handler.output();
    let line = output
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("AADSTS7000215"))
        .unwrap_or_else(|| panic!("logged at error level: {output}"));
    assert!(!output.contains(wrong), "no secret in the logs: {line}");
}

#[tokio::test]
async fn a_consent_never_confirmed_is_dropped_after_consent_pending_minutes_and_its_link_failed() {
    let w = World::start(&[
        ("CONSENT_CONFIRM_SECONDS", "1"),
        ("CONSENT_PENDING_MINUTES", "0"),
    ])
    .await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Never Corp", "never.onmicrosoft.com");
    // consent never reaches the tenant (AADSTS700016 on every token request)
    w.fake.consent(&tenant, CLIENT_ID, u32::MAX);
    let link = w.new_link(json!({})).await;
    let (status, page) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{page}");
    assert_eq!(w.tenant(&tenant).await["status"], "pending");
    assert_eq!(w.links().await[0]["state"], "used");

    let logs = housekeeping(&w).await;
    assert!(logs.contains("dropped 1"), "{logs}");
    assert_eq!(
        status_of(&w, &tenant).await,
        StatusCode::NOT_FOUND,
        "dropped from the registry"
    );
    let links = w.links().await;
    assert_eq!(links[0]["state"], "failed", "{links:?}");
    assert_eq!(links[0]["tenant_id"], tenant.as_str());
    assert!(links[0]["failed_at"].is_string(), "{links:?}");
    let reason = links[0]["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not confirmed") && reason.contains("AADSTS700016"),
        "{reason}"
    );
    assert!(
        w.handler
            .output()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&tenant) && l.contains("dropped")),
        "a warning records the drop"
    );
    let again = housekeeping(&w).await;
    assert!(again.contains("dropped 0"), "{again}");
}

#[tokio::test]
async fn a_pending_consent_within_consent_pending_minutes_is_kept() {
    let w = World::start(&[("CONSENT_CONFIRM_SECONDS", "1")]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Slow Corp", "slow.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, u32::MAX);
    let link = w.new_link(json!({})).await;
    let (status, _) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let logs = housekeeping(&w).await;
    assert!(logs.contains("dropped 0"), "{logs}");
    assert_eq!(w.tenant(&tenant).await["status"], "pending");
    assert_eq!(w.links().await[0]["state"], "used");
}

#[tokio::test]
async fn a_pending_tenants_scim_token_is_refused_until_the_tenant_is_confirmed() {
    let w = World::start(&[("CONSENT_CONFIRM_SECONDS", "1")]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Later Corp", "later.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, u32::MAX);
    let link = w.new_link(json!({})).await;
    let (status, _) = call(&w, success(&tenant, &w.state_of(&link).await)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, issued) = admin_json(
        &w,
        "POST",
        &format!("/api/v1/tenants/{tenant}/scim/token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let users = format!("{}/Users", issued["tenant_url"].as_str().unwrap());
    let token = issued["token"].as_str().unwrap().to_string();
    let get = || w.http.get(users.as_str()).bearer_auth(&token).send();
    assert_eq!(
        get().await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "a pending tenant is not active"
    );
    w.fake.consent(&tenant, CLIENT_ID, 0);
    assert!(housekeeping(&w).await.contains("confirmed 1"));
    assert_eq!(get().await.unwrap().status(), StatusCode::OK, "active now");
}

#[tokio::test]
async fn graph_refusing_our_request_is_our_side_not_propagation() {
    let w = World::start(&[("CONSENT_CONFIRM_SECONDS", "5")]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Strict Corp", "strict.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let link = w.new_link(json!({})).await;
    let state = w.state_of(&link).await;
    // the token is issued, but Graph answers /organization with a plain 400
    w.fake.fail_next(400, 1, None);
    let started = std::time::Instant::now();
    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(page.contains("try again later"), "{page}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "not waited on as propagation"
    );
    assert_eq!(status_of(&w, &tenant).await, StatusCode::NOT_FOUND);
    assert_eq!(w.links().await[0]["state"], "pending");
    let (status, page) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::OK, "the released link works: {page}");
}

impl World {
    async fn audit(&self, tenant: &str, query: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(&format!("/api/v1/tenants/{tenant}/audit?{query}")))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()["events"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[tokio::test]
async fn consent_confirmations_declines_and_links_are_audited() {
    let w = World::start(&[]).await;
    let tenant = Uuid::new_v4().to_string();
    w.fake
        .add_tenant(&tenant, "Fabrikam", "fabrikam.onmicrosoft.com");
    w.fake.consent(&tenant, CLIENT_ID, 0);
    let declined = w.new_link(json!({})).await;
    let state = w.state_of(&declined).await;
    let (status, _) = call(
        &w,
        vec![
            ("error", "consent_required".into()),
            (
                "error_description",
                "AADSTS65004: User declined to consent.".into(),
            ),
            ("state", state),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let link = w.new_link(json!({})).await;
    let state = w.state_of(&link).await;
    let (status, _) = call(&w, success(&tenant, &state)).await;
    assert_eq!(status, StatusCode::OK);

    let confirmed = w.audit(&tenant, "action=consent.").await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    assert_eq!(confirmed[0]["action"], "consent.confirm");
    assert_eq!(confirmed[0]["actor"]["kind"], "tenant-admin");
    assert_eq!(confirmed[0]["target"]["display"], "Fabrikam");
    // a decline names no tenant: the service's own trail keeps it, with Microsoft's reason
    let service = w.audit(ADMIN_TENANT, "").await;
    let decline = service
        .iter()
        .find(|e| e["action"] == "consent.decline")
        .expect("the decline is an event");
    assert_eq!(decline["outcome"]["status"], "failure");
    assert_eq!(decline["outcome"]["code"], "consent_required");
    assert!(
        decline["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("AADSTS65004")
    );
    let links = service
        .iter()
        .filter(|e| e["action"] == "activation_link.create")
        .count();
    assert_eq!(links, 2);
}
