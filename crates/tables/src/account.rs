//! Where the storage account is and how to authenticate to it: connection strings
//! (including `UseDevelopmentStorage=true` for Azurite) and token credentials.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use url::Url;

/// Azurite's well-known development account (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How requests to the account are authenticated.
#[derive(Clone)]
pub enum Credential {
    /// Shared Key: an HMAC-SHA256 of each request with the account key.
    SharedKey { account: String, key: Arc<[u8]> },
    /// OAuth bearer tokens for `https://storage.azure.com/.default` (managed identity).
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey { account, .. } => {
                write!(f, "SharedKey({account}, key redacted)")
            }
            Credential::Token(_) => write!(f, "Token(..)"),
        }
    }
}

/// One storage account: its name, service endpoints and credential.
#[derive(Clone, Debug)]
pub struct StorageAccount {
    pub name: String,
    pub table_endpoint: Url,
    pub queue_endpoint: Option<Url>,
    pub credential: Credential,
}

impl StorageAccount {
    /// Parses a Storage connection string as Azure Functions accepts it in `AzureWebJobsStorage`.
    /// The error never repeats the string (it holds a key).
    pub fn from_connection_string(s: &str) -> Result<StorageAccount, String> {
        let mut account = None;
        let mut key = None;
        let mut protocol = None;
        let mut suffix = None;
        let mut table = None;
        let mut queue = None;
        let mut development = false;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                "is not a connection string (expected Name=value pairs separated by ';')"
                    .to_string()
            })?;
            match name.to_ascii_lowercase().as_str() {
                "usedevelopmentstorage" => development = value.eq_ignore_ascii_case("true"),
                "accountname" => account = Some(value.to_string()),
                "accountkey" => key = Some(value.to_string()),
                "defaultendpointsprotocol" => protocol = Some(value.to_ascii_lowercase()),
                "endpointsuffix" => suffix = Some(value.to_string()),
                "tableendpoint" => table = Some(value.to_string()),
                "queueendpoint" => queue = Some(value.to_string()),
                "sharedaccesssignature" => {
                    return Err("uses a SharedAccessSignature, which is not supported; use an account key or an identity-based connection".into());
                }
                // Blob and file endpoints and unknown keys do not concern Table Storage.
                _ => {}
            }
        }
        if development {
            return Ok(StorageAccount::development("127.0.0.1", 10002, 10001));
        }
        let account = account.ok_or("has no AccountName")?;
        let key = key.ok_or("has no AccountKey")?;
        let key = BASE64
            .decode(key.as_bytes())
            .map_err(|_| "has an AccountKey that is not valid base64".to_string())?;
        let protocol = protocol.unwrap_or_else(|| "https".into());
        if protocol != "https" && protocol != "http" {
            return Err(format!(
                "has DefaultEndpointsProtocol={protocol}; expected https or http"
            ));
        }
        let suffix = suffix.unwrap_or_else(|| "core.windows.net".into());
        // With explicit endpoints (emulators, custom domains) nothing is derived from the suffix.
        let explicit = table.is_some() || queue.is_some();
        let derive = |service: &str| format!("{protocol}://{account}.{service}.{suffix}");
        let table = table.unwrap_or_else(|| derive("table"));
        let queue = queue.or_else(|| (!explicit).then(|| derive("queue")));
        Ok(StorageAccount {
            table_endpoint: parse_endpoint("TableEndpoint", &table)?,
            queue_endpoint: queue
                .map(|q| parse_endpoint("QueueEndpoint", &q))
                .transpose()?,
            credential: Credential::SharedKey {
                account: account.clone(),
                key: key.into(),
            },
            name: account,
        })
    }

    /// Azurite on the given host and ports, with the development account.
    pub fn development(host: &str, table_port: u16, queue_port: u16) -> StorageAccount {
        let endpoint = |port: u16| {
            Url::parse(&format!("http://{host}:{port}/{DEV_ACCOUNT}"))
                .expect("a development endpoint is a valid URL")
        };
        StorageAccount {
            name: DEV_ACCOUNT.into(),
            table_endpoint: endpoint(table_port),
            queue_endpoint: Some(endpoint(queue_port)),
            credential: Credential::SharedKey {
                account: DEV_ACCOUNT.into(),
                key: BASE64
                    .decode(DEV_KEY)
                    .expect("the development key is base64")
                    .into(),
            },
        }
    }

    /// An account reached with a token credential (identity-based connection).
    pub fn with_token(
        table_endpoint: Url,
        queue_endpoint: Option<Url>,
        credential: Arc<dyn TokenCredential>,
    ) -> StorageAccount {
        let name = table_endpoint
            .host_str()
            .and_then(|h| h.split('.').next())
            .unwrap_or_default()
            .to_string();
        StorageAccount {
            name,
            table_endpoint,
            queue_endpoint,
            credential: Credential::Token(credential),
        }
    }
}

/// Parses an endpoint URL, refusing plain http except on loopback (Azurite).
pub fn parse_endpoint(what: &str, s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("has a {what} that is not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "has a {what} over plain http that is not a loopback address"
        )),
        other => Err(format!("has a {what} with scheme {other}; expected https")),
    }
}

/// True when the URL's host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_means_azurite_on_loopback() {
        let a = StorageAccount::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(a.name, DEV_ACCOUNT);
        assert_eq!(
            a.table_endpoint.as_str(),
            "http://127.0.0.1:10002/devstoreaccount1"
        );
        assert_eq!(
            a.queue_endpoint.unwrap().as_str(),
            "http://127.0.0.1:10001/devstoreaccount1"
        );
    }

    #[test]
    fn full_connection_string_with_explicit_endpoints() {
        let s = format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};TableEndpoint=http://127.0.0.1:41234/{DEV_ACCOUNT};QueueEndpoint=http://127.0.0.1:41235/{DEV_ACCOUNT};"
        );
        let a = StorageAccount::from_connection_string(&s).unwrap();
        assert_eq!(a.table_endpoint.port(), Some(41234));
        assert_eq!(a.queue_endpoint.unwrap().port(), Some(41235));
        assert!(
            matches!(a.credential, Credential::SharedKey { ref account, .. } if account == DEV_ACCOUNT)
        );
    }

    #[test]
    fn azure_connection_string_derives_endpoints_from_the_suffix() {
        let s = "DefaultEndpointsProtocol=https;AccountName=prod1;AccountKey=AAAA;EndpointSuffix=core.usgovcloudapi.net";
        let a = StorageAccount::from_connection_string(s).unwrap();
        assert_eq!(
            a.table_endpoint.as_str(),
            "https://prod1.table.core.usgovcloudapi.net/"
        );
    }

    #[test]
    fn bad_connection_strings_say_what_is_wrong_without_echoing_the_key() {
        let err = StorageAccount::from_connection_string("AccountName=a;AccountKey=not*base64")
            .unwrap_err();
        assert!(
            err.contains("AccountKey") && !err.contains("not*base64"),
            "{err}"
        );
        assert!(
            StorageAccount::from_connection_string("AccountKey=AAAA")
                .unwrap_err()
                .contains("AccountName")
        );
        assert!(StorageAccount::from_connection_string("garbage").is_err());
        let remote_http = "AccountName=a;AccountKey=AAAA;TableEndpoint=http://10.0.0.1/a";
        assert!(
            StorageAccount::from_connection_string(remote_http)
                .unwrap_err()
                .contains("loopback")
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let a = StorageAccount::development("127.0.0.1", 1, 2);
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("Eby8") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
