//! A Microsoft Graph client for app-only calls: per-cloud hosts (or the override), tokens
//! from [`TokenProvider`], 429 honoured with `Retry-After`, 5xx retried with bounded
//! back-off, a token refreshed once on 401, `$batch` with per-item retries, and typed errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::cloud::Endpoints;
use crate::credentials::{AppRegistration, TokenError, TokenProvider};

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

/// What went wrong calling Graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("not found: {0}")]
    NotFound(String),
    /// 403: usually the app lacks consent for the permission.
    #[error("forbidden (is admin consent missing?): {0}")]
    Forbidden(String),
    /// 401 after a fresh token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("throttled and out of retry budget")]
    Throttled,
    #[error("Graph unavailable: {0}")]
    Unavailable(String),
    #[error("Graph refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error(transparent)]
    Token(#[from] TokenError),
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
    pub status: u16,
    pub body: Value,
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

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn graph_message(body: &Value) -> String {
    body.pointer("/error/message")
        .or_else(|| body.pointer("/error/code"))
        .and_then(Value::as_str)
        .unwrap_or("no error message")
        .to_string()
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

    /// Runs requests through `$batch`, 20 at a time; items throttled with 429 are sent again
    /// (after their `Retry-After`) within the budget. Answers in request order.
    pub async fn batch(
        &self,
        app: &AppRegistration,
        tenant: &str,
        requests: &[BatchRequest],
    ) -> Result<Vec<BatchResponse>, GraphError> {
        let mut out: Vec<Option<BatchResponse>> = vec![None; requests.len()];
        let started = Instant::now();
        for (chunk_index, chunk) in requests.chunks(MAX_BATCH).enumerate() {
            let offset = chunk_index * MAX_BATCH;
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                attempt += 1;
                let items: Vec<Value> = pending
                    .iter()
                    .map(|&i| {
                        let r = &chunk[i];
                        let mut item =
                            json!({"id": i.to_string(), "method": r.method, "url": r.url});
                        if let Some(body) = &r.body {
                            item["body"] = body.clone();
                            item["headers"] = json!({"Content-Type": "application/json"});
                        }
                        item
                    })
                    .collect();
                let answer = self
                    .send(
                        app,
                        tenant,
                        "POST",
                        "/$batch",
                        Some(json!({ "requests": items })),
                    )
                    .await?;
                let responses = answer
                    .get("responses")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        GraphError::Unavailable("a $batch answer without responses".into())
                    })?;
                let mut throttled = Vec::new();
                let mut wait = Duration::ZERO;
                for r in responses {
                    let Some(i) = r
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|id| id.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    if i >= chunk.len() {
                        continue;
                    }
                    let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                    if status == 429 && attempt < self.policy.max_attempts {
                        let after = r
                            .pointer("/headers/Retry-After")
                            .or_else(|| r.pointer("/headers/retry-after"))
                            .and_then(|v| {
                                v.as_str()
                                    .map(str::to_string)
                                    .or_else(|| v.as_u64().map(|n| n.to_string()))
                            })
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Duration::from_secs)
                            .unwrap_or(self.policy.initial_backoff);
                        wait = wait.max(after.min(self.policy.max_retry_after));
                        throttled.push(i);
                        continue;
                    }
                    out[offset + i] = Some(BatchResponse {
                        status,
                        body: r.get("body").cloned().unwrap_or(Value::Null),
                    });
                }
                // anything the answer left out is sent again too
                pending.retain(|&i| {
                    out[offset + i].is_none()
                        && (throttled.contains(&i) || attempt < self.policy.max_attempts)
                });
                if pending.is_empty() {
                    break;
                }
                if attempt >= self.policy.max_attempts
                    || started.elapsed() + wait > self.policy.total_budget
                {
                    return Err(GraphError::Throttled);
                }
                tokio::time::sleep(wait).await;
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or(BatchResponse {
                    status: 0,
                    body: Value::Null,
                })
            })
            .collect())
    }

    async fn send(
        &self,
        app: &AppRegistration,
        tenant: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, GraphError> {
        let url = format!("{}/v1.0{path}", self.endpoints.graph(app.cloud));
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self.tokens.graph_token(app, tenant).await?;
            let mut request = self
                .http
                .request(method.parse().expect("a valid method"), &url)
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
            let wait = match status {
                200..=299 => return Ok(parsed),
                401 if !refreshed => {
                    self.tokens.forget(app, tenant);
                    refreshed = true;
                    continue;
                }
                401 => return Err(GraphError::Unauthorized(graph_message(&parsed))),
                403 => return Err(GraphError::Forbidden(graph_message(&parsed))),
                404 => return Err(GraphError::NotFound(graph_message(&parsed))),
                429 => retry_after(&headers)
                    .unwrap_or(self.policy.initial_backoff * 2u32.saturating_pow(attempt - 1))
                    .min(self.policy.max_retry_after),
                0 | 500 | 502 | 503 | 504 => retry_after(&headers)
                    .unwrap_or(self.policy.initial_backoff * 2u32.saturating_pow(attempt - 1)),
                other => {
                    return Err(GraphError::Rejected {
                        status: other,
                        message: graph_message(&parsed),
                    });
                }
            };
            if attempt >= self.policy.max_attempts
                || started.elapsed() + wait > self.policy.total_budget
            {
                return Err(if status == 429 {
                    GraphError::Throttled
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
                wait_ms = wait.as_millis() as u64,
                "graph request retried"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
