//! A stand-in for Azure Key Vault handed to the real SDK clients as their HTTP transport:
//! it answers the first unauthenticated request with Key Vault's 401 challenge, then serves
//! secrets, RSA key creation and signing in Key Vault's documented JSON, signing with real
//! RSA keys so signatures verify.
//!
//! Secrets are soft-deleted as in every Key Vault (soft delete cannot be turned off): a
//! deleted secret keeps its name, a PUT of that name answers 409 `Conflict` with inner code
//! `ObjectIsDeletedButRecoverable` until `POST /deletedsecrets/{name}/recover`, and recovery
//! finishes in the background (GET answers 404 and PUT 409 `ObjectIsBeingRecovered` until
//! it has). Deletion is asynchronous too: the first PUT right after a DELETE answers 409
//! `ObjectIsBeingDeleted`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_lc_rs::digest::{Digest, SHA256};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Method, Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The token the fake credential hands out and the fake vault expects.
pub const VAULT_TOKEN: &str = "fake-key-vault-access-token";
/// A vault URI whose host passes the SDK's challenge-resource check.
pub const VAULT_URI: &str = "https://contoso-test.vault.azure.net/";

/// A credential that returns [`VAULT_TOKEN`] for Key Vault's scope.
#[derive(Debug, Default)]
pub struct FakeCredential {
    pub scopes: Mutex<Vec<String>>,
}

#[async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            VAULT_TOKEN,
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

/// A soft-deleted secret on its way back: its versions, and how many more GETs of its name
/// answer 404 before the recovery has finished.
struct Recovering {
    versions: Vec<String>,
    polls_left: u32,
}

#[derive(Default)]
struct State {
    secrets: HashMap<String, Vec<String>>,
    /// soft-deleted secrets: name -> versions, kept until recovered
    deleted_secrets: HashMap<String, Vec<String>>,
    /// names deleted so recently that the deletion is still under way
    being_deleted: std::collections::HashSet<String>,
    recovering: HashMap<String, Recovering>,
    /// GETs a recovery takes to finish (`None`: one; `Some(u32::MAX)`: never)
    recovery_polls: Option<u32>,
    keys: HashMap<String, Vec<RsaKeyPair>>,
    /// certificate name -> (DER, operation completed)
    certificates: HashMap<String, (Vec<u8>, bool)>,
    log: Vec<String>,
}

/// The fake's own certificate authority for self-signed requests: signs with the new key.
struct Issuer<'a> {
    pair: &'a RsaKeyPair,
}

impl rcgen::PublicKeyData for Issuer<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for Issuer<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg,
                &mut signature,
            )
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(signature)
    }
}

fn self_signed(pair: &RsaKeyPair, subject: &str, months: i64) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject.trim_start_matches("CN="));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(30 * months);
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).unwrap();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.self_signed(&Issuer { pair }).unwrap().der().to_vec()
}

fn certificate_bundle(name: &str, der: &[u8]) -> Value {
    use base64::engine::general_purpose::STANDARD;
    let thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    json!({
        "id": format!("{VAULT_URI}certificates/{name}/1"),
        "kid": format!("{VAULT_URI}keys/{name}/1"),
        "sid": format!("{VAULT_URI}secrets/{name}/1"),
        "x5t": URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
        "cer": STANDARD.encode(der),
        "attributes": attributes(),
    })
}

/// The fake vault.
#[derive(Default)]
pub struct FakeKeyVault {
    state: Mutex<State>,
}

impl std::fmt::Debug for FakeKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeKeyVault")
    }
}

impl FakeKeyVault {
    /// Requests seen: `METHOD /path auth=<none|bearer|wrong>`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Makes a recovery finish only after `polls` GETs of the secret (`u32::MAX`: never), as
    /// a slow Key Vault would; the default is one.
    pub fn recovery_takes(&self, polls: u32) {
        self.state.lock().unwrap().recovery_polls = Some(polls);
    }
}

/// Key Vault's 409 for a name in one of the soft-delete states: the top-level code is
/// `Conflict`, the state is the inner error's code.
fn conflict(inner: &str, message: String) -> AsyncRawResponse {
    respond(
        409,
        json!({"error": {"code": "Conflict", "message": message, "innererror": {"code": inner}}}),
    )
}

fn respond(status: u16, body: Value) -> AsyncRawResponse {
    let mut headers = Headers::new();
    headers.insert("content-type", "application/json; charset=utf-8");
    AsyncRawResponse::from_bytes(
        StatusCode::from(status),
        headers,
        serde_json::to_vec(&body).unwrap(),
    )
}

fn not_found(code: &str, what: &str) -> AsyncRawResponse {
    respond(
        404,
        json!({"error": {"code": code, "message": format!("A {what} was not found in this key vault.")}}),
    )
}

fn attributes() -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({"enabled": true, "created": now, "updated": now, "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90})
}

fn key_bundle(name: &str, version: usize, pair: &RsaKeyPair) -> Value {
    let public = pair.public_key();
    json!({
        "key": {
            "kid": format!("{}keys/{name}/{version:032x}", VAULT_URI),
            "kty": "RSA",
            "key_ops": ["sign", "verify"],
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        },
        "attributes": attributes(),
    })
}

#[async_trait]
impl HttpClient for FakeKeyVault {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let url = request.url().clone();
        let path = url.path().to_string();
        let method = request.method();
        let auth = request
            .headers()
            .get_optional_str(&HeaderName::from_static("authorization"));
        let auth_kind = match auth {
            None => "none",
            Some(a) if a == format!("Bearer {VAULT_TOKEN}") => "bearer",
            Some(_) => "wrong",
        };
        let mut state = self.state.lock().unwrap();
        state.log.push(format!("{method} {path} auth={auth_kind}"));
        if auth_kind != "bearer" {
            // Key Vault's challenge: where to get a token, and for which resource
            let mut headers = Headers::new();
            headers.insert(
                "www-authenticate",
                "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47\", resource=\"https://vault.azure.net\"",
            );
            headers.insert("content-type", "application/json; charset=utf-8");
            let body = json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}});
            return Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(401),
                headers,
                serde_json::to_vec(&body).unwrap(),
            ));
        }
        if !url.query_pairs().any(|(k, _)| k == "api-version") {
            return Ok(respond(
                400,
                json!({"error": {"code": "MissingApiVersionParameter", "message": "api-version is required"}}),
            ));
        }
        let body: Value = match request.body() {
            Body::Bytes(b) if !b.is_empty() => serde_json::from_slice(b).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let response = match (method, segments.as_slice()) {
            (Method::Put, ["secrets", name]) if state.being_deleted.remove(*name) => conflict(
                "ObjectIsBeingDeleted",
                format!("Secret {name} is currently being deleted."),
            ),
            (Method::Put, ["secrets", name]) if state.deleted_secrets.contains_key(*name) => {
                conflict(
                    "ObjectIsDeletedButRecoverable",
                    format!(
                        "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
                    ),
                )
            }
            (Method::Put, ["secrets", name]) if state.recovering.contains_key(*name) => conflict(
                "ObjectIsBeingRecovered",
                format!(
                    "Secret {name} is currently being recovered and cannot be re-created; retry later."
                ),
            ),
            (Method::Post, ["deletedsecrets", name, "recover"]) => {
                match state.deleted_secrets.remove(*name) {
                    Some(versions) => {
                        let polls_left = state.recovery_polls.unwrap_or(1);
                        state.being_deleted.remove(*name);
                        state.recovering.insert(
                            name.to_string(),
                            Recovering {
                                versions,
                                polls_left,
                            },
                        );
                        // the bundle of the recovered secret, without its value
                        respond(
                            200,
                            json!({"id": format!("{VAULT_URI}secrets/{name}/1"), "attributes": attributes()}),
                        )
                    }
                    None => not_found("SecretNotFound", &format!("deleted secret {name}")),
                }
            }
            (Method::Get, ["secrets", name] | ["secrets", name, ""])
                if state.recovering.contains_key(*name) =>
            {
                let recovering = state.recovering.get_mut(*name).unwrap();
                if recovering.polls_left == 0 {
                    let versions = state.recovering.remove(*name).unwrap().versions;
                    let value = versions.last().cloned().unwrap_or_default();
                    state.secrets.insert(name.to_string(), versions);
                    respond(
                        200,
                        json!({"value": value, "id": format!("{VAULT_URI}secrets/{name}"), "attributes": attributes()}),
                    )
                } else {
                    recovering.polls_left = recovering.polls_left.saturating_sub(1);
                    not_found("SecretNotFound", &format!("secret with (name/id) {name}"))
                }
            }
            (Method::Put, ["secrets", name]) => {
                let Some(value) = body["value"].as_str() else {
                    return Ok(respond(
                        400,
                        json!({"error": {"code": "BadParameter", "message": "value is required"}}),
                    ));
                };
                let versions = state.secrets.entry(name.to_string()).or_default();
                versions.push(value.to_string());
                respond(
                    200,
                    json!({"value": value, "id": format!("{VAULT_URI}secrets/{name}/{:032x}", versions.len()), "attributes": attributes()}),
                )
            }
            (Method::Get, ["secrets", name] | ["secrets", name, ""]) => {
                match state.secrets.get(*name).and_then(|v| v.last()) {
                    Some(value) => respond(
                        200,
                        json!({"value": value, "id": format!("{VAULT_URI}secrets/{name}"), "attributes": attributes()}),
                    ),
                    None => not_found("SecretNotFound", &format!("secret with (name/id) {name}")),
                }
            }
            (Method::Delete, ["secrets", name]) => match state.secrets.remove(*name) {
                Some(versions) => {
                    // soft delete: the name stays taken until the secret is recovered
                    state.deleted_secrets.insert(name.to_string(), versions);
                    state.being_deleted.insert(name.to_string());
                    respond(
                        200,
                        json!({"recoveryId": format!("{VAULT_URI}deletedsecrets/{name}"), "id": format!("{VAULT_URI}secrets/{name}"), "attributes": attributes()}),
                    )
                }
                None => not_found("SecretNotFound", &format!("secret with (name/id) {name}")),
            },
            (Method::Post, ["keys", name, "create"]) => {
                if body["kty"] != "RSA" {
                    return Ok(respond(
                        400,
                        json!({"error": {"code": "BadParameter", "message": "kty"}}),
                    ));
                }
                let size = match body["key_size"].as_u64() {
                    Some(3072) => KeySize::Rsa3072,
                    Some(4096) => KeySize::Rsa4096,
                    _ => KeySize::Rsa2048,
                };
                let pair = RsaKeyPair::generate(size).expect("RSA key");
                let versions = state.keys.entry(name.to_string()).or_default();
                versions.push(pair);
                respond(
                    200,
                    key_bundle(name, versions.len(), versions.last().unwrap()),
                )
            }
            (Method::Get, ["keys", name] | ["keys", name, ""]) => match state.keys.get(*name) {
                Some(versions) => respond(
                    200,
                    key_bundle(name, versions.len(), versions.last().unwrap()),
                ),
                None => not_found("KeyNotFound", &format!("key with (name/id) {name}")),
            },
            (Method::Post, ["keys", name, "sign"] | ["keys", name, _, "sign"]) => {
                let Some(pair) = state.keys.get(*name).and_then(|v| v.last()) else {
                    return Ok(not_found(
                        "KeyNotFound",
                        &format!("key with (name/id) {name}"),
                    ));
                };
                let digest = body["value"]
                    .as_str()
                    .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                    .unwrap_or_default();
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    match body["alg"].as_str() {
                        Some("PS256") => &RSA_PSS_SHA256,
                        Some("RS256") => &RSA_PKCS1_SHA256,
                        _ => {
                            return Ok(respond(
                                400,
                                json!({"error": {"code": "BadParameter", "message": "alg"}}),
                            ));
                        }
                    };
                let Ok(digest) = Digest::import_less_safe(&digest, &SHA256) else {
                    return Ok(respond(
                        400,
                        json!({"error": {"code": "BadParameter", "message": "digest length"}}),
                    ));
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign_digest(padding, &digest, &mut signature)
                    .expect("signing");
                respond(
                    200,
                    json!({"kid": format!("{VAULT_URI}keys/{name}/1"), "value": URL_SAFE_NO_PAD.encode(signature)}),
                )
            }
            (Method::Post, ["certificates", name, "create"]) => {
                let policy = &body["policy"];
                if policy["issuer"]["name"] != "Self" || policy["key_props"]["kty"] != "RSA" {
                    return Ok(respond(
                        400,
                        json!({"error": {"code": "BadParameter", "message": "only self-issued RSA certificates"}}),
                    ));
                }
                let subject = policy["x509_props"]["subject"]
                    .as_str()
                    .unwrap_or("CN=unnamed")
                    .to_string();
                let months = policy["x509_props"]["validity_months"]
                    .as_i64()
                    .unwrap_or(12);
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
                let der = self_signed(&pair, &subject, months);
                state.keys.entry(name.to_string()).or_default().push(pair);
                state.certificates.insert(name.to_string(), (der, false));
                let mut headers = Headers::new();
                headers.insert("content-type", "application/json; charset=utf-8");
                headers.insert("retry-after-ms", "10");
                let operation = json!({
                    "id": format!("{VAULT_URI}certificates/{name}/pending"),
                    "status": "inProgress",
                    "status_details": "Pending certificate created. Certificate request is in progress.",
                    "target": format!("{VAULT_URI}certificates/{name}"),
                });
                return Ok(AsyncRawResponse::from_bytes(
                    StatusCode::from(202),
                    headers,
                    serde_json::to_vec(&operation).unwrap(),
                ));
            }
            (Method::Get, ["certificates", name, "pending"]) => {
                match state.certificates.get_mut(*name) {
                    Some((_, done)) => {
                        *done = true;
                        respond(
                            200,
                            json!({"id": format!("{VAULT_URI}certificates/{name}/pending"), "status": "completed", "target": format!("{VAULT_URI}certificates/{name}")}),
                        )
                    }
                    None => not_found(
                        "CertificateNotFound",
                        &format!("certificate operation {name}"),
                    ),
                }
            }
            (Method::Get, ["certificates", name] | ["certificates", name, ""]) => {
                match state.certificates.get(*name) {
                    Some((der, true)) => respond(200, certificate_bundle(name, der)),
                    _ => not_found(
                        "CertificateNotFound",
                        &format!("certificate with (name/id) {name}"),
                    ),
                }
            }
            _ => respond(
                400,
                json!({"error": {"code": "BadRequest", "message": format!("unsupported {method} {path}")}}),
            ),
        };
        Ok(response)
    }
}
