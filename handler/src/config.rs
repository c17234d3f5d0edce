//! Settings, read once from the environment at start-up. A missing or malformed setting
//! stops start-up with one line naming it; values that hold secrets are never echoed.

use std::collections::HashMap;
use std::sync::Arc;

use tables::StorageAccount;
use url::Url;

/// Port used when no Functions host chose one.
pub const DEFAULT_PORT: u16 = 7071;

/// A setting that is missing or malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
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
    /// `STORAGE_TABLE_PREFIX`: prepended to every table name (several deployments, one account).
    pub table_prefix: String,
    /// `LOG_FORMAT`: `json` or `text`.
    pub log_format: LogFormat,
    /// `LOG_LEVEL`: a tracing filter such as `info` or `handler=debug,info`.
    pub log_level: String,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_map(&std::env::vars().collect())
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
        Ok(Settings {
            port,
            storage,
            table_prefix,
            log_format,
            log_level,
        })
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

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn development_storage_with_defaults() {
        let s = settings(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")]).unwrap();
        assert_eq!(s.port, DEFAULT_PORT);
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(
            matches!(s.storage, StorageSettings::ConnectionString(ref a) if a.name == "devstoreaccount1")
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
}
