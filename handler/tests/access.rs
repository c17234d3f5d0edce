//! Connector API access control, end to end: the built handler, a real Azurite, and a local
//! stand-in for Entra's login endpoints serving the keys that sign the tests' tokens.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::fake_entra::{self, FakeEntra};
use system_tests::{Azurite, HandlerProcess, run_to_exit, unique_table};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_handler");
const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

struct World {
    fake: FakeEntra,
    handler: HandlerProcess,
    env: Vec<(&'static str, String)>,
    http: reqwest::Client,
    admin: String,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn base_env(fake: &FakeEntra) -> Vec<(&'static str, String)> {
    vec![
        ("AzureWebJobsStorage", Azurite::shared().connection_string()),
        ("STORAGE_TABLE_PREFIX", unique_table("a")),
        ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
        ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
        ("ENTRA_LOGIN_ENDPOINT", fake.base_url.clone()),
        ("CONNECTOR_SCOPES", "records.read,records.write".into()),
    ]
}

impl World {
    async fn start() -> World {
        let fake = FakeEntra::start(fake_entra::GLOBAL).await;
        let env = base_env(&fake);
        let handler = HandlerProcess::start(BIN, &["serve"], &env);
        let admin = World::admin_token(&fake, &["Integration.Manage"]);
        World {
            fake,
            handler,
            env,
            http: reqwest::Client::new(),
            admin,
        }
    }

    /// The settings the handler runs with (same storage prefix: a second instance).
    fn handler_env(&self) -> Vec<(&'static str, String)> {
        self.env.clone()
    }

    fn admin_token(fake: &FakeEntra, roles: &[&str]) -> String {
        let claims = json!({
            "aud": CLIENT_ID, "iss": fake.issuer(true, ADMIN_TENANT), "tid": ADMIN_TENANT, "ver": "2.0",
            "iat": now(), "nbf": now(), "exp": now() + 3600, "oid": Uuid::new_v4(), "sub": "admin",
            "azp": Uuid::new_v4(), "scp": "user_impersonation", "roles": roles, "name": "Operator",
        });
        fake.sign(&fake.first_kid(), json!({}), &claims)
    }

    /// A delegated (user) v2 token.
    fn user_token(&self, tenant: Uuid, oid: Uuid, azp: Uuid) -> String {
        let claims = json!({
            "aud": CLIENT_ID, "iss": self.fake.issuer(true, &tenant.to_string()), "tid": tenant, "ver": "2.0",
            "iat": now(), "nbf": now(), "exp": now() + 3600, "oid": oid, "sub": "s",
            "azp": azp, "scp": "records.read", "name": "Ada", "upn": "ada@contoso.com",
        });
        self.fake.sign(&self.fake.first_kid(), json!({}), &claims)
    }

    /// An app-only v1 token.
    fn app_token(&self, tenant: Uuid, appid: Uuid, oid: Uuid) -> String {
        let claims = json!({
            "aud": CLIENT_ID, "iss": self.fake.issuer(false, &tenant.to_string()), "tid": tenant, "ver": "1.0",
            "iat": now(), "nbf": now(), "exp": now() + 3600, "oid": oid, "sub": oid,
            "appid": appid, "appidacr": "2", "idtyp": "app", "roles": ["Records.Read.All"],
        });
        self.fake.sign(&self.fake.first_kid(), json!({}), &claims)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let url = format!("{}{path}", self.handler.base_url());
        let mut request = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, b, _) = self.call(method, path, Some(&self.admin), body).await;
        (s, b)
    }

    async fn register(&self, cloud: &str) -> Uuid {
        let tenant = Uuid::new_v4();
        let (status, body) = self
            .admin(
                "POST",
                "/api/v1/tenants",
                Some(json!({"tenant_id": tenant, "display_name": "Contoso", "cloud": cloud})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tenant
    }

    async fn grant(&self, body: Value) -> Value {
        let (status, body) = self
            .admin("POST", "/api/v1/access/grants", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn ping(&self, token: &str) -> (StatusCode, Value) {
        let (s, b, _) = self.call("GET", "/api/ping", Some(token), None).await;
        (s, b)
    }
}

#[tokio::test]
async fn admin_endpoints_require_the_admin_role_from_the_home_tenant() {
    let w = World::start().await;
    let (status, _, headers) = w.call("GET", "/api/v1/tenants", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let (status, body, headers) = w
        .call("GET", "/api/v1/tenants", Some("not.a.token"), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    assert!(headers.contains_key("www-authenticate"));

    let no_role = World::admin_token(&w.fake, &["Something.Else"]);
    let (status, body, _) = w.call("GET", "/api/v1/tenants", Some(&no_role), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role"))
    );

    // the role in a customer tenant's token does not make an admin
    let customer = w.register("global").await;
    let claims = json!({
        "aud": CLIENT_ID, "iss": w.fake.issuer(true, &customer.to_string()), "tid": customer, "ver": "2.0",
        "iat": now(), "nbf": now(), "exp": now() + 3600, "oid": Uuid::new_v4(), "sub": "x",
        "azp": Uuid::new_v4(), "scp": "user_impersonation", "roles": ["Integration.Manage"],
    });
    let foreign = w.fake.sign(&w.fake.first_kid(), json!({}), &claims);
    let (status, _, _) = w.call("GET", "/api/v1/tenants", Some(&foreign), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = w.call("GET", "/api/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "health stays anonymous");
}

#[tokio::test]
async fn tenant_registry_registers_lists_and_offboards() {
    let w = World::start().await;
    let tenant = Uuid::new_v4();
    let new = json!({"tenant_id": tenant, "display_name": "Fabrikam", "cloud": "usgov"});
    let (status, created) = w.admin("POST", "/api/v1/tenants", Some(new.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["cloud"], "usgov");
    assert_eq!(created["added_by"], "admin_api");
    let (status, body) = w.admin("POST", "/api/v1/tenants", Some(new)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );

    for (bad, needle) in [
        (
            json!({"tenant_id": "contoso.com", "display_name": "x"}),
            "GUID",
        ),
        (
            json!({"tenant_id": Uuid::new_v4(), "display_name": "x", "cloud": "mars"}),
            "cloud",
        ),
        (
            json!({"tenant_id": Uuid::new_v4(), "display_name": "  "}),
            "display_name",
        ),
        (
            json!({"tenant_id": Uuid::new_v4(), "display_name": "x", "colour": "red"}),
            "unknown field",
        ),
        (json!({"display_name": "x"}), "tenant_id"),
    ] {
        let (status, body) = w.admin("POST", "/api/v1/tenants", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{bad}: {body}"
        );
    }
    let (status, _, _) = w
        .call("POST", "/api/v1/tenants", Some(&w.admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "empty body");

    let (_, list) = w.admin("GET", "/api/v1/tenants", None).await;
    assert!(
        list["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tenant_id"] == json!(tenant))
    );
    let (status, one) = w
        .admin("GET", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(
        (status, one["display_name"].as_str()),
        (StatusCode::OK, Some("Fabrikam"))
    );
    let (status, _) = w
        .admin("GET", &format!("/api/v1/tenants/{}", Uuid::new_v4()), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = w.admin("GET", "/api/v1/tenants/not-a-guid", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, gone) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(
        (status, gone["status"].as_str()),
        (StatusCode::OK, Some("offboarded"))
    );
    assert!(gone["offboarded_at"].is_string());
    let (_, still) = w
        .admin("GET", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(still["status"], "offboarded", "kept for audit");
}

#[tokio::test]
async fn service_principal_access_is_exactly_its_grant() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let app = Uuid::new_v4();
    let grant = w
        .grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    assert_eq!(grant["client_id"], json!(app));
    assert!(grant["last_used_at"].is_null());

    let (status, body) = w.ping(&w.app_token(tenant, app, Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"tenant_id": tenant, "principal": {"kind": "service_principal", "id": app}, "scopes": ["records.read"]})
    );

    let (status, body) = w
        .ping(&w.app_token(tenant, Uuid::new_v4(), Uuid::new_v4()))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_grant"))
    );

    // the last use shows up without being on the request path
    let grant_path = format!("/api/v1/access/grants/{}", grant["id"].as_str().unwrap());
    let mut last_used = Value::Null;
    for _ in 0..50 {
        last_used = w.admin("GET", &grant_path, None).await.1["last_used_at"].clone();
        if last_used.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last_used.is_string(), "last_used_at recorded");
}

#[tokio::test]
async fn a_user_token_never_uses_a_service_principal_grant_and_the_reverse() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let app = Uuid::new_v4();
    let user = Uuid::new_v4();
    w.grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    w.grant(json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.write"]}))
        .await;
    let (status, body, _) = w
        .call(
            "PUT",
            &format!("/api/v1/tenants/{tenant}/employees/E-1"),
            Some(&w.admin),
            Some(json!({
                "object_id": user, "positions": [{"title": "Clerk", "start": "2020-01-01"}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // a user signed in through the granted app is still a user: matched on oid, not azp
    let (status, body) = w.ping(&w.user_token(tenant, Uuid::new_v4(), app)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_grant"))
    );
    // an app-only token whose oid equals the granted user's is still a service principal
    let (status, body) = w.ping(&w.app_token(tenant, Uuid::new_v4(), user)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_grant"))
    );
    let (status, body) = w.ping(&w.user_token(tenant, user, Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["principal"], json!({"kind": "user", "id": user}));
    assert_eq!(body["scopes"], json!(["records.write"]));
}

#[tokio::test]
async fn a_user_needs_an_active_position_even_with_a_grant() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let user = Uuid::new_v4();
    w.grant(
        json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.read"]}),
    )
    .await;
    let token = w.user_token(tenant, user, Uuid::new_v4());
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_active_employment"))
    );

    let employee = format!("/api/v1/tenants/{tenant}/employees/emp%2F42");
    let ended = json!({"object_id": user, "positions": [{"title": "Clerk", "start": "2020-01-01", "end": "2021-12-31"}]});
    let (status, body, _) = w.call("PUT", &employee, Some(&w.admin), Some(ended)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["employee_id"], "emp/42");
    assert_eq!(body["active"], false);
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_active_employment"))
    );

    let current = json!({"object_id": user, "positions": [
        {"title": "Clerk", "start": "2020-01-01", "end": "2021-12-31"},
        {"title": "Manager", "start": "2022-01-01"}
    ]});
    let (status, body, _) = w
        .call("PUT", &employee, Some(&w.admin), Some(current))
        .await;
    assert_eq!(
        (status, body["active"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "takes effect at once on this instance: {body}"
    );

    let (status, body, _) = w
        .call("PUT", &employee, Some(&w.admin), Some(json!({"object_id": user, "positions": [{"title": "X", "start": "2024-02-01", "end": "2024-01-01"}]})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = w.call("DELETE", &employee, Some(&w.admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_active_employment"))
    );
}

#[tokio::test]
async fn revoking_a_grant_or_offboarding_the_tenant_takes_effect_at_once() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let app = Uuid::new_v4();
    let grant = w
        .grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    let token = w.app_token(tenant, app, Uuid::new_v4());
    assert_eq!(w.ping(&token).await.0, StatusCode::OK);
    let path = format!("/api/v1/access/grants/{}", grant["id"].as_str().unwrap());
    let (status, _) = w.admin("DELETE", &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_grant")),
        "revoked grant"
    );
    assert_eq!(w.admin("GET", &path, None).await.0, StatusCode::NOT_FOUND);

    let again = w
        .grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    assert_eq!(w.ping(&token).await.0, StatusCode::OK);
    let (status, _) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = w.ping(&token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("tenant_inactive")),
        "offboarded tenant"
    );
    let (_, kept) = w
        .admin(
            "GET",
            &format!("/api/v1/access/grants/{}", again["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(
        kept["revoked_at"].is_string(),
        "grant revoked and kept: {kept}"
    );
}

#[tokio::test]
async fn tokens_of_unregistered_tenants_and_invalid_tokens_get_401() {
    let w = World::start().await;
    let stranger = Uuid::new_v4();
    let (status, body, headers) = w
        .call(
            "GET",
            "/api/ping",
            Some(&w.app_token(stranger, Uuid::new_v4(), Uuid::new_v4())),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) = w.call("GET", "/api/ping", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = w.ping("eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0.").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["message"], "the token is not valid for this service",
        "no detail for an attacker"
    );
}

#[tokio::test]
async fn grants_are_checked_and_unique_per_principal() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let user = Uuid::new_v4();
    for (bad, needle) in [
        (
            json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.delete"]}),
            "unknown scope",
        ),
        (
            json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": []}),
            "at least one",
        ),
        (
            json!({"tenant_id": tenant, "kind": "robot", "object_id": user, "scopes": ["records.read"]}),
            "kind",
        ),
        (
            json!({"tenant_id": tenant, "kind": "user", "client_id": user, "scopes": ["records.read"]}),
            "object_id",
        ),
        (
            json!({"tenant_id": tenant, "kind": "user", "object_id": "ada@contoso.com", "scopes": ["records.read"]}),
            "GUID",
        ),
        (
            json!({"tenant_id": Uuid::new_v4(), "kind": "user", "object_id": user, "scopes": ["records.read"]}),
            "not registered",
        ),
    ] {
        let (status, body) = w
            .admin("POST", "/api/v1/access/grants", Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{bad}: {body}"
        );
    }
    let grant = w.grant(json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.read"]})).await;
    let (status, body) = w
        .admin("POST", "/api/v1/access/grants", Some(json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.write"]})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(grant["id"].as_str().unwrap())
    );

    let path = format!("/api/v1/access/grants/{}", grant["id"].as_str().unwrap());
    let (status, updated) = w
        .admin(
            "PUT",
            &path,
            Some(json!({"scopes": ["records.write", "records.read"]})),
        )
        .await;
    assert_eq!(
        (status, updated["scopes"].clone()),
        (StatusCode::OK, json!(["records.write", "records.read"]))
    );
    let (status, _) = w
        .admin("PUT", &path, Some(json!({"scopes": ["nope"]})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let other = w.register("global").await;
    w.grant(
        json!({"tenant_id": other, "kind": "user", "object_id": user, "scopes": ["records.read"]}),
    )
    .await;
    let (_, filtered) = w
        .admin(
            "GET",
            &format!("/api/v1/access/grants?tenant_id={tenant}"),
            None,
        )
        .await;
    assert_eq!(filtered["grants"].as_array().unwrap().len(), 1);
    let (status, _) = w
        .admin("GET", "/api/v1/access/grants?tenant_id=zzz", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = w
        .admin(
            "GET",
            &format!("/api/v1/access/grants/{}", Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn validate_token_shows_identity_claims_or_why_not() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let user = Uuid::new_v4();
    let token = w.user_token(tenant, user, Uuid::new_v4());
    let (status, body) = w
        .admin(
            "POST",
            "/api/v1/entra-id/validate-token",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["valid"], true);
    let payload = &body["payload"];
    assert_eq!(payload["oid"], json!(user));
    assert_eq!(payload["tid"], json!(tenant));
    assert_eq!(payload["scp"], "records.read");
    assert_eq!(payload["upn"], "ada@contoso.com");
    assert!(
        payload.get("aud").is_none() && payload.get("email").is_none(),
        "only the listed claims, absent ones omitted"
    );

    let expired_claims = json!({
        "aud": CLIENT_ID, "iss": w.fake.issuer(true, &tenant.to_string()), "tid": tenant, "ver": "2.0",
        "iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 3600, "oid": user, "scp": "records.read",
    });
    let expired = w.fake.sign(&w.fake.first_kid(), json!({}), &expired_claims);
    let (status, body) = w
        .admin(
            "POST",
            "/api/v1/entra-id/validate-token",
            Some(json!({"token": expired})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["valid"], false);
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let (status, _) = w
        .admin(
            "POST",
            "/api/v1/entra-id/validate-token",
            Some(json!({"jwt": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = w
        .call(
            "POST",
            "/api/v1/entra-id/validate-token",
            None,
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "admin only");
}

#[tokio::test]
async fn development_tokens_work_only_with_dev_auth_and_never_in_azure() {
    let fake = FakeEntra::start(fake_entra::GLOBAL).await;
    let data = std::env::temp_dir().join(format!("dev-auth-{}", Uuid::new_v4()));
    let mut env = base_env(&fake);
    env.push(("LOCAL_DATA_DIR", data.display().to_string()));
    env.push(("ENTRA_DEV_AUTH", "true".into()));
    let (code, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
    assert_eq!(code, Some(0), "{admin}");
    let admin = admin.trim().to_string();
    let handler = HandlerProcess::start(BIN, &["serve"], &env);
    let http = reqwest::Client::new();
    let list = |token: String| {
        let http = http.clone();
        let url = format!("{}/api/v1/tenants", handler.base_url());
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(list(admin.clone()).await, StatusCode::OK);

    let tenant = Uuid::new_v4();
    let created = http
        .post(format!("{}/api/v1/tenants", handler.base_url()))
        .bearer_auth(&admin)
        .json(&json!({"tenant_id": tenant, "display_name": "Local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let client = Uuid::new_v4().to_string();
    http.post(format!("{}/api/v1/access/grants", handler.base_url()))
        .bearer_auth(&admin)
        .json(&json!({"tenant_id": tenant, "kind": "service_principal", "client_id": client, "scopes": ["records.read"]}))
        .send()
        .await
        .unwrap();
    let (code, sp) = run_to_exit(
        BIN,
        &[
            "dev-token",
            "service-principal",
            "--tenant",
            &tenant.to_string(),
            "--client-id",
            &client,
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{sp}");
    let ping = http
        .get(format!("{}/api/ping", handler.base_url()))
        .bearer_auth(sp.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    drop(handler);

    // the same token against a handler without dev auth
    let without: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| *k != "ENTRA_DEV_AUTH")
        .cloned()
        .collect();
    let strict = HandlerProcess::start(BIN, &["serve"], &without);
    let status = http
        .get(format!("{}/api/v1/tenants", strict.base_url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut azure = env.clone();
    azure.push(("WEBSITE_INSTANCE_ID", "abc123".into()));
    let (code, output) = run_to_exit(BIN, &["serve"], &azure);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("ENTRA_DEV_AUTH"), "{output}");
    // Flex Consumption sets no WEBSITE_INSTANCE_ID; its markers refuse minting all the same,
    // even with settings that are otherwise valid in Azure
    let mut flex = without.clone();
    flex.extend([
        ("WEBSITE_SKU", "FlexConsumption".to_string()),
        ("CONTAINER_NAME", "entracon-abc123".to_string()),
        ("LEGION_SERVICE_HOST", "10.0.0.1".to_string()),
        ("KEY_VAULT_URI", "https://kv.vault.azure.net/".to_string()),
        (
            "PUBLIC_BASE_URL",
            "https://connector.example.com".to_string(),
        ),
    ]);
    let (code, output) = run_to_exit(BIN, &["dev-token", "admin"], &flex);
    // (the output is a token when this fails: not echoed)
    assert_ne!(
        code,
        Some(0),
        "dev-token minted a token in a Flex environment"
    );
    assert!(output.contains("never minted in Azure"), "{output}");
    let (code, _) = run_to_exit(BIN, &["dev-token", "user"], &env);
    assert_eq!(code, Some(2), "a user token needs --tenant and --object-id");
    std::fs::remove_dir_all(&data).ok();
}

#[tokio::test]
async fn another_instance_sees_a_revocation_within_30_seconds() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let app = Uuid::new_v4();
    let grant = w
        .grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    // a second instance on the same storage, with the first one's settings
    let other = HandlerProcess::start(BIN, &["serve"], &w.handler_env());
    let token = w.app_token(tenant, app, Uuid::new_v4());
    let ping_other = || {
        let http = w.http.clone();
        let url = format!("{}/api/ping", other.base_url());
        let token = token.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        ping_other().await,
        StatusCode::OK,
        "the other instance has cached the grant"
    );

    let revoked_at = std::time::Instant::now();
    let (status, _) = w
        .admin(
            "DELETE",
            &format!("/api/v1/access/grants/{}", grant["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    while ping_other().await == StatusCode::OK {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(30),
            "still accepted after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(ping_other().await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn deleting_an_old_revoked_grant_keeps_the_new_grant_unique() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let user = Uuid::new_v4();
    let body =
        json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.read"]});
    let old = w.grant(body.clone()).await;
    assert_eq!(
        w.admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = w
        .admin(
            "POST",
            "/api/v1/tenants",
            Some(json!({"tenant_id": tenant, "display_name": "Back again"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an offboarded tenant registers again"
    );
    let new = w.grant(body.clone()).await;
    let (status, _) = w
        .admin(
            "DELETE",
            &format!("/api/v1/access/grants/{}", old["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, conflict) = w.admin("POST", "/api/v1/access/grants", Some(body)).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "still one grant per principal: {conflict}"
    );
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains(new["id"].as_str().unwrap())
    );
    let (status, _) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "offboarding again works");
    let (_, kept) = w
        .admin(
            "GET",
            &format!("/api/v1/access/grants/{}", new["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(kept["revoked_at"].is_string(), "{kept}");
}

impl World {
    /// The storage table prefix the handler runs with.
    fn prefix(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| *k == "STORAGE_TABLE_PREFIX")
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    /// A new SCIM Secret Token for a tenant: (status, token).
    async fn scim_token(&self, tenant: Uuid) -> (StatusCode, Option<String>) {
        let (status, body) = self
            .admin(
                "POST",
                &format!("/api/v1/tenants/{tenant}/scim/token"),
                None,
            )
            .await;
        (status, body["token"].as_str().map(str::to_string))
    }

    /// `GET /Users` and `POST /Users` on a tenant's SCIM endpoint with a token.
    async fn scim_read_and_write(&self, tenant: Uuid, token: &str) -> (StatusCode, StatusCode) {
        let base = format!("{}/api/scim/{tenant}/v2", self.handler.base_url());
        let read = self
            .http
            .get(format!("{base}/Users"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        let user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "externalId": Uuid::new_v4().to_string(),
            "userName": format!("{}@contoso.com", Uuid::new_v4().simple()),
            "active": true,
        });
        let write = self
            .http
            .post(format!("{base}/Users"))
            .bearer_auth(token)
            .header("content-type", "application/scim+json")
            .body(user.to_string())
            .send()
            .await
            .unwrap()
            .status();
        (read, write)
    }
}

#[tokio::test]
async fn offboarded_tenant_scim_token_is_refused_even_after_a_racing_token_create() {
    let world = World::start().await;
    let w = &world;
    for round in 0..6 {
        let tenant = w.register("global").await;
        let (status, first) = w.scim_token(tenant).await;
        assert_eq!(status, StatusCode::CREATED);
        let mut tokens = vec![first.unwrap()];
        assert_eq!(
            w.scim_read_and_write(tenant, &tokens[0]).await,
            (StatusCode::OK, StatusCode::CREATED),
            "the token works while the tenant is active"
        );
        // token creations spread over the offboarding's whole duration
        let creates = futures::future::join_all((0..12u64).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            w.scim_token(tenant).await
        }));
        let offboard = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            w.admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
                .await
        };
        let (created, (status, body)) = tokio::join!(creates, offboard);
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        for (status, token) in created {
            assert!(
                [StatusCode::CREATED, StatusCode::CONFLICT].contains(&status),
                "round {round}: {status}"
            );
            tokens.extend(token);
        }
        assert_eq!(
            w.scim_token(tenant).await.0,
            StatusCode::CONFLICT,
            "no token for an offboarded tenant"
        );
        for token in &tokens {
            assert_eq!(
                w.scim_read_and_write(tenant, token).await,
                (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED),
                "round {round}: a token the offboarded tenant got still works"
            );
        }
    }

    // The worst interleaving (a create that checked the status before the offboarding
    // and wrote after it revoked the token) needs the create to stall between its read and
    // its write, which an idle machine rarely does; play its outcome every run: the token
    // row written back after the offboarding.
    let tenant = w.register("global").await;
    let (_, token) = w.scim_token(tenant).await;
    let token = token.unwrap();
    let scim_table = Azurite::shared()
        .client()
        .table(format!("{}ScimResources", w.prefix()));
    let row = scim_table
        .get(&tenant.to_string(), "scim-token")
        .await
        .unwrap();
    let (status, _) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        scim_table
            .try_get(&tenant.to_string(), "scim-token")
            .await
            .unwrap()
            .is_none(),
        "offboarding revoked the token"
    );
    scim_table.upsert_replace(&row).await.unwrap();
    assert_eq!(
        w.scim_read_and_write(tenant, &token).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED),
        "a token written after the offboarding is refused"
    );
}

#[tokio::test]
async fn offboarding_that_fails_half_way_refuses_the_tenant_and_a_retry_completes_it() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let app = Uuid::new_v4();
    let grant = w
        .grant(json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
        .await;
    let (_, token) = w.scim_token(tenant).await;
    let token = token.unwrap();
    // a grant row this version cannot read makes revoking the tenant's grants fail
    let grants = Azurite::shared()
        .client()
        .table(format!("{}Grants", w.prefix()));
    let broken = tables::Entity::new(tenant.to_string(), format!("grant-{}", Uuid::new_v4()))
        .with("Kind", "service_principal");
    grants.insert(&broken).await.unwrap();

    let (status, body) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert!(!status.is_success(), "a step failed: {status} {body}");
    let (_, record) = w
        .admin("GET", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(record["status"], "offboarded", "the status came first");
    assert_eq!(
        w.scim_read_and_write(tenant, &token).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED),
        "the SCIM token is refused though the grants step failed"
    );
    let ping = w.app_token(tenant, app, Uuid::new_v4());
    assert_eq!(w.ping(&ping).await.0, StatusCode::FORBIDDEN);

    // the fault is repaired; offboarding again completes what was left undone
    grants
        .delete(&broken.partition_key, &broken.row_key, tables::IfMatch::Any)
        .await
        .unwrap();
    let (status, body) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "offboarded");
    assert_eq!(body["revoked_grants"], 1, "{body}");
    let (_, kept) = w
        .admin(
            "GET",
            &format!("/api/v1/access/grants/{}", grant["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(kept["revoked_at"].is_string(), "{kept}");
    // and once more: nothing left to do, still a success
    let (status, body) = w
        .admin("DELETE", &format!("/api/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(
        (status, body["revoked_grants"].clone()),
        (StatusCode::OK, json!(0))
    );
    // the SCIM token was revoked, not merely refused: registering again does not revive it
    w.admin(
        "POST",
        "/api/v1/tenants",
        Some(json!({"tenant_id": tenant, "display_name": "Back again"})),
    )
    .await;
    assert_eq!(
        w.scim_read_and_write(tenant, &token).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test]
async fn an_employee_id_too_long_to_store_is_a_400_and_a_corrupt_record_a_500() {
    let w = World::start().await;
    let tenant = w.register("global").await;
    let user = Uuid::new_v4();
    let record =
        json!({"object_id": user, "positions": [{"title": "Clerk", "start": "2020-01-01"}]});
    let long = format!("/api/v1/tenants/{tenant}/employees/{}", "e".repeat(1100));
    let (status, body, _) = w
        .call("PUT", &long, Some(&w.admin), Some(record.clone()))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );
    let (status, _, _) = w.call("GET", &long, Some(&w.admin), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // a record this service could not have written: its positions are not JSON
    w.grant(
        json!({"tenant_id": tenant, "kind": "user", "object_id": user, "scopes": ["records.read"]}),
    )
    .await;
    let prefix = &w
        .env
        .iter()
        .find(|(k, _)| *k == "STORAGE_TABLE_PREFIX")
        .unwrap()
        .1;
    let table = Azurite::shared()
        .client()
        .table(format!("{prefix}Employees"));
    table
        .upsert_replace(
            &tables::Entity::new(tenant.to_string(), format!("object-{user}"))
                .with("EmployeeId", "E-1")
                .with("ObjectId", user.to_string())
                .with("Positions", "[{not json")
                .with("UpdatedAt", time::OffsetDateTime::now_utc()),
        )
        .await
        .unwrap();
    let token = w.user_token(tenant, user, Uuid::new_v4());
    let (status, body) = w.ping(&token).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "internal_error");
}
