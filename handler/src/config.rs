//! Settings, read once from the environment at start-up. A missing or malformed setting
//! stops start-up with one line naming it; values that hold secrets are never echoed.

use std::collections::HashMap;
use std::sync::Arc;

use std::path::PathBuf;

use tables::StorageAccount;
use url::Url;
use uuid::Uuid;

/// Port used when no Functions host chose one.
pub const DEFAULT_PORT: u16 = 7071;

/// A setting that is missing or malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

/// A whole number of `unit_secs`-second units within `range` (`default` when unset), as a
/// duration; anything else names the setting and its range.
fn duration_setting<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit_secs: u64,
    unit: &str,
) -> Result<std::time::Duration, ConfigError> {
    let value = match get(name) {
        None => default,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                problem(
                    name,
                    format!("{raw:?}: {}-{} {unit}", range.start(), range.end()),
                )
            })?,
    };
    Ok(std::time::Duration::from_secs(value * unit_secs))
}

/// Variables the platform sets on Azure instances and a local run does not. App Service
/// plans set `WEBSITE_INSTANCE_ID`; Flex Consumption instances lack it and have
/// `WEBSITE_SKU` and the container's `CONTAINER_NAME` or `WEBSITE_POD_NAME` with
/// `LEGION_SERVICE_HOST` (what the Functions host itself tests, `IsFlexConsumptionSku`).
/// Any one of them counts, so that a variable the platform drops later still leaves
/// the others.
const AZURE_MARKERS: [&str; 5] = [
    "WEBSITE_INSTANCE_ID",
    "WEBSITE_SKU",
    "CONTAINER_NAME",
    "WEBSITE_POD_NAME",
    "LEGION_SERVICE_HOST",
];

/// The first Azure marker `is_set` reports, if any: the handler runs in Azure then, where
/// local-only settings (the local vault, development tokens) are refused.
pub fn azure_marker(is_set: impl Fn(&str) -> bool) -> Option<&'static str> {
    AZURE_MARKERS.into_iter().find(|name| is_set(name))
}

/// [`azure_marker`] of this process's environment (an empty variable is not set).
pub fn azure_marker_in_env() -> Option<&'static str> {
    azure_marker(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

fn problem(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        problem: problem.into(),
    }
}

/// How logs are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for Application Insights and log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// Where Table (and later Queue) Storage is, and how to authenticate.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// A connection string (`UseDevelopmentStorage=true` or account name and key).
    ConnectionString(StorageAccount),
    /// An identity-based connection: managed identity, optionally user-assigned.
    Identity {
        table_endpoint: Url,
        queue_endpoint: Option<Url>,
        client_id: Option<String>,
    },
}

/// Everything the handler reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: the port to bind on 127.0.0.1.
    pub port: u16,
    /// `AzureWebJobsStorage` or its `__` identity-based variant.
    pub storage: StorageSettings,
    /// `STORAGE_TABLE_PREFIX`: prepended to every table name (test runs sharing one account;
    /// queues are not prefixed, so a deployment needs its own account).
    pub table_prefix: String,
    /// `LOG_FORMAT`: `json` or `text`.
    pub log_format: LogFormat,
    /// `LOG_LEVEL`: a tracing filter such as `info` or `handler=debug,info`.
    pub log_level: String,
    /// Entra settings: who we are, who administers us, where Microsoft is.
    pub entra: EntraSettings,
    /// `CONNECTOR_SCOPES`: the product's scopes that grants may give.
    pub connector_scopes: Vec<String>,
    /// `LOCAL_DATA_DIR`: files of local runs (the development signing key).
    pub local_data_dir: PathBuf,
    /// `PUBLIC_BASE_URL`: where browsers reach this service (activation links, consent redirect).
    pub public_base_url: Url,
    /// `CONSENT_CONFIRM_SECONDS`: how long a consent callback waits for Microsoft to confirm.
    pub consent_confirm: std::time::Duration,
    /// `CONSENT_PENDING_MINUTES`: how long housekeeping keeps trying to confirm a pending
    /// tenant before dropping it.
    pub consent_pending: std::time::Duration,
    /// `SCIM_READ_CACHE_SECONDS`: how long SCIM GETs may serve a user this instance read.
    pub scim_read_cache: std::time::Duration,
    /// `KEY_VAULT_URI` (and `KEY_VAULT_CLIENT_ID`): Azure Key Vault; unset means the local vault.
    pub key_vault: Option<KeyVaultSettings>,
    /// `SYNC_INTERVAL_MINUTES`: how often each tenant's directory is synced from Graph.
    pub sync_interval: std::time::Duration,
    /// `SYNC_LEASE_SECONDS`: how long a tenant's sync lease lasts unless renewed; a round
    /// of an instance that died resumes elsewhere after it.
    pub sync_lease: std::time::Duration,
    /// `QUEUE_VISIBILITY_SECONDS` and `QUEUE_MAX_POLLING_SECONDS`: how `handler serve`
    /// listens to Storage queues (under the Functions host, the host does).
    pub queues: host::QueueSettings,
    /// `CERT_*`: certificate issuance for the tenants' users.
    pub certificates: CertificateSettings,
    /// `HR_MAX_DISABLE_PERCENT`: a plan disabling more than this share of a tenant's users
    /// is applied only when confirmed explicitly.
    pub hr_max_disable_percent: f64,
    /// `AUDIT_RETENTION_DAYS`: how long audit events are kept (Housekeeping trims by day).
    pub audit_retention_days: u32,
    /// `SMTP_*`: the relay notification e-mails go through; None without `SMTP_HOST`.
    pub smtp: Option<crate::notifications::SmtpSettings>,
}

/// How certificates are issued and revoked.
#[derive(Debug, Clone, Copy)]
pub struct CertificateSettings {
    /// `CERT_DEFAULT_VALIDITY_DAYS`: validity when a request names none (1-3650).
    pub default_validity_days: u32,
    /// `CERT_DEFAULT_KEY_SIZE`: RSA size of server-made keys when a request names none.
    pub default_key_size: u32,
    /// `CERT_REVOKE_ON_DISABLE`: revoke a user's certificates when Graph sync or SCIM
    /// disables or deletes the user.
    pub revoke_on_disable: bool,
    /// `CERT_KEY_POOL_SIZE`: 3072- and 4096-bit keys kept ready, per size (0-16).
    pub key_pool_size: usize,
}

/// Where Key Vault is and which managed identity reaches it.
#[derive(Debug, Clone)]
pub struct KeyVaultSettings {
    pub uri: Url,
    pub client_id: Option<String>,
}

/// The Entra side of the settings.
#[derive(Debug, Clone)]
pub struct EntraSettings {
    /// `ENTRA_CLIENT_ID`: our app registration's client id, the audience of our tokens.
    pub client_id: Uuid,
    /// `ENTRA_CLIENT_ID_<CLOUD>`: the app registration in a national cloud, where it differs
    /// (an app is registered per cloud).
    pub cloud_client_ids: Vec<(entra::Cloud, Uuid)>,
    /// `ENTRA_APP_ID_URI`: our App ID URI, also accepted as audience (v1 tokens).
    pub app_id_uri: Option<String>,
    /// `ENTRA_ADMIN_TENANT_ID`: the operator's home tenant, whose admins manage this service.
    pub admin_tenant_id: Uuid,
    /// `ENTRA_ADMIN_CLOUD`: the cloud of the operator's tenant.
    pub admin_cloud: entra::Cloud,
    /// `ENTRA_ADMIN_ROLE`: the app role admin tokens must carry.
    pub admin_role: String,
    /// `ENTRA_LOGIN_ENDPOINT` / `GRAPH_ENDPOINT` overrides.
    pub endpoints: entra::Endpoints,
    /// `ENTRA_DEV_AUTH`: trust the local development signing key.
    pub dev_auth: bool,
    /// `ENTRA_CLIENT_SECRET`: the app's client secret (in Azure a Key Vault reference).
    pub client_secret: Option<Secret>,
}

impl EntraSettings {
    /// Our app's client id in a cloud.
    pub fn client_id_in(&self, cloud: entra::Cloud) -> Uuid {
        self.cloud_client_ids
            .iter()
            .find(|(c, _)| *c == cloud)
            .map_or(self.client_id, |(_, id)| *id)
    }

    /// Every client id of our app: each is an accepted token audience.
    pub fn all_client_ids(&self) -> Vec<Uuid> {
        let mut ids = vec![self.client_id];
        ids.extend(
            self.cloud_client_ids
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| *id != self.client_id),
        );
        ids
    }
}

/// A secret setting: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        // vars_os: a variable that is not UTF-8 (not one of ours) must not panic start-up
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Settings::from_map(&env)
    }

    /// Reads settings from a map (the environment, or a test's).
    pub fn from_map(env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let port = match get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                problem(
                    "FUNCTIONS_CUSTOMHANDLER_PORT",
                    format!("{p:?} is not a port number (1-65535)"),
                )
            })?,
        };
        let storage = storage_settings(&get)?;
        let table_prefix = get("STORAGE_TABLE_PREFIX").unwrap_or_default().to_string();
        if table_prefix.len() > 20 || !table_prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(problem(
                "STORAGE_TABLE_PREFIX",
                "use at most 20 letters and digits",
            ));
        }
        if table_prefix.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(problem(
                "STORAGE_TABLE_PREFIX",
                "must start with a letter (table names do)",
            ));
        }
        let log_format = match get("LOG_FORMAT").map(str::to_ascii_lowercase).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(problem(
                    "LOG_FORMAT",
                    format!("{other:?}; expected json or text"),
                ));
            }
        };
        let log_level = get("LOG_LEVEL").unwrap_or("info").to_string();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(problem(
                "LOG_LEVEL",
                format!("{log_level:?} is not a level or tracing filter"),
            ));
        }
        let entra = entra_settings(&get)?;
        let connector_scopes = connector_scopes(get("CONNECTOR_SCOPES").unwrap_or_default())?;
        let local_data_dir = PathBuf::from(get("LOCAL_DATA_DIR").unwrap_or(".local-data"));
        let public_base_url = match get("PUBLIC_BASE_URL") {
            None => Url::parse(&format!("http://127.0.0.1:{port}")).expect("a loopback URL parses"),
            Some(raw) => {
                let url = tables::account::parse_endpoint("URL", raw)
                    .map_err(|p| problem("PUBLIC_BASE_URL", p))?;
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(problem(
                        "PUBLIC_BASE_URL",
                        "must not have a query or fragment",
                    ));
                }
                url
            }
        };
        let in_azure = azure_marker(|name| get(name).is_some()).is_some();
        if in_azure && get("KEY_VAULT_URI").is_none() {
            return Err(problem(
                "KEY_VAULT_URI",
                "is required in Azure (the local vault is for local runs only)",
            ));
        }
        if in_azure && get("PUBLIC_BASE_URL").is_none() {
            return Err(problem(
                "PUBLIC_BASE_URL",
                "is required in Azure (activation links and the consent redirect use it)",
            ));
        }
        let key_vault = match get("KEY_VAULT_URI") {
            None => None,
            Some(raw) => {
                let uri = Url::parse(raw)
                    .map_err(|e| problem("KEY_VAULT_URI", format!("{raw:?} is not a URL ({e})")))?;
                if uri.scheme() != "https" {
                    return Err(problem(
                        "KEY_VAULT_URI",
                        "must be https (https://<name>.vault.azure.net/)",
                    ));
                }
                Some(KeyVaultSettings {
                    uri,
                    client_id: get("KEY_VAULT_CLIENT_ID").map(str::to_string),
                })
            }
        };
        let seconds =
            |name, default, range| duration_setting(&get, name, default, range, 1, "seconds");
        let minutes =
            |name, default, range| duration_setting(&get, name, default, range, 60, "minutes");
        let consent_confirm = seconds("CONSENT_CONFIRM_SECONDS", 20, 0..=120)?;
        // at most 7 days
        let consent_pending = minutes("CONSENT_PENDING_MINUTES", 1440, 0..=10080)?;
        let scim_read_cache = seconds("SCIM_READ_CACHE_SECONDS", 5, 0..=60)?;
        let sync_interval = minutes("SYNC_INTERVAL_MINUTES", 45, 5..=1440)?;
        let sync_lease = seconds("SYNC_LEASE_SECONDS", 60, 3..=600)?;
        let queue_visibility = seconds("QUEUE_VISIBILITY_SECONDS", 60, 3..=600)?;
        let queue_max_polling = seconds("QUEUE_MAX_POLLING_SECONDS", 2, 1..=60)?;
        let queues = host::QueueSettings {
            visibility: queue_visibility,
            max_polling_interval: queue_max_polling,
            ..host::QueueSettings::default()
        };
        let certificates = certificate_settings(&get)?;
        let hr_max_disable_percent = match get("HR_MAX_DISABLE_PERCENT") {
            None => 5.0,
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| problem("HR_MAX_DISABLE_PERCENT", format!("{raw:?}: 0-100")))?,
        };
        let audit_retention_days = match get("AUDIT_RETENTION_DAYS") {
            None => 90,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| {
                    problem(
                        "AUDIT_RETENTION_DAYS",
                        format!("{raw:?}: expected a number of days (1-3650)"),
                    )
                })?,
        };
        let smtp = match get("SMTP_HOST") {
            None => None,
            Some(host) => {
                let port = match get("SMTP_PORT") {
                    None => 587,
                    Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                        problem("SMTP_PORT", format!("{p:?} is not a port number"))
                    })?,
                };
                let from = get("SMTP_FROM").ok_or_else(|| {
                    problem(
                        "SMTP_FROM",
                        "is required with SMTP_HOST (the sender address)",
                    )
                })?;
                from.parse::<lettre::message::Mailbox>()
                    .map_err(|e| problem("SMTP_FROM", format!("{from:?}: {e}")))?;
                let username = get("SMTP_USERNAME").map(str::to_string);
                let password_secret = get("SMTP_PASSWORD_SECRET_NAME").map(str::to_string);
                if username.is_some() != password_secret.is_some() {
                    return Err(problem(
                        "SMTP_PASSWORD_SECRET_NAME",
                        "SMTP_USERNAME and SMTP_PASSWORD_SECRET_NAME go together",
                    ));
                }
                Some(crate::notifications::SmtpSettings {
                    host: host.to_string(),
                    port,
                    username,
                    password_secret,
                    from: from.to_string(),
                    ca_file: get("SMTP_CA_FILE").map(PathBuf::from),
                })
            }
        };
        Ok(Settings {
            port,
            storage,
            table_prefix,
            log_format,
            log_level,
            entra,
            connector_scopes,
            local_data_dir,
            public_base_url,
            consent_confirm,
            consent_pending,
            scim_read_cache,
            key_vault,
            sync_interval,
            sync_lease,
            queues,
            certificates,
            hr_max_disable_percent,
            audit_retention_days,
            smtp,
        })
    }

    /// The vault: Key Vault with a managed identity when `KEY_VAULT_URI` is set, otherwise
    /// the local vault under `LOCAL_DATA_DIR/vault` (local runs only).
    pub fn vault(&self) -> Result<Arc<dyn vault::Vault>, ConfigError> {
        match &self.key_vault {
            None => Ok(Arc::new(vault::LocalVault::new(
                self.local_data_dir.join("vault"),
            ))),
            Some(kv) => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: kv
                        .client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                let credential = azure_identity::ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| {
                        problem("KEY_VAULT_CLIENT_ID", format!("managed identity: {e}"))
                    })?;
                let vault = vault::KeyVault::new(kv.uri.as_str(), credential, None)
                    .map_err(|e| problem("KEY_VAULT_URI", e.to_string()))?;
                Ok(Arc::new(vault))
            }
        }
    }

    /// The storage account the stores use; builds the managed identity credential when needed
    /// (no network call happens until the first token is requested).
    pub fn storage_account(&self) -> Result<StorageAccount, ConfigError> {
        match &self.storage {
            StorageSettings::ConnectionString(account) => Ok(account.clone()),
            StorageSettings::Identity {
                table_endpoint,
                queue_endpoint,
                client_id,
            } => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                let credential = azure_identity::ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| {
                        problem(
                            "AzureWebJobsStorage__credential",
                            format!("managed identity: {e}"),
                        )
                    })?;
                Ok(StorageAccount::with_token(
                    table_endpoint.clone(),
                    queue_endpoint.clone(),
                    credential as Arc<dyn azure_core::credentials::TokenCredential>,
                ))
            }
        }
    }
}

fn guid(name: &'static str, value: Option<&str>) -> Result<Uuid, ConfigError> {
    let value = value.ok_or_else(|| problem(name, "is not set (a GUID)"))?;
    Uuid::try_parse(value).map_err(|_| problem(name, format!("{value:?} is not a GUID")))
}

fn entra_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<EntraSettings, ConfigError> {
    let client_id = guid("ENTRA_CLIENT_ID", get("ENTRA_CLIENT_ID"))?;
    let mut cloud_client_ids = Vec::new();
    for (cloud, name) in [
        (entra::Cloud::UsGov, "ENTRA_CLIENT_ID_USGOV"),
        (entra::Cloud::UsGovDod, "ENTRA_CLIENT_ID_USGOVDOD"),
        (entra::Cloud::China, "ENTRA_CLIENT_ID_CHINA"),
    ] {
        if let Some(value) = get(name) {
            cloud_client_ids.push((cloud, guid(name, Some(value))?));
        }
    }
    let app_id_uri = get("ENTRA_APP_ID_URI").map(str::to_string);
    if let Some(uri) = &app_id_uri
        && Url::parse(uri).is_err()
    {
        return Err(problem(
            "ENTRA_APP_ID_URI",
            format!("{uri:?} is not a URI (e.g. api://<client id>)"),
        ));
    }
    let admin_tenant_id = guid("ENTRA_ADMIN_TENANT_ID", get("ENTRA_ADMIN_TENANT_ID"))?;
    let admin_cloud = get("ENTRA_ADMIN_CLOUD")
        .unwrap_or("global")
        .parse()
        .map_err(|e: entra::cloud::UnknownCloud| problem("ENTRA_ADMIN_CLOUD", e.to_string()))?;
    let admin_role = get("ENTRA_ADMIN_ROLE")
        .unwrap_or("Integration.Manage")
        .to_string();
    let login = get("ENTRA_LOGIN_ENDPOINT");
    let graph = get("GRAPH_ENDPOINT");
    entra::Endpoints::new(login, None).map_err(|p| problem("ENTRA_LOGIN_ENDPOINT", p))?;
    let endpoints =
        entra::Endpoints::new(login, graph).map_err(|p| problem("GRAPH_ENDPOINT", p))?;
    let dev_auth = match get("ENTRA_DEV_AUTH")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(problem(
                "ENTRA_DEV_AUTH",
                format!("{other:?}; expected true or false"),
            ));
        }
    };
    if let Some(marker) = azure_marker(|name| get(name).is_some()).filter(|_| dev_auth) {
        return Err(problem(
            "ENTRA_DEV_AUTH",
            format!(
                "development tokens are never trusted in Azure ({marker} is set); remove the setting"
            ),
        ));
    }
    Ok(EntraSettings {
        client_id,
        cloud_client_ids,
        app_id_uri,
        admin_tenant_id,
        admin_cloud,
        admin_role,
        endpoints,
        dev_auth,
        client_secret: get("ENTRA_CLIENT_SECRET").map(|s| Secret(s.to_string())),
    })
}

fn connector_scopes(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let valid = scope.len() <= 120
            && scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !valid {
            return Err(problem(
                "CONNECTOR_SCOPES",
                format!("{scope:?}: scope names use letters, digits and . _ - :"),
            ));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_string());
        }
    }
    Ok(scopes)
}

fn certificate_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<CertificateSettings, ConfigError> {
    let default_validity_days = match get("CERT_DEFAULT_VALIDITY_DAYS") {
        None => 365,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| {
                problem(
                    "CERT_DEFAULT_VALIDITY_DAYS",
                    format!("{raw:?}: 1-3650 days"),
                )
            })?,
    };
    let default_key_size = match get("CERT_DEFAULT_KEY_SIZE") {
        None => 2048,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|b| [2048, 3072, 4096].contains(b))
            .ok_or_else(|| {
                problem(
                    "CERT_DEFAULT_KEY_SIZE",
                    format!("{raw:?}: 2048, 3072 or 4096"),
                )
            })?,
    };
    let revoke_on_disable = match get("CERT_REVOKE_ON_DISABLE")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(problem(
                "CERT_REVOKE_ON_DISABLE",
                format!("{other:?}; expected true or false"),
            ));
        }
    };
    let key_pool_size = match get("CERT_KEY_POOL_SIZE") {
        None => 2,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 16)
            .ok_or_else(|| problem("CERT_KEY_POOL_SIZE", format!("{raw:?}: 0-16 keys")))?,
    };
    Ok(CertificateSettings {
        default_validity_days,
        default_key_size,
        revoke_on_disable,
        key_pool_size,
    })
}

const STORAGE: &str = "AzureWebJobsStorage";

fn storage_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<StorageSettings, ConfigError> {
    if let Some(connection) = get(STORAGE) {
        return StorageAccount::from_connection_string(connection)
            .map(StorageSettings::ConnectionString)
            .map_err(|p| problem(STORAGE, p));
    }
    let account = get("AzureWebJobsStorage__accountName");
    let table = match (get("AzureWebJobsStorage__tableServiceUri"), account) {
        (Some(uri), _) => tables::account::parse_endpoint("table endpoint", uri)
            .map_err(|p| problem("AzureWebJobsStorage__tableServiceUri", p))?,
        (None, Some(name)) => Url::parse(&format!("https://{name}.table.core.windows.net"))
            .map_err(|_| {
                problem(
                    "AzureWebJobsStorage__accountName",
                    "is not a storage account name",
                )
            })?,
        (None, None) => {
            return Err(problem(
                STORAGE,
                "is not set; use UseDevelopmentStorage=true for Azurite, a connection string, or AzureWebJobsStorage__tableServiceUri with a managed identity",
            ));
        }
    };
    let queue = match (get("AzureWebJobsStorage__queueServiceUri"), account) {
        (Some(uri), _) => Some(
            tables::account::parse_endpoint("queue endpoint", uri)
                .map_err(|p| problem("AzureWebJobsStorage__queueServiceUri", p))?,
        ),
        (None, Some(name)) => Url::parse(&format!("https://{name}.queue.core.windows.net")).ok(),
        (None, None) => None,
    };
    match get("AzureWebJobsStorage__credential") {
        None | Some("managedidentity") => {}
        Some(other) => {
            return Err(problem(
                "AzureWebJobsStorage__credential",
                format!("{other:?}; only managedidentity is supported"),
            ));
        }
    }
    Ok(StorageSettings::Identity {
        table_endpoint: table,
        queue_endpoint: queue,
        client_id: get("AzureWebJobsStorage__clientId").map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRA: [(&str, &str); 2] = [
        ("ENTRA_CLIENT_ID", "6e74172b-be56-4843-9ff4-e66a39bb12e3"),
        (
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
        ),
    ];

    /// Settings from `pairs`, with the required Entra settings unless `pairs` names them.
    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut map: HashMap<String, String> = ENTRA
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_map(&map)
    }

    #[test]
    fn entra_settings_are_checked() {
        let dev = ("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        let s = settings(&[
            dev,
            (
                "CONNECTOR_SCOPES",
                "records.read, records.write,records.read",
            ),
        ])
        .unwrap();
        assert_eq!(s.connector_scopes, ["records.read", "records.write"]);
        assert_eq!(s.entra.admin_role, "Integration.Manage");
        assert_eq!(s.entra.admin_cloud, entra::Cloud::Global);
        assert!(!s.entra.dev_auth);
        for (pairs, name, needle) in [
            (
                vec![dev, ("ENTRA_CLIENT_ID", "")],
                "ENTRA_CLIENT_ID",
                "not set",
            ),
            (
                vec![dev, ("ENTRA_CLIENT_ID", "my-app")],
                "ENTRA_CLIENT_ID",
                "not a GUID",
            ),
            (
                vec![dev, ("ENTRA_ADMIN_TENANT_ID", "contoso.com")],
                "ENTRA_ADMIN_TENANT_ID",
                "not a GUID",
            ),
            (
                vec![dev, ("ENTRA_ADMIN_CLOUD", "mars")],
                "ENTRA_ADMIN_CLOUD",
                "unknown cloud",
            ),
            (
                vec![dev, ("ENTRA_LOGIN_ENDPOINT", "http://login.example.com")],
                "ENTRA_LOGIN_ENDPOINT",
                "plain http",
            ),
            (
                vec![dev, ("GRAPH_ENDPOINT", "nope")],
                "GRAPH_ENDPOINT",
                "not a URL",
            ),
            (
                vec![dev, ("ENTRA_DEV_AUTH", "yes please")],
                "ENTRA_DEV_AUTH",
                "expected true",
            ),
            (
                vec![
                    dev,
                    ("ENTRA_DEV_AUTH", "true"),
                    ("WEBSITE_INSTANCE_ID", "abc"),
                ],
                "ENTRA_DEV_AUTH",
                "never trusted in Azure",
            ),
            (
                vec![dev, ("CONNECTOR_SCOPES", "records read")],
                "CONNECTOR_SCOPES",
                "scope names",
            ),
        ] {
            let err = settings(&pairs).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let dev_ok = settings(&[dev, ("ENTRA_DEV_AUTH", "true")]).unwrap();
        assert!(dev_ok.entra.dev_auth);
        let china = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let per_cloud = settings(&[dev, ("ENTRA_CLIENT_ID_CHINA", china)]).unwrap();
        assert_eq!(
            per_cloud
                .entra
                .client_id_in(entra::Cloud::China)
                .to_string(),
            china
        );
        assert_eq!(
            per_cloud.entra.client_id_in(entra::Cloud::UsGov),
            per_cloud.entra.client_id
        );
        assert_eq!(per_cloud.entra.all_client_ids().len(), 2);
        let err = settings(&[dev, ("ENTRA_CLIENT_ID_USGOV", "x")]).unwrap_err();
        assert_eq!(err.name, "ENTRA_CLIENT_ID_USGOV");
        let azure = ("WEBSITE_INSTANCE_ID", "abc123");
        assert_eq!(settings(&[dev, azure]).unwrap_err().name, "KEY_VAULT_URI");
        let vault = ("KEY_VAULT_URI", "https://kv.vault.azure.net/");
        assert_eq!(
            settings(&[dev, azure, vault]).unwrap_err().name,
            "PUBLIC_BASE_URL"
        );
        assert!(
            settings(&[
                dev,
                azure,
                vault,
                ("PUBLIC_BASE_URL", "https://connector.example.com")
            ])
            .is_ok()
        );
    }

    /// What a Flex Consumption instance's environment has: no `WEBSITE_INSTANCE_ID` (the
    /// Functions host itself tells Flex apart by these, `IsLinuxConsumptionOnLegion`).
    const FLEX: [(&str, &str); 3] = [
        ("WEBSITE_SKU", "FlexConsumption"),
        ("CONTAINER_NAME", "entracon-abc123"),
        ("LEGION_SERVICE_HOST", "10.0.0.1"),
    ];

    #[test]
    fn any_one_platform_marker_means_azure() {
        let none = HashMap::<String, String>::new();
        assert_eq!(azure_marker(|n| none.contains_key(n)), None);
        for marker in AZURE_MARKERS {
            assert_eq!(azure_marker(|n| n == marker), Some(marker));
        }
        let flex: HashMap<&str, &str> = FLEX.into_iter().collect();
        assert_eq!(azure_marker(|n| flex.contains_key(n)), Some("WEBSITE_SKU"));
        // an empty value is not set (Settings trims and drops empty values)
        let dev = ("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        assert!(settings(&[dev, ("WEBSITE_SKU", " ")]).is_ok());
    }

    #[test]
    fn flex_consumption_counts_as_azure_without_website_instance_id() {
        let dev = ("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        let mut pairs = vec![dev];
        pairs.extend(FLEX);
        assert_eq!(settings(&pairs).unwrap_err().name, "KEY_VAULT_URI");
        pairs.push(("KEY_VAULT_URI", "https://kv.vault.azure.net/"));
        assert_eq!(settings(&pairs).unwrap_err().name, "PUBLIC_BASE_URL");
        pairs.push(("PUBLIC_BASE_URL", "https://connector.example.com"));
        assert!(settings(&pairs).is_ok());
        pairs.push(("ENTRA_DEV_AUTH", "true"));
        let err = settings(&pairs).unwrap_err();
        assert_eq!(err.name, "ENTRA_DEV_AUTH", "{err}");
        assert!(err.to_string().contains("never trusted in Azure"), "{err}");
    }

    #[test]
    fn development_storage_with_defaults() {
        let s = settings(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]).unwrap();
        assert_eq!(s.port, DEFAULT_PORT);
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(
            matches!(s.storage, StorageSettings::ConnectionString(ref a) if a.name == "devstoreaccount1")
        );
        assert_eq!(s.queues.visibility, std::time::Duration::from_secs(60));
        assert_eq!(s.queues.max_dequeue_count, host::MAX_DEQUEUE_COUNT);
        assert_eq!(
            s.queues.max_polling_interval,
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn identity_based_connection_follows_the_functions_convention() {
        let s = settings(&[
            (
                "AzureWebJobsStorage__tableServiceUri",
                "https://acct.table.core.windows.net",
            ),
            ("AzureWebJobsStorage__credential", "managedidentity"),
            (
                "AzureWebJobsStorage__clientId",
                "11111111-2222-3333-4444-555555555555",
            ),
        ])
        .unwrap();
        match &s.storage {
            StorageSettings::Identity {
                table_endpoint,
                client_id,
                ..
            } => {
                assert_eq!(
                    table_endpoint.host_str(),
                    Some("acct.table.core.windows.net")
                );
                assert_eq!(
                    client_id.as_deref(),
                    Some("11111111-2222-3333-4444-555555555555")
                );
            }
            other => panic!("{other:?}"),
        }
        let by_name = settings(&[("AzureWebJobsStorage__accountName", "acct")]).unwrap();
        assert!(
            matches!(by_name.storage, StorageSettings::Identity { ref queue_endpoint, .. } if queue_endpoint.is_some())
        );
    }

    #[test]
    fn each_bad_setting_is_named_with_its_problem() {
        let dev = ("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        for (pairs, name, needle) in [
            (vec![], "AzureWebJobsStorage", "is not set"),
            (
                vec![("AzureWebJobsStorage", "AccountName=x")],
                "AzureWebJobsStorage",
                "AccountKey",
            ),
            (
                vec![dev, ("FUNCTIONS_CUSTOMHANDLER_PORT", "http")],
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                "not a port",
            ),
            (
                vec![dev, ("FUNCTIONS_CUSTOMHANDLER_PORT", "70000")],
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                "not a port",
            ),
            (
                vec![dev, ("LOG_FORMAT", "xml")],
                "LOG_FORMAT",
                "expected json",
            ),
            (vec![dev, ("LOG_LEVEL", "=,=")], "LOG_LEVEL", "not a level"),
            (
                vec![dev, ("CERT_DEFAULT_VALIDITY_DAYS", "3651")],
                "CERT_DEFAULT_VALIDITY_DAYS",
                "1-3650",
            ),
            (
                vec![dev, ("CERT_DEFAULT_KEY_SIZE", "1024")],
                "CERT_DEFAULT_KEY_SIZE",
                "2048, 3072 or 4096",
            ),
            (
                vec![dev, ("CERT_REVOKE_ON_DISABLE", "maybe")],
                "CERT_REVOKE_ON_DISABLE",
                "expected true",
            ),
            (
                vec![dev, ("CERT_KEY_POOL_SIZE", "17")],
                "CERT_KEY_POOL_SIZE",
                "0-16",
            ),
            (
                vec![dev, ("STORAGE_TABLE_PREFIX", "a-b")],
                "STORAGE_TABLE_PREFIX",
                "letters",
            ),
            (
                vec![("AzureWebJobsStorage__tableServiceUri", "http://example.com")],
                "AzureWebJobsStorage__tableServiceUri",
                "loopback",
            ),
            (
                vec![
                    ("AzureWebJobsStorage__accountName", "a"),
                    ("AzureWebJobsStorage__credential", "secret"),
                ],
                "AzureWebJobsStorage__credential",
                "managedidentity",
            ),
            (
                vec![dev, ("QUEUE_VISIBILITY_SECONDS", "2")],
                "QUEUE_VISIBILITY_SECONDS",
                "3-600",
            ),
            (
                vec![dev, ("QUEUE_MAX_POLLING_SECONDS", "0")],
                "QUEUE_MAX_POLLING_SECONDS",
                "1-60",
            ),
            (
                vec![dev, ("AUDIT_RETENTION_DAYS", "0")],
                "AUDIT_RETENTION_DAYS",
                "1-3650",
            ),
            (
                vec![dev, ("SMTP_HOST", "smtp.example.com")],
                "SMTP_FROM",
                "required",
            ),
            (
                vec![
                    dev,
                    ("SMTP_HOST", "smtp.example.com"),
                    ("SMTP_FROM", "a@example.com"),
                    ("SMTP_USERNAME", "a"),
                ],
                "SMTP_PASSWORD_SECRET_NAME",
                "together",
            ),
        ] {
            let err = settings(&pairs).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn a_bad_connection_string_error_does_not_echo_the_key() {
        let err =
            settings(&[("AzureWebJobsStorage", "AccountName=a;AccountKey=s3cr3t!!")]).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn every_sample_setting_is_documented_and_read_by_the_handler() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sample: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("local.settings.sample.json")).unwrap(),
        )
        .unwrap();
        let docs = std::fs::read_to_string(root.join("docs/settings.md")).unwrap();
        let source = include_str!("config.rs");
        for name in sample["Values"].as_object().unwrap().keys() {
            let quoted = format!("`{name}`");
            assert!(
                docs.lines()
                    .any(|l| l.starts_with('|') && l.contains(&quoted)),
                "{name} is in local.settings.sample.json but not in docs/settings.md"
            );
            if name != "FUNCTIONS_WORKER_RUNTIME" {
                assert!(
                    source.contains(&format!("\"{name}\"")),
                    "{name} is in the sample but the handler never reads it"
                );
            }
        }
    }
}
