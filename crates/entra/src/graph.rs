//! A Microsoft Graph client for app-only calls: per-cloud hosts (or the override), tokens
//! from [`TokenProvider`], 429 honoured with `Retry-After` (never retried earlier), 5xx
//! retried with bounded back-off, a token refreshed once on 401, `$batch` with per-item
//! retries, delta pages ([`crate::delta`]), and errors classified for a sync engine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::cloud::{Cloud, Endpoints};
use crate::credentials::{AppRegistration, TokenError, TokenProvider};
use crate::delta::{DeltaKind, DeltaPage, DeltaUser, USER_SELECT, parse_page, parse_user};

/// Most requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

/// Characters kept as-is in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

/// Timeouts and retry limits.
#[derive(Debug, Clone)]
pub struct GraphPolicy {
    pub timeout: Duration,
    /// Most attempts for one request (429 and 5xx).
    pub max_attempts: u32,
    /// Longest single wait asked by `Retry-After` that is honoured.
    pub max_retry_after: Duration,
    /// Total time one call may spend waiting and retrying.
    pub total_budget: Duration,
    pub initial_backoff: Duration,
}

impl Default for GraphPolicy {
    fn default() -> Self {
        GraphPolicy {
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(60),
            total_budget: Duration::from_secs(120),
            initial_backoff: Duration::from_millis(500),
        }
    }
}

/// What went wrong calling Graph. [`GraphError::class`] sorts it for a sync engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("not found: {0}")]
    NotFound(String),
    /// 403: usually the app lacks consent for the permission (or lost it).
    #[error("forbidden (is admin consent missing?): {0}")]
    Forbidden(String),
    /// 401 after a fresh token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 429 (or 503 with `Retry-After`) that the policy did not wait out: the wait asked
    /// was longer than [`GraphPolicy::max_retry_after`], or the attempts or the budget ran
    /// out. `retry_after` is Graph's last `Retry-After` when it sent one: do not call
    /// again before it has passed.
    #[error("throttled by Graph{}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    Throttled { retry_after: Option<Duration> },
    /// The delta state is gone: `410 Gone` (Graph then names the initial query in
    /// `Location`), or an error code `syncStateNotFound` (expired token, 7 days for
    /// directory objects) or `resyncRequired`; also a stored link that is not on this
    /// cloud's Graph host. Start a full round from the start URL.
    #[error("delta state is gone, a full resync is needed: {0}")]
    ResyncRequired(String),
    /// Network errors and 5xx after the retries.
    #[error("Graph unavailable: {0}")]
    Unavailable(String),
    #[error("Graph refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// How a caller should react to a [`GraphError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphErrorClass {
    /// Drop the delta state and run a full round.
    ResyncRequired,
    /// Give up for now; call again no earlier than `retry_after` (when known).
    Throttled { retry_after: Option<Duration> },
    /// The app cannot read the tenant any more (consent revoked, app deleted or disabled
    /// in the tenant, credential refused, permission removed): stop calling until an
    /// operator acts or consent is granted again. `reason` is safe to show an admin.
    AccessRevoked { reason: String },
    /// The object does not exist.
    NotFound,
    /// Try again later (network, 5xx, token endpoint unreachable).
    Transient,
    /// Graph refused the request itself; repeating it will not help.
    Rejected,
}

impl GraphError {
    /// Sorts the error for a sync engine.
    pub fn class(&self) -> GraphErrorClass {
        match self {
            GraphError::ResyncRequired(_) => GraphErrorClass::ResyncRequired,
            GraphError::Throttled { retry_after } => GraphErrorClass::Throttled {
                retry_after: *retry_after,
            },
            GraphError::Forbidden(_) | GraphError::Unauthorized(_) => {
                GraphErrorClass::AccessRevoked {
                    reason: self.to_string(),
                }
            }
            GraphError::NotFound(_) => GraphErrorClass::NotFound,
            GraphError::Unavailable(_) => GraphErrorClass::Transient,
            GraphError::Rejected { .. } => GraphErrorClass::Rejected,
            GraphError::Token(t) => match t {
                TokenError::Unavailable(_) => GraphErrorClass::Transient,
                // OAuth's own "try again" answers
                TokenError::Refused(why)
                    if why.starts_with("temporarily_unavailable")
                        || why.starts_with("server_error") =>
                {
                    GraphErrorClass::Transient
                }
                TokenError::TenantNotFound(_)
                | TokenError::AppDisabled(_)
                | TokenError::ConsentMissing(_)
                | TokenError::GrantRevoked(_)
                | TokenError::InvalidClient(_)
                | TokenError::Refused(_) => GraphErrorClass::AccessRevoked {
                    reason: t.to_string(),
                },
            },
        }
    }

    /// Graph's `Retry-After` for a throttled call.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The tenant can no longer be read by this app (see [`GraphErrorClass::AccessRevoked`]).
    pub fn is_access_revoked(&self) -> bool {
        matches!(self.class(), GraphErrorClass::AccessRevoked { .. })
    }
}

/// One request of a `$batch`.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub method: String,
    /// Relative URL, e.g. `/users/{id}?$select=id`.
    pub url: String,
    pub body: Option<Value>,
}

/// One response of a `$batch`, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResponse {
    /// The item's status; 0 when Graph never answered the item.
    pub status: u16,
    pub body: Value,
    /// The item's own `Retry-After` when it is still throttled (status 429 or 503).
    pub retry_after: Option<Duration>,
}

/// The client.
pub struct GraphClient {
    http: reqwest::Client,
    endpoints: Endpoints,
    tokens: Arc<TokenProvider>,
    policy: GraphPolicy,
    requests: std::sync::atomic::AtomicU64,
}

/// The path of one user: `/users/{id or UPN}`, UPNs encoded (`#EXT#` becomes `%23EXT%23`);
/// a UPN starting with `$` uses the key syntax `/users('$x@y')` with `'` doubled.
pub fn user_path(id_or_upn: &str) -> String {
    if id_or_upn.starts_with('$') {
        let literal = id_or_upn.replace('\'', "''");
        let encoded = utf8_percent_encode(&literal, SEGMENT).to_string();
        format!(
            "/users('{}')",
            encoded.replace("%27", "'").replace("%24", "$")
        )
    } else {
        format!("/users/{}", utf8_percent_encode(id_or_upn, SEGMENT))
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP-date (IMF-fixdate) turned into the
/// time left until then, so that neither form is retried early.
fn seconds(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &format)
        .ok()?
        .assume_utc();
    Some(Duration::try_from(at - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(seconds)
}

/// A `$batch` item's own `Retry-After` (its `headers` object; names in any case).
fn item_retry_after(item: &Value) -> Option<Duration> {
    let (_, value) = item
        .get("headers")?
        .as_object()?
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?;
    match value {
        Value::String(s) => seconds(s),
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        _ => None,
    }
}

pub(crate) fn graph_message(body: &Value) -> String {
    body.pointer("/error/message")
        .or_else(|| body.pointer("/error/code"))
        .and_then(Value::as_str)
        .unwrap_or("no error message")
        .to_string()
}

/// The error codes of a Graph error body: `error.code`, then each nested `innerError`
/// (Graph's docs ask clients to look through all of them).
fn error_codes(body: &Value) -> Vec<&str> {
    let mut codes = Vec::new();
    let mut current = body.get("error");
    for _ in 0..8 {
        let Some(error) = current else { break };
        if let Some(code) = error.get("code").and_then(Value::as_str) {
            codes.push(code);
        }
        current = error.get("innerError").or_else(|| error.get("innererror"));
    }
    codes
}

/// `syncStateNotFound` (expired delta token) or `resyncRequired` anywhere in the codes.
fn needs_resync(body: &Value) -> bool {
    error_codes(body).iter().any(|c| {
        c.eq_ignore_ascii_case("syncStateNotFound") || c.eq_ignore_ascii_case("resyncRequired")
    })
}

/// A `$batch` item's answer to a user read, typed.
pub(crate) fn user_from_item(r: BatchResponse) -> Result<DeltaUser, GraphError> {
    match r.status {
        200..=299 => r
            .body
            .as_object()
            .and_then(parse_user)
            .ok_or_else(|| GraphError::Unavailable("a user object without an id".into())),
        404 => Err(GraphError::NotFound(graph_message(&r.body))),
        401 => Err(GraphError::Unauthorized(graph_message(&r.body))),
        403 => Err(GraphError::Forbidden(graph_message(&r.body))),
        429 => Err(GraphError::Throttled {
            retry_after: r.retry_after,
        }),
        503 if r.retry_after.is_some() => Err(GraphError::Throttled {
            retry_after: r.retry_after,
        }),
        0 => Err(GraphError::Unavailable(
            "Graph did not answer this item of the batch".into(),
        )),
        500..=599 => Err(GraphError::Unavailable(format!("HTTP {}", r.status))),
        status => Err(GraphError::Rejected {
            status,
            message: graph_message(&r.body),
        }),
    }
}

impl GraphClient {
    /// A client over a token provider.
    pub fn new(
        endpoints: Endpoints,
        tokens: Arc<TokenProvider>,
        policy: GraphPolicy,
    ) -> GraphClient {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .build()
            .expect("an HTTP client builds");
        GraphClient::with_http(endpoints, tokens, policy, http)
    }

    /// A client sharing an HTTP client; each request still times out per the policy.
    pub fn with_http(
        endpoints: Endpoints,
        tokens: Arc<TokenProvider>,
        policy: GraphPolicy,
        http: reqwest::Client,
    ) -> GraphClient {
        GraphClient {
            http,
            endpoints,
            tokens,
            policy,
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The application permissions (`roles`) in the app-only token Entra issues for `app`
    /// in `tenant`: what the admin consented to. Read from our own fresh token, which is
    /// not validated here (it is never accepted as a credential, only inspected).
    pub async fn app_roles(
        &self,
        app: &AppRegistration,
        tenant: &str,
    ) -> Result<Vec<String>, GraphError> {
        use base64::Engine as _;
        let token = self.tokens.graph_token(app, tenant).await?;
        let claims = token
            .token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        Ok(claims["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The token provider behind the client (delegated code redemption uses it too).
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// The Graph base URL for a cloud (the override when one is set).
    pub fn graph_base(&self, cloud: Cloud) -> String {
        self.endpoints.graph(cloud)
    }

    /// Graph requests sent so far (retries included).
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `GET /v1.0{path}` as `app` in `tenant`.
    pub async fn get(
        &self,
        app: &AppRegistration,
        tenant: &str,
        path: &str,
    ) -> Result<Value, GraphError> {
        self.send(app, tenant, "GET", path, None).await
    }

    /// The tenant's organization: `GET /organization` (id, displayName, verifiedDomains).
    pub async fn organization(
        &self,
        app: &AppRegistration,
        tenant: &str,
    ) -> Result<Value, GraphError> {
        let body = self
            .get(
                app,
                tenant,
                "/organization?$select=id,displayName,verifiedDomains",
            )
            .await?;
        body.get("value")
            .and_then(Value::as_array)
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| GraphError::NotFound("the tenant has no organization object".into()))
    }

    /// One user by object id or UPN.
    pub async fn user(
        &self,
        app: &AppRegistration,
        tenant: &str,
        id_or_upn: &str,
        select: &str,
    ) -> Result<Value, GraphError> {
        let mut path = user_path(id_or_upn);
        if !select.is_empty() {
            path.push_str("?$select=");
            path.push_str(select);
        }
        self.get(app, tenant, &path).await
    }

    /// One user by object id or UPN with the sync's properties ([`USER_SELECT`]), typed
    /// as a delta item (never `removed`). `NotFound` when Graph does not know it.
    pub async fn user_record(
        &self,
        app: &AppRegistration,
        tenant: &str,
        id_or_upn: &str,
    ) -> Result<DeltaUser, GraphError> {
        let body = self.user(app, tenant, id_or_upn, USER_SELECT).await?;
        body.as_object()
            .and_then(parse_user)
            .ok_or_else(|| GraphError::Unavailable("a user object without an id".into()))
    }

    /// Many users by UPN (or object id) through `$batch`: 20 per Graph request, so 50
    /// distinct UPNs cost 3 requests; a UPN repeated (case-insensitively) is read once.
    /// Items throttled on their own are sent again after their `Retry-After`, riding
    /// along with a later batch where there is room, within the policy's bounds; an item
    /// still throttled answers `Throttled`. One entry per input, in input order.
    pub async fn users_by_upn(
        &self,
        app: &AppRegistration,
        tenant: &str,
        upns: &[String],
    ) -> Vec<(String, Result<DeltaUser, GraphError>)> {
        let mut first_of: HashMap<String, usize> = HashMap::new();
        let mut distinct: Vec<&str> = Vec::new();
        let slots: Vec<usize> = upns
            .iter()
            .map(|upn| {
                *first_of.entry(upn.to_lowercase()).or_insert_with(|| {
                    distinct.push(upn);
                    distinct.len() - 1
                })
            })
            .collect();
        let requests: Vec<BatchRequest> = distinct
            .iter()
            .map(|upn| BatchRequest {
                method: "GET".into(),
                url: format!("{}?$select={USER_SELECT}", user_path(upn)),
                body: None,
            })
            .collect();
        let (responses, failure) = self.batch_partial(app, tenant, &requests).await;
        let results: Vec<Result<DeltaUser, GraphError>> = responses
            .into_iter()
            .map(|r| match r {
                Some(r) => user_from_item(r),
                None => Err(failure.clone().unwrap_or_else(|| {
                    GraphError::Unavailable("Graph did not answer this item".into())
                })),
            })
            .collect();
        upns.iter()
            .zip(slots)
            .map(|(upn, slot)| (upn.clone(), results[slot].clone()))
            .collect()
    }

    /// The absolute URL of a full round's first page in `cloud`, with `$select`.
    pub fn delta_start_url(&self, cloud: Cloud, kind: DeltaKind) -> String {
        format!("{}/v1.0{}", self.endpoints.graph(cloud), kind.start_path())
    }

    /// Fetches ONE page of a delta round: from the start (`from: None`, a full round) or
    /// from a link a previous page returned (`DeltaNext::link`, a nextLink to go on with
    /// the round or a deltaLink to start the next one). Links are followed as received,
    /// but only on this cloud's Graph host and only for `kind`'s collection (the bearer
    /// token goes nowhere else); any other link answers `ResyncRequired`.
    ///
    /// Errors: `ResyncRequired` (410, `syncStateNotFound`, `resyncRequired`), `Throttled`
    /// with Graph's wait once the policy stops waiting, `Forbidden`/`Unauthorized`/`Token`
    /// for lost access (see [`GraphError::class`]), `Unavailable` after transient retries.
    pub async fn delta_page(
        &self,
        app: &AppRegistration,
        tenant: &str,
        kind: DeltaKind,
        from: Option<&str>,
    ) -> Result<DeltaPage, GraphError> {
        let url = match from {
            None => self.delta_start_url(app.cloud, kind),
            Some(link) => {
                let base = format!(
                    "{}/v1.0/{}/",
                    self.endpoints.graph(app.cloud),
                    kind.collection()
                );
                if !link.starts_with(&base) {
                    return Err(GraphError::ResyncRequired(format!(
                        "the {} delta link is not on this cloud's Graph host",
                        kind.collection()
                    )));
                }
                link.to_string()
            }
        };
        let body = self.send_url(app, tenant, "GET", &url, None).await?;
        parse_page(kind, &body)
    }

    /// Runs requests through `$batch`, at most 20 per Graph request. Items throttled on
    /// their own (429, or 503 with `Retry-After`) are sent again no earlier than their
    /// `Retry-After`, up to the policy's attempts, riding along with the next batch where
    /// there is room; an item still throttled comes back as its 429 with `retry_after`.
    /// Answers in request order; a failure of a whole `$batch` request is the error.
    pub async fn batch(
        &self,
        app: &AppRegistration,
        tenant: &str,
        requests: &[BatchRequest],
    ) -> Result<Vec<BatchResponse>, GraphError> {
        let (out, failure) = self.batch_partial(app, tenant, requests).await;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or(BatchResponse {
                    status: 0,
                    body: Value::Null,
                    retry_after: None,
                })
            })
            .collect())
    }

    /// The answers got so far, and the error that stopped the batch if one did.
    async fn batch_partial(
        &self,
        app: &AppRegistration,
        tenant: &str,
        requests: &[BatchRequest],
    ) -> (Vec<Option<BatchResponse>>, Option<GraphError>) {
        let mut out: Vec<Option<BatchResponse>> = vec![None; requests.len()];
        let mut attempts = vec![0u32; requests.len()];
        let mut ready: VecDeque<usize> = (0..requests.len()).collect();
        // throttled items: when they may go again, and their answer should they not
        let mut waiting: Vec<(usize, Instant, BatchResponse)> = Vec::new();
        let started = Instant::now();
        loop {
            if ready.len() < MAX_BATCH && !waiting.is_empty() {
                // wait for the throttled items so they fill this batch instead of costing
                // a request of their own; they would wait as long either way
                let until = waiting.iter().map(|w| w.1).max().expect("not empty");
                let pause = until.saturating_duration_since(Instant::now());
                if started.elapsed() + pause > self.policy.total_budget {
                    for (i, _, answer) in waiting.drain(..) {
                        out[i] = Some(answer);
                    }
                } else {
                    tokio::time::sleep(pause).await;
                    ready.extend(waiting.drain(..).map(|w| w.0));
                }
            }
            if ready.is_empty() {
                break;
            }
            let chunk: Vec<usize> = ready.drain(..ready.len().min(MAX_BATCH)).collect();
            let items: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    attempts[i] += 1;
                    let r = &requests[i];
                    let mut item = json!({"id": i.to_string(), "method": r.method, "url": r.url});
                    if let Some(body) = &r.body {
                        item["body"] = body.clone();
                        item["headers"] = json!({"Content-Type": "application/json"});
                    }
                    item
                })
                .collect();
            let answer = match self
                .send(
                    app,
                    tenant,
                    "POST",
                    "/$batch",
                    Some(json!({ "requests": items })),
                )
                .await
            {
                Ok(answer) => answer,
                Err(e) => return (out, Some(e)),
            };
            let Some(responses) = answer.get("responses").and_then(Value::as_array) else {
                return (
                    out,
                    Some(GraphError::Unavailable(
                        "a $batch answer without responses".into(),
                    )),
                );
            };
            let mut answered = HashSet::new();
            for r in responses {
                let Some(i) = r
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| id.parse::<usize>().ok())
                    .filter(|i| chunk.contains(i))
                else {
                    continue;
                };
                if !answered.insert(i) {
                    continue;
                }
                let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                let answer = BatchResponse {
                    status,
                    body: r.get("body").cloned().unwrap_or(Value::Null),
                    retry_after: item_retry_after(r),
                };
                let throttled = status == 429 || (status == 503 && answer.retry_after.is_some());
                if throttled && attempts[i] < self.policy.max_attempts {
                    let wait = answer.retry_after.unwrap_or(
                        self.policy.initial_backoff * 2u32.saturating_pow(attempts[i] - 1),
                    );
                    if wait <= self.policy.max_retry_after {
                        tracing::debug!(
                            status,
                            wait_ms = wait.as_millis() as u64,
                            "batch item throttled"
                        );
                        waiting.push((i, Instant::now() + wait, answer));
                        continue;
                    }
                }
                out[i] = Some(answer);
            }
            // anything the answer left out is sent again, within the attempts
            for &i in chunk.iter().rev() {
                if answered.contains(&i) {
                    continue;
                }
                if attempts[i] < self.policy.max_attempts {
                    ready.push_front(i);
                } else {
                    out[i] = Some(BatchResponse {
                        status: 0,
                        body: Value::Null,
                        retry_after: None,
                    });
                }
            }
        }
        (out, None)
    }

    pub(crate) async fn send(
        &self,
        app: &AppRegistration,
        tenant: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, GraphError> {
        let url = format!("{}/v1.0{path}", self.endpoints.graph(app.cloud));
        self.send_url(app, tenant, method, &url, body).await
    }

    /// One call with the retry policy: 429 and 503-with-`Retry-After` wait exactly as long
    /// as asked (never less; a wait beyond `max_retry_after` is not waited but returned as
    /// `Throttled`), other 5xx and network errors back off exponentially, a 401 refreshes
    /// the token once; the delta-state errors are returned at once.
    async fn send_url(
        &self,
        app: &AppRegistration,
        tenant: &str,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, GraphError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self.tokens.graph_token(app, tenant).await?;
            let mut request = self
                .http
                .request(method.parse().expect("a valid method"), url)
                .timeout(self.policy.timeout)
                .bearer_auth(&*token.token)
                .header("accept", "application/json");
            if let Some(body) = &body {
                request = request.json(body);
            }
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = request.send().await;
            let (status, headers, bytes) = match outcome {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let headers = r.headers().clone();
                    match r.bytes().await {
                        Ok(b) => (status, headers, b),
                        Err(e) => (0, headers, bytes::Bytes::from(e.without_url().to_string())),
                    }
                }
                Err(e) => (
                    0,
                    Default::default(),
                    bytes::Bytes::from(e.without_url().to_string()),
                ),
            };
            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == 410 || ((400..500).contains(&status) && needs_resync(&parsed)) {
                return Err(GraphError::ResyncRequired(format!(
                    "HTTP {status}: {}",
                    graph_message(&parsed)
                )));
            }
            let asked = retry_after(&headers);
            let (wait, throttled) = match status {
                200..=299 => return Ok(parsed),
                401 if !refreshed => {
                    self.tokens.forget(app, tenant);
                    refreshed = true;
                    continue;
                }
                401 => return Err(GraphError::Unauthorized(graph_message(&parsed))),
                403 => return Err(GraphError::Forbidden(graph_message(&parsed))),
                404 => return Err(GraphError::NotFound(graph_message(&parsed))),
                429 => (asked, true),
                503 if asked.is_some() => (asked, true),
                0 | 500 | 502 | 503 | 504 => (asked, false),
                other => {
                    return Err(GraphError::Rejected {
                        status: other,
                        message: graph_message(&parsed),
                    });
                }
            };
            let pause =
                wait.unwrap_or(self.policy.initial_backoff * 2u32.saturating_pow(attempt - 1));
            if attempt >= self.policy.max_attempts
                || started.elapsed() + pause > self.policy.total_budget
                || wait.is_some_and(|w| w > self.policy.max_retry_after)
            {
                return Err(if throttled {
                    GraphError::Throttled { retry_after: wait }
                } else {
                    GraphError::Unavailable(if status == 0 {
                        String::from_utf8_lossy(&bytes).into_owned()
                    } else {
                        format!("HTTP {status}")
                    })
                });
            }
            tracing::debug!(
                status,
                attempt,
                wait_ms = pause.as_millis() as u64,
                "graph request retried"
            );
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(seconds(" 7 "), Some(Duration::from_secs(7)));
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        let later = (time::OffsetDateTime::now_utc() + time::Duration::seconds(30))
            .format(&format)
            .unwrap();
        let wait = seconds(&later).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(
            seconds("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date gone by: no wait"
        );
        assert_eq!(seconds("soon"), None);
    }

    #[test]
    fn resync_codes_are_found_in_inner_errors() {
        assert!(needs_resync(
            &json!({"error": {"code": "syncStateNotFound", "message": "x"}})
        ));
        assert!(needs_resync(
            &json!({"error": {"code": "BadRequest", "innerError": {"code": "resyncRequired"}}})
        ));
        assert!(!needs_resync(
            &json!({"error": {"code": "Request_BadRequest"}})
        ));
    }

    #[test]
    fn errors_are_classified_for_a_sync_engine() {
        use GraphErrorClass as C;
        let revoked = |e: GraphError| matches!(e.class(), C::AccessRevoked { .. });
        assert!(revoked(GraphError::Forbidden(
            "Authorization_RequestDenied".into()
        )));
        assert!(revoked(GraphError::Unauthorized("x".into())));
        assert!(revoked(GraphError::Token(TokenError::ConsentMissing(
            "AADSTS700016".into()
        ))));
        assert!(revoked(GraphError::Token(TokenError::InvalidClient(
            "AADSTS7000222".into()
        ))));
        assert_eq!(
            GraphError::Token(TokenError::Unavailable("down".into())).class(),
            C::Transient
        );
        assert_eq!(
            GraphError::Token(TokenError::Refused(
                "temporarily_unavailable: AADSTS50001".into()
            ))
            .class(),
            C::Transient
        );
        assert_eq!(
            GraphError::Unavailable("HTTP 502".into()).class(),
            C::Transient
        );
        assert_eq!(
            GraphError::ResyncRequired("410".into()).class(),
            C::ResyncRequired
        );
        assert_eq!(GraphError::NotFound("x".into()).class(), C::NotFound);
        let throttled = GraphError::Throttled {
            retry_after: Some(Duration::from_secs(9)),
        };
        assert_eq!(throttled.to_string(), "throttled by Graph, retry after 9 s");
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(9)));
    }

    #[test]
    fn user_paths_encode_guest_and_dollar_upns() {
        assert_eq!(user_path("ada@contoso.com"), "/users/ada@contoso.com");
        assert_eq!(
            user_path("ada_gmail.com#EXT#@contoso.onmicrosoft.com"),
            "/users/ada_gmail.com%23EXT%23@contoso.onmicrosoft.com"
        );
        assert_eq!(
            user_path("$admin@contoso.com"),
            "/users('$admin@contoso.com')"
        );
        assert_eq!(
            user_path("$o'neil@contoso.com"),
            "/users('$o''neil@contoso.com')"
        );
        assert_eq!(
            user_path("o'neil@contoso.com"),
            "/users/o%27neil@contoso.com"
        );
        assert_eq!(
            user_path("8f2b5e0a-1a7c-4c52-9a0e-2f3f6c1f7d11"),
            "/users/8f2b5e0a-1a7c-4c52-9a0e-2f3f6c1f7d11"
        );
    }
}
