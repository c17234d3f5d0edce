//! Local stand-ins for Entra's token endpoint (client credentials with a secret or a
//! certificate assertion) and for Microsoft Graph (`/organization`, users, `$batch`), with
//! scripted throttling and outages. Formats follow Microsoft's documentation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

/// A registered app's credential as the fake knows it.
#[derive(Clone)]
enum Credential {
    Secret(String),
    /// base64url SHA-256 of the certificate, and the RSA public key (n, e).
    Certificate {
        thumbprint: String,
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

#[derive(Default)]
struct Tenant {
    name: String,
    domain: String,
    /// client id -> token requests still refused (consent propagating)
    consented: HashMap<String, u32>,
    /// client ids whose service principal an administrator disabled in the tenant
    disabled: HashSet<String>,
    users: Vec<Value>,
}

#[derive(Default)]
struct State {
    apps: HashMap<String, Credential>,
    tenants: HashMap<String, Tenant>,
    issued: HashMap<String, (String, String)>,
    token_requests: Vec<(String, HashMap<String, String>)>,
    /// scripted answers for the next Graph requests: (status, Retry-After seconds)
    graph_failures: VecDeque<(u16, Option<u64>)>,
    /// batch item urls answered 429 once
    throttle_items: HashSet<String>,
    graph_calls: Vec<String>,
}

/// The token endpoint and Graph stand-ins: one loopback server each.
pub struct FakeMicrosoft {
    pub login_url: String,
    pub graph_url: String,
    state: Arc<Mutex<State>>,
    graph_requests: Arc<AtomicU64>,
}

fn json_response(status: u16, body: Value) -> Response {
    use warp::Reply as _;
    warp::reply::with_status(
        warp::reply::json(&body),
        StatusCode::from_u16(status).unwrap(),
    )
    .into_response()
}

/// A token-endpoint error as Microsoft's identity platform answers it: the OAuth `error`,
/// `error_description` starting with the AADSTS code and ending with trace, correlation
/// and time lines, the numeric `error_codes`, and the same ids again as fields.
fn aad_error(status: u16, error: &str, code: &str, text: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let timestamp = "2026-11-26 00:00:00Z";
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"),
            "error_codes": [code.trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", code.trim_start_matches("AADSTS")),
        }),
    )
}

impl FakeMicrosoft {
    /// Starts both servers on free loopback ports.
    pub async fn start() -> FakeMicrosoft {
        let state: Arc<Mutex<State>> = Arc::default();
        let graph_requests = Arc::new(AtomicU64::new(0));

        let token_state = state.clone();
        let token = warp::post()
            .and(warp::path!(String / "oauth2" / "v2.0" / "token"))
            .and(warp::body::form::<HashMap<String, String>>())
            .map(move |tenant: String, form: HashMap<String, String>| {
                issue_token(&token_state, &tenant, form)
            });
        let login = bind(token).await;

        let graph_state = state.clone();
        let counter = graph_requests.clone();
        let graph = warp::path("v1.0")
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      auth: Option<String>,
                      body: bytes::Bytes| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    graph_request(
                        &graph_state,
                        method.as_str(),
                        path.as_str(),
                        &query,
                        auth.as_deref(),
                        &body,
                    )
                },
            );
        let graph = bind(graph).await;
        FakeMicrosoft {
            login_url: login,
            graph_url: graph,
            state,
            graph_requests,
        }
    }

    /// Registers an app with a client secret.
    pub fn register_secret_app(&self, client_id: &str, secret: &str) {
        self.state
            .lock()
            .unwrap()
            .apps
            .insert(client_id.into(), Credential::Secret(secret.into()));
    }

    /// Registers an app with a certificate (its DER and RSA public key).
    pub fn register_certificate_app(
        &self,
        client_id: &str,
        certificate_der: &[u8],
        n: &[u8],
        e: &[u8],
    ) {
        let thumbprint = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            certificate_der,
        ));
        self.state.lock().unwrap().apps.insert(
            client_id.into(),
            Credential::Certificate {
                thumbprint,
                n: n.to_vec(),
                e: e.to_vec(),
            },
        );
    }

    /// Creates a tenant with one verified domain.
    pub fn add_tenant(&self, tenant_id: &str, name: &str, domain: &str) {
        self.state.lock().unwrap().tenants.insert(
            tenant_id.into(),
            Tenant {
                name: name.into(),
                domain: domain.into(),
                ..Tenant::default()
            },
        );
    }

    /// Consents `client_id` in the tenant; the first `delay` token requests still fail
    /// (Microsoft's consent propagation).
    pub fn consent(&self, tenant_id: &str, client_id: &str, delay: u32) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            t.consented.insert(client_id.into(), delay);
        }
    }

    /// Disables or enables `client_id`'s service principal in the tenant (an administrator
    /// switching the enterprise application off or on); while disabled, token requests get
    /// AADSTS7000112.
    pub fn set_app_enabled(&self, tenant_id: &str, client_id: &str, enabled: bool) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            if enabled {
                t.disabled.remove(client_id);
            } else {
                t.disabled.insert(client_id.into());
            }
        }
    }

    /// Adds a user to a tenant (a Graph user object).
    pub fn add_user(&self, tenant_id: &str, user: Value) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            t.users.push(user);
        }
    }

    /// The next Graph requests get these statuses (with an optional Retry-After).
    pub fn fail_next(&self, status: u16, times: usize, retry_after: Option<u64>) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..times {
            s.graph_failures.push_back((status, retry_after));
        }
    }

    /// A `$batch` item with this url is answered 429 (Retry-After 1) the first time.
    pub fn throttle_batch_item_once(&self, url: &str) {
        self.state.lock().unwrap().throttle_items.insert(url.into());
    }

    /// Token requests seen: (tenant path segment, form fields).
    pub fn token_requests(&self) -> Vec<(String, HashMap<String, String>)> {
        self.state.lock().unwrap().token_requests.clone()
    }

    /// Graph HTTP requests served.
    pub fn graph_requests(&self) -> u64 {
        self.graph_requests.load(Ordering::SeqCst)
    }

    /// Graph request paths seen (batch items included, prefixed `batch `).
    pub fn graph_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().graph_calls.clone()
    }
}

async fn bind<F>(filter: F) -> String
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(filter).incoming(listener).run());
    format!("http://127.0.0.1:{port}")
}

fn issue_token(state: &Mutex<State>, tenant: &str, form: HashMap<String, String>) -> Response {
    let mut s = state.lock().unwrap();
    s.token_requests.push((tenant.to_string(), form.clone()));
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003",
            "The app requested an unsupported grant type.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(credential) = s.apps.get(&client_id).cloned() else {
        return aad_error(
            400,
            "unauthorized_client",
            "AADSTS700016",
            "Application with identifier was not found in the directory.",
        );
    };
    let identifier_is_valid = uuid::Uuid::try_parse(tenant).is_ok()
        || (tenant.contains('.')
            && tenant.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !identifier_is_valid {
        return aad_error(
            400,
            "invalid_request",
            "AADSTS900023",
            &format!(
                "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."
            ),
        );
    }
    let Some(tenant_id) = s
        .tenants
        .iter()
        .find(|(id, t)| id.as_str() == tenant || t.domain.eq_ignore_ascii_case(tenant))
        .map(|(id, _)| id.clone())
    else {
        return aad_error(
            400,
            "invalid_request",
            "AADSTS90002",
            &format!("Tenant '{tenant}' not found."),
        );
    };
    match credential {
        Credential::Secret(secret) => {
            if form.get("client_secret") != Some(&secret) {
                return aad_error(
                    401,
                    "invalid_client",
                    "AADSTS7000215",
                    "Invalid client secret provided.",
                );
            }
        }
        Credential::Certificate { thumbprint, n, e } => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return aad_error(
                    400,
                    "invalid_request",
                    "AADSTS50012",
                    "client_assertion_type is missing or wrong.",
                );
            }
            let assertion = form.get("client_assertion").cloned().unwrap_or_default();
            if let Err(why) = check_assertion(&assertion, &client_id, &thumbprint, &n, &e) {
                return aad_error(
                    401,
                    "invalid_client",
                    "AADSTS700027",
                    &format!("Client assertion failed validation: {why}"),
                );
            }
        }
    }
    let tenant_entry = s.tenants.get_mut(&tenant_id).unwrap();
    if tenant_entry.disabled.contains(&client_id) {
        return aad_error(
            400,
            "unauthorized_client",
            "AADSTS7000112",
            &format!("Application '{client_id}'(entra-connector) is disabled."),
        );
    }
    match tenant_entry.consented.get_mut(&client_id) {
        None => {
            return aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                "Application was not found in the directory (no consent).",
            );
        }
        Some(delay) if *delay > 0 => {
            *delay -= 1;
            return aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                "Application was not found in the directory (consent propagating).",
            );
        }
        Some(_) => {}
    }
    let token = format!("fake-graph-token-{}", uuid::Uuid::new_v4());
    s.issued.insert(token.clone(), (tenant_id, client_id));
    json_response(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}

fn check_assertion(
    assertion: &str,
    client_id: &str,
    thumbprint: &str,
    n: &[u8],
    e: &[u8],
) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return Err("not a JWS".into());
    };
    let decode = |p: &str| -> Result<Value, String> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "base64")?)
            .map_err(|_| "json".to_string())
    };
    let header = decode(h)?;
    let claims = decode(c)?;
    if header["alg"] != "PS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    if header["x5t#S256"] != thumbprint {
        return Err("x5t#S256 does not match the uploaded certificate".into());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "signature base64")?;
    PublicKeyComponents { n, e }
        .verify(
            &RSA_PSS_2048_8192_SHA256,
            format!("{h}.{c}").as_bytes(),
            &signature,
        )
        .map_err(|_| "signature does not verify")?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !(aud.starts_with("https://login.") && aud.ends_with("/oauth2/v2.0/token")) {
        return Err(format!("aud {aud}"));
    }
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return Err("iss/sub".into());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let exp = claims["exp"].as_i64().ok_or("exp")?;
    if exp < now || exp > now + 660 {
        return Err("exp".into());
    }
    if claims["jti"].as_str().is_none_or(|j| j.is_empty()) {
        return Err("jti".into());
    }
    Ok(())
}

fn graph_request(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Response {
    let mut s = state.lock().unwrap();
    s.graph_calls.push(format!("{method} {path}"));
    if let Some((status, retry_after)) = s.graph_failures.pop_front() {
        let mut response = json_response(
            status,
            json!({"error": {"code": "TooManyRequests", "message": "scripted failure"}}),
        );
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return response;
    }
    let Some((tenant, _client)) = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| s.issued.get(t).cloned())
    else {
        return json_response(
            401,
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token is empty or invalid."}}),
        );
    };
    let relative = path.trim_start_matches("/v1.0");
    if method == "POST" && relative == "/$batch" {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let items = request["requests"].as_array().cloned().unwrap_or_default();
        if items.len() > 20 {
            return json_response(
                400,
                json!({"error": {"code": "BadRequest", "message": "more than 20 requests"}}),
            );
        }
        let mut responses = Vec::new();
        for item in items {
            let url = item["url"].as_str().unwrap_or_default().to_string();
            s.graph_calls.push(format!("batch {url}"));
            if s.throttle_items.remove(&url) {
                responses.push(json!({"id": item["id"], "status": 429, "headers": {"Retry-After": "1"}, "body": {"error": {"code": "TooManyRequests", "message": "throttled"}}}));
                continue;
            }
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            let (status, body) = read(&s, &tenant, path, query);
            responses.push(json!({"id": item["id"], "status": status, "headers": {"Content-Type": "application/json"}, "body": body}));
        }
        return json_response(200, json!({ "responses": responses }));
    }
    let (status, body) = read(&s, &tenant, relative, query);
    json_response(status, body)
}

/// Answers a GET of the supported resources.
fn read(s: &State, tenant_id: &str, path: &str, _query: &str) -> (u16, Value) {
    let tenant = &s.tenants[tenant_id];
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    if decoded == "/organization" {
        return (
            200,
            json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#organization", "value": [{
                "id": tenant_id, "displayName": tenant.name,
                "verifiedDomains": [{"capabilities": "Email, OfficeCommunicationsOnline", "isDefault": true, "isInitial": true, "name": tenant.domain, "type": "Managed"}],
            }]}),
        );
    }
    let key = decoded
        .strip_prefix("/users('")
        .and_then(|k| k.strip_suffix("')"))
        .map(|k| k.replace("''", "'"))
        .or_else(|| decoded.strip_prefix("/users/").map(str::to_string));
    if let Some(key) = key {
        return match tenant.users.iter().find(|u| {
            u["id"] == key.as_str()
                || u["userPrincipalName"]
                    .as_str()
                    .is_some_and(|upn| upn.eq_ignore_ascii_case(&key))
        }) {
            Some(user) => (200, user.clone()),
            None => (
                404,
                json!({"error": {"code": "Request_ResourceNotFound", "message": format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present.")}}),
            ),
        };
    }
    (
        400,
        json!({"error": {"code": "BadRequest", "message": format!("unsupported path {decoded}")}}),
    )
}
