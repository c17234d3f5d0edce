//! App-only tokens by the OAuth 2.0 client-credentials grant, with a client secret or a
//! certificate assertion (PS256, `x5t#S256`) whose key may never leave a vault. Tokens are
//! cached per (cloud, tenant, app) and refreshed before they expire, one request at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::cloud::{Cloud, Endpoints};

/// Signs client assertions (RSASSA-PSS with SHA-256) with a key the caller may not hold.
#[async_trait]
pub trait AssertionSigner: Send + Sync {
    /// The PS256 signature of `message`.
    async fn sign_ps256(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// Where a delegated connection's refresh token lives (a vault secret): read before each
/// redemption, replaced by the new one Entra returns (refresh tokens rotate).
#[async_trait]
pub trait RefreshGrant: Send + Sync {
    /// The newest refresh token.
    async fn current(&self) -> Result<String, String>;
    /// Keeps the refresh token Entra returned in place of the one redeemed.
    async fn rotate(&self, new: &str) -> Result<(), String>;
}

/// How an app proves itself to Entra.
#[derive(Clone)]
pub enum AppCredential {
    /// A client secret.
    Secret(String),
    /// A certificate registered on the app, and a signer for its private key.
    Certificate {
        certificate_der: Arc<Vec<u8>>,
        signer: Arc<dyn AssertionSigner>,
    },
    /// Delegated access: the app (authenticated with `client`) redeems a signed-in user's
    /// refresh token (`grant_type=refresh_token`), keeping the rotated one.
    Delegated {
        client: Box<AppCredential>,
        grant: Arc<dyn RefreshGrant>,
    },
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppCredential::Secret(_) => f.write_str("Secret(redacted)"),
            AppCredential::Certificate {
                certificate_der, ..
            } => {
                write!(
                    f,
                    "Certificate(x5t#S256={})",
                    thumbprint_s256(certificate_der)
                )
            }
            AppCredential::Delegated { client, .. } => {
                write!(f, "Delegated(refresh token redacted, client {client:?})")
            }
        }
    }
}

/// An app registration in one cloud, with its credential.
#[derive(Clone, Debug)]
pub struct AppRegistration {
    pub cloud: Cloud,
    pub client_id: Uuid,
    pub credential: AppCredential,
}

/// base64url SHA-256 of a certificate's DER: the `x5t#S256` header value.
pub fn thumbprint_s256(certificate_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        certificate_der,
    ))
}

/// What went wrong getting a token, by what the caller should do about it. The class
/// comes from Microsoft's AADSTS code (`error_codes`, else the description's first word),
/// then from the OAuth `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The tenant does not exist, is in another cloud, or the identifier is not one
    /// (AADSTS90002, AADSTS900023): a definite refusal.
    #[error("tenant not found: {0}")]
    TenantNotFound(String),
    /// The app is not (yet) consented in the tenant (AADSTS700016, AADSTS65001,
    /// AADSTS650051); right after an admin consent this is what propagation looks like.
    #[error("the app is not consented in the tenant: {0}")]
    ConsentMissing(String),
    /// The tenant's administrator disabled the app's service principal (AADSTS7000112):
    /// a refusal until they enable it again.
    #[error("the app is disabled in the tenant: {0}")]
    AppDisabled(String),
    /// Our credential was refused (invalid or expired secret, unknown certificate, bad
    /// assertion signature: AADSTS7000215, AADSTS7000222, AADSTS700027, ...): our own
    /// configuration, not the tenant's doing.
    #[error("the app's credential was refused: {0}")]
    InvalidClient(String),
    /// A delegated refresh token that no longer works: revoked (AADSTS50173, after a
    /// password change or `revokeSignInSessions`), expired (AADSTS700082, about 90 days
    /// unused; AADSTS70008): the administrator must link the connection again.
    #[error(
        "the signed-in administrator's grant was revoked or expired; link the connection again: {0}"
    )]
    GrantRevoked(String),
    /// Any other refusal from the token endpoint.
    #[error("token request refused: {0}")]
    Refused(String),
    /// The token endpoint could not be reached, answered garbage, or said it is
    /// temporarily unavailable.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// Types a token-endpoint error answer: the OAuth `error`, Microsoft's `error_codes`
    /// and `error_description` (whose first word is the AADSTS code).
    fn from_aad(error: &str, codes: &[u64], description: &str) -> TokenError {
        let code = codes.first().copied().or_else(|| {
            description
                .split(':')
                .next()
                .and_then(|c| c.trim().strip_prefix("AADSTS"))
                .and_then(|c| c.parse().ok())
        });
        let detail = format!(
            "{error}: {}",
            description.lines().next().unwrap_or_default().trim()
        );
        match code {
            Some(90002 | 90023 | 900023 | 50020) => TokenError::TenantNotFound(detail),
            Some(700016 | 65001 | 650051) => TokenError::ConsentMissing(detail),
            Some(7000112) => TokenError::AppDisabled(detail),
            Some(50173 | 700082 | 70008 | 50076 | 50078) if error == "invalid_grant" => {
                TokenError::GrantRevoked(detail)
            }
            Some(7000215 | 7000222 | 700027 | 700024 | 7000218 | 50012) => {
                TokenError::InvalidClient(detail)
            }
            _ if error == "invalid_client" || error == "unauthorized_client" => {
                TokenError::InvalidClient(detail)
            }
            _ if error == "temporarily_unavailable" => TokenError::Unavailable(detail),
            _ => TokenError::Refused(detail),
        }
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Arc<str>,
    /// Refresh after this instant (a margin before the real expiry).
    pub refresh_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(redacted)")
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: serde_json::Value,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

/// What redeeming an authorization code gave: a refresh token to keep in the vault, and the
/// signed-in user's identity from the ID token (received from the token endpoint itself
/// over TLS, so its claims are taken as they are).
pub struct CodeRedemption {
    pub refresh_token: String,
    /// The signed-in user's tenant (`tid`) and object id (`oid`).
    pub tenant_id: Option<Uuid>,
    pub object_id: Option<Uuid>,
    pub username: Option<String>,
}

impl std::fmt::Debug for CodeRedemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CodeRedemption(tid={:?}, oid={:?})",
            self.tenant_id, self.object_id
        )
    }
}

/// The claims of a JWT's payload, unverified.
fn jwt_claims(token: &str) -> serde_json::Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The scope a registration's Graph tokens are asked for: `.default` of the cloud's Graph,
/// plus `offline_access` for delegated ones (so the cache never mixes the two).
pub fn graph_scope(app: &AppRegistration) -> String {
    match app.credential {
        AppCredential::Delegated { .. } => format!("{}/.default offline_access", app.cloud.graph()),
        _ => format!("{}/.default", app.cloud.graph()),
    }
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

type CacheKey = (Cloud, String, Uuid, String);

/// Gets and caches client-credentials tokens.
pub struct TokenProvider {
    http: reqwest::Client,
    timeout: Duration,
    endpoints: Endpoints,
    cache: Mutex<HashMap<CacheKey, AccessToken>>,
    in_flight: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    requests: std::sync::atomic::AtomicU64,
}

/// Refresh this long before a token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

impl TokenProvider {
    /// A provider; nothing is requested until a token is needed.
    pub fn new(endpoints: Endpoints, timeout: Duration) -> TokenProvider {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client builds");
        TokenProvider::with_http(endpoints, timeout, http)
    }

    /// A provider sharing an HTTP client; each request still times out after `timeout`.
    pub fn with_http(
        endpoints: Endpoints,
        timeout: Duration,
        http: reqwest::Client,
    ) -> TokenProvider {
        TokenProvider {
            http,
            timeout,
            endpoints,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Token requests sent so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A Graph token of `app` for `tenant` (a GUID or a verified domain).
    pub async fn graph_token(
        &self,
        app: &AppRegistration,
        tenant: &str,
    ) -> Result<AccessToken, TokenError> {
        let scope = graph_scope(app);
        self.token(app, tenant, &scope).await
    }

    /// Forgets a cached token (after a 401 from the resource).
    pub fn forget(&self, app: &AppRegistration, tenant: &str) {
        let scope = graph_scope(app);
        self.cache.lock().expect("token cache lock").remove(&(
            app.cloud,
            tenant.to_ascii_lowercase(),
            app.client_id,
            scope,
        ));
    }

    /// A token for any scope, cached until shortly before it expires.
    pub async fn token(
        &self,
        app: &AppRegistration,
        tenant: &str,
        scope: &str,
    ) -> Result<AccessToken, TokenError> {
        let key: CacheKey = (
            app.cloud,
            tenant.to_ascii_lowercase(),
            app.client_id,
            scope.to_string(),
        );
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        // one request per key at a time; the others wait and reuse its token
        let gate = self
            .in_flight
            .lock()
            .expect("token gate lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let token = self.request(app, tenant, scope).await?;
        self.cache
            .lock()
            .expect("token cache lock")
            .insert(key, token.clone());
        Ok(token)
    }

    fn cached(&self, key: &CacheKey) -> Option<AccessToken> {
        self.cache
            .lock()
            .expect("token cache lock")
            .get(key)
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    async fn request(
        &self,
        app: &AppRegistration,
        tenant: &str,
        scope: &str,
    ) -> Result<AccessToken, TokenError> {
        if tenant.is_empty()
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            return Err(TokenError::TenantNotFound(format!(
                "{tenant:?} is not a tenant id or domain"
            )));
        }
        let client_id = app.client_id.to_string();
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", client_id.clone()),
            ("scope", scope.to_string()),
        ];
        let mut grant = None;
        let mut credential = &app.credential;
        if let AppCredential::Delegated { client, grant: g } = &app.credential {
            let refresh = g.current().await.map_err(TokenError::Unavailable)?;
            form.push(("grant_type", "refresh_token".into()));
            form.push(("refresh_token", refresh));
            credential = client.as_ref();
            grant = Some(g.clone());
        } else {
            form.push(("grant_type", "client_credentials".into()));
        }
        client_auth(&mut form, app.cloud, tenant, &client_id, credential).await?;
        let (token, parsed) = self.post_form(app.cloud, tenant, &form).await?;
        if let (Some(grant), Some(new)) = (grant, parsed.refresh_token.as_deref()) {
            // the redeemed token may stop working: losing the new one would end the link
            grant.rotate(new).await.map_err(|e| {
                TokenError::Unavailable(format!("the rotated refresh token could not be kept: {e}"))
            })?;
        }
        Ok(token)
    }

    /// Redeems an authorization code (with its PKCE verifier) as `app`, for the delegated
    /// `scope`: the refresh token and who signed in.
    pub async fn redeem_code(
        &self,
        app: &AppRegistration,
        tenant: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        scope: &str,
    ) -> Result<CodeRedemption, TokenError> {
        let client_id = app.client_id.to_string();
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", client_id.clone()),
            ("scope", scope.to_string()),
            ("grant_type", "authorization_code".into()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
            ("code_verifier", verifier.to_string()),
        ];
        client_auth(&mut form, app.cloud, tenant, &client_id, &app.credential).await?;
        let (_, parsed) = self.post_form(app.cloud, tenant, &form).await?;
        let refresh_token = parsed.refresh_token.clone().ok_or_else(|| {
            TokenError::Refused("no refresh token: was offline_access granted?".into())
        })?;
        let claims = parsed
            .id_token
            .as_deref()
            .map(jwt_claims)
            .unwrap_or_default();
        let uuid = |k: &str| claims[k].as_str().and_then(|v| Uuid::try_parse(v).ok());
        Ok(CodeRedemption {
            refresh_token,
            tenant_id: uuid("tid"),
            object_id: uuid("oid"),
            username: claims["preferred_username"].as_str().map(str::to_string),
        })
    }

    async fn post_form(
        &self,
        cloud: Cloud,
        tenant: &str,
        form: &[(&str, String)],
    ) -> Result<(AccessToken, TokenResponse), TokenError> {
        let url = format!("{}/{tenant}/oauth2/v2.0/token", self.endpoints.login(cloud));
        let body: String = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let response = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::Unavailable(format!("token response: {e}")))?;
            let parsed_expires = parsed.expires_in.clone();
            let expires_in = match &parsed_expires {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(3599);
            let lifetime = Duration::from_secs(expires_in);
            let refresh_at = started + lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2));
            return Ok((
                AccessToken {
                    token: parsed.access_token.clone().into(),
                    refresh_at,
                },
                parsed,
            ));
        }
        match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(e) if status.is_client_error() => Err(TokenError::from_aad(
                &e.error,
                &e.error_codes,
                &e.error_description,
            )),
            _ => Err(TokenError::Unavailable(format!(
                "token endpoint answered {}",
                status.as_u16()
            ))),
        }
    }
}

/// Adds the client's proof (secret or certificate assertion) to a token request.
async fn client_auth(
    form: &mut Vec<(&str, String)>,
    cloud: Cloud,
    tenant: &str,
    client_id: &str,
    credential: &AppCredential,
) -> Result<(), TokenError> {
    match credential {
        AppCredential::Secret(secret) => form.push(("client_secret", secret.clone())),
        AppCredential::Certificate {
            certificate_der,
            signer,
        } => {
            // the audience is the cloud's real token endpoint, wherever requests are sent
            let audience = format!("{}/{tenant}/oauth2/v2.0/token", cloud.authority());
            let assertion =
                client_assertion(client_id, &audience, certificate_der, signer.as_ref()).await?;
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion", assertion));
        }
        AppCredential::Delegated { .. } => {
            return Err(TokenError::InvalidClient(
                "a delegated credential cannot authenticate a client".into(),
            ));
        }
    }
    Ok(())
}

/// A signed client assertion: PS256, `x5t#S256`, `aud` the token endpoint, ten minutes.
pub async fn client_assertion(
    client_id: &str,
    audience: &str,
    certificate_der: &[u8],
    signer: &dyn AssertionSigner,
) -> Result<String, TokenError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header =
        json!({"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint_s256(certificate_der)});
    let claims = json!({
        "aud": audience, "iss": client_id, "sub": client_id, "jti": Uuid::new_v4().to_string(),
        "nbf": now, "iat": now, "exp": now + 600,
    });
    let mut input = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("JSON"));
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON")));
    let signature = signer.sign_ps256(input.as_bytes()).await.map_err(|e| {
        TokenError::InvalidClient(format!("signing the client assertion failed: {e}"))
    })?;
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_errors_are_typed_by_their_code() {
        let typed = |error: &str, codes: &[u64], description: &str| {
            TokenError::from_aad(error, codes, description)
        };
        assert!(matches!(
            typed(
                "invalid_request",
                &[90002],
                "AADSTS90002: Tenant 'x' not found."
            ),
            TokenError::TenantNotFound(_)
        ));
        assert!(matches!(
            typed(
                "invalid_request",
                &[900023],
                "AADSTS900023: Specified tenant identifier 'x y' is neither a valid DNS name, nor a valid external domain."
            ),
            TokenError::TenantNotFound(_)
        ));
        assert!(matches!(
            typed(
                "unauthorized_client",
                &[700016],
                "AADSTS700016: Application with identifier 'y' was not found in the directory 'z'."
            ),
            TokenError::ConsentMissing(_)
        ));
        assert!(matches!(
            typed(
                "unauthorized_client",
                &[7000112],
                "AADSTS7000112: Application 'y'(Connector) is disabled."
            ),
            TokenError::AppDisabled(_)
        ));
        for (code, description) in [
            (7000215, "AADSTS7000215: Invalid client secret provided."),
            (
                700027,
                "AADSTS700027: Client assertion failed signature validation.",
            ),
            (
                7000222,
                "AADSTS7000222: The provided client secret keys are expired.",
            ),
        ] {
            assert!(
                matches!(
                    typed("invalid_client", &[code], description),
                    TokenError::InvalidClient(_)
                ),
                "{code}"
            );
        }
        assert!(matches!(
            typed("temporarily_unavailable", &[], "AADSTS50001: x"),
            TokenError::Unavailable(_)
        ));
        assert!(matches!(
            typed(
                "invalid_scope",
                &[70011],
                "AADSTS70011: The scope is not valid."
            ),
            TokenError::Refused(_)
        ));
    }

    #[test]
    fn the_code_comes_from_error_codes_else_from_the_description() {
        assert!(matches!(
            TokenError::from_aad(
                "unauthorized_client",
                &[],
                "AADSTS7000112: Application 'y'(Connector) is disabled.\r\nTrace ID: 1"
            ),
            TokenError::AppDisabled(_)
        ));
        // the numeric list wins over a description that names another code first
        assert!(matches!(
            TokenError::from_aad("unauthorized_client", &[7000112], "something else"),
            TokenError::AppDisabled(_)
        ));
        let detail = TokenError::from_aad(
            "invalid_client",
            &[7000215],
            "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2",
        )
        .to_string();
        assert!(
            detail.ends_with("invalid_client: AADSTS7000215: Invalid client secret provided."),
            "only the first line: {detail}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        assert_eq!(
            format!("{:?}", AppCredential::Secret("hunter2".into())),
            "Secret(redacted)"
        );
        let t = AccessToken {
            token: "eyJ".into(),
            refresh_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("eyJ"));
    }
}
