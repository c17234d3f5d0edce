//! The SCIM test harness: the built handler on Azurite with a registered tenant and its
//! Secret Token, and the request shapes Entra sends.
#![allow(dead_code)] // each test file uses its own part

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Azurite, HandlerProcess, run_to_exit, unique_table};
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_handler");
pub const SCIM: &str = "application/scim+json; charset=utf-8";

pub struct Scim {
    pub handler: HandlerProcess,
    pub http: reqwest::Client,
    pub admin: String,
    pub tenant: Uuid,
    pub token: String,
    pub base: String,
    /// STORAGE_TABLE_PREFIX: the handler's tables are `<prefix>ScimResources` and so on.
    pub prefix: String,
    /// The Azurite the handler's `AzureWebJobsStorage` names.
    pub storage: Azurite,
    data: std::path::PathBuf,
}

impl Drop for Scim {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

/// A handler's settings on `storage`, its tables named after `prefix`, its local data
/// (the vault) in `data`.
fn handler_env(
    storage: &Azurite,
    prefix: &str,
    data: &std::path::Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("AzureWebJobsStorage", storage.connection_string()),
        ("STORAGE_TABLE_PREFIX", prefix.to_string()),
        (
            "ENTRA_CLIENT_ID",
            "6e74172b-be56-4843-9ff4-e66a39bb12e3".into(),
        ),
        (
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        ),
        ("ENTRA_DEV_AUTH", "true".into()),
        ("LOCAL_DATA_DIR", data.display().to_string()),
        ("CONNECTOR_SCOPES", "records.read".into()),
    ]
}

impl Scim {
    /// A second handler on this one's tables and vault (another instance of the same
    /// deployment): the default settings of [`Scim::start`] and `extra`, not those this
    /// one was started with.
    pub fn twin(&self, extra: Vec<(&'static str, String)>) -> HandlerProcess {
        let mut env = handler_env(&self.storage, &self.prefix, &self.data);
        env.extend(extra);
        HandlerProcess::start(BIN, &["serve"], &env)
    }

    pub async fn start() -> Scim {
        Scim::start_with(Vec::new()).await
    }

    /// [`Scim::start`] with more settings (later ones win).
    pub async fn start_with(extra: Vec<(&'static str, String)>) -> Scim {
        Scim::start_on(Azurite::shared().clone(), extra).await
    }

    /// [`Scim::start_with`] on `storage` instead of the shared Azurite (e.g. one with a
    /// queue service of its own: [`Azurite::with_own_queues`]).
    pub async fn start_on(storage: Azurite, extra: Vec<(&'static str, String)>) -> Scim {
        let data = std::env::temp_dir().join(format!("scim-{}", Uuid::new_v4()));
        let prefix = unique_table("s");
        let mut env = handler_env(&storage, &prefix, &data);
        env.extend(extra);
        let (_, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
        let handler = HandlerProcess::start(BIN, &["serve"], &env);
        let http = reqwest::Client::new();
        let admin = admin.trim().to_string();
        let tenant = Uuid::new_v4();
        let r = http
            .post(format!("{}/api/v1/tenants", handler.base_url()))
            .bearer_auth(&admin)
            .json(&json!({"tenant_id": tenant, "display_name": "Contoso"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = http
            .post(format!(
                "{}/api/v1/tenants/{tenant}/scim/token",
                handler.base_url()
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let answer: Value = r.json().await.unwrap();
        let base = answer["tenant_url"].as_str().unwrap().to_string();
        assert_eq!(base, format!("{}/api/scim/{tenant}/v2", handler.base_url()));
        Scim {
            token: answer["token"].as_str().unwrap().to_string(),
            handler,
            http,
            admin,
            tenant,
            base,
            prefix,
            storage,
            data,
        }
    }

    /// An admin API call under `/api/v1/tenants/{tenant}/scim/`.
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!(
            "{}/api/v1/tenants/{}/scim/{path}",
            self.handler.base_url(),
            self.tenant
        );
        let mut request = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, &self.token).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (StatusCode, Value) {
        self.send(method, path, body, token, None).await
    }

    /// A SCIM call carrying `If-Match`.
    pub async fn call_if_match(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: &str,
    ) -> (StatusCode, Value) {
        self.send(method, path, body, &self.token, Some(if_match))
            .await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
        if_match: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        if let Some(body) = body {
            request = request.header("content-type", SCIM).body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }
}

impl Scim {
    /// The handler's SCIM table, read and written directly in Azurite.
    pub fn scim_table(&self) -> tables::Table {
        self.storage
            .client()
            .table(format!("{}ScimResources", self.prefix))
    }

    /// Runs the Housekeeping timer function once, as the Functions host would; answers
    /// its log lines.
    pub async fn housekeeping(&self) -> Vec<String> {
        let timer = r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
        let response = self
            .http
            .post(format!("{}/Housekeeping", self.handler.base_url()))
            .header("content-type", "application/json")
            .body(timer)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["Logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap_or_default().to_string())
            .collect()
    }
}

pub fn entra_user(user_name: &str, external_id: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": external_id,
        "userName": user_name,
        "active": true,
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Ada Lovelace", "familyName": "Lovelace", "givenName": "Ada"},
        "roles": [],
    })
}

pub fn filter(expression: &str) -> String {
    format!("/Users?filter={}", percent_encode(expression))
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
