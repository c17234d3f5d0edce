//! The service's own app credentials, per cloud: a certificate whose private key lives in
//! the vault (preferred: client assertions signed by the vault), else a client secret from
//! the vault, else `ENTRA_CLIENT_SECRET`. Also creates such certificates and exports their
//! public part for upload to the app registration.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use entra::Cloud;
use entra::credentials::{AppCredential, AssertionSigner};
use serde_json::{Value, json};
use vault::{RsaPublicKey, SignAlgorithm, Vault, VaultError};

/// How long a created certificate is valid.
const CERTIFICATE_MONTHS: u32 = 12;

/// Signs client assertions with a key that stays in the vault.
pub struct VaultSigner {
    pub vault: Arc<dyn Vault>,
    pub key_name: String,
}

#[async_trait]
impl AssertionSigner for VaultSigner {
    async fn sign_ps256(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.vault
            .sign_digest(
                &self.key_name,
                SignAlgorithm::Ps256,
                &vault::sha256(message),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// The vault name of one credential: a certificate, whose key has the same name.
#[derive(Debug, Clone)]
pub struct CredentialNames {
    pub certificate: String,
}

impl CredentialNames {
    /// The service's own app in a cloud.
    pub fn service(cloud: Cloud) -> CredentialNames {
        CredentialNames {
            certificate: format!("app-credential-{}", cloud.as_str()),
        }
    }

    /// A customer-owned app registration of one tenant.
    pub fn tenant(tenant_id: uuid::Uuid) -> CredentialNames {
        CredentialNames {
            certificate: format!("tenant-credential-{tenant_id}"),
        }
    }
}

/// Name of the vault secret holding the service app's client secret.
pub const CLIENT_SECRET_NAME: &str = "app-client-secret";

/// A certificate's public part, as offered for upload.
#[derive(Debug, Clone)]
pub struct CertificateExport {
    pub der: Vec<u8>,
    pub public_key: RsaPublicKey,
}

impl CertificateExport {
    /// PEM text of the certificate.
    pub fn pem(&self) -> String {
        let body = STANDARD.encode(&self.der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    /// The API's view: PEM, DER (base64), thumbprints, and the public key as a JWK.
    pub fn to_json(&self) -> Value {
        let sha1 =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der);
        json!({
            "certificate_pem": self.pem(),
            "certificate_der_base64": STANDARD.encode(&self.der),
            "thumbprint_sha256": entra::credentials::thumbprint_s256(&self.der),
            "thumbprint_sha1_hex": sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect::<String>(),
            "public_key_jwk": {
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(&self.public_key.n),
                "e": URL_SAFE_NO_PAD.encode(&self.public_key.e),
            },
        })
    }
}

/// Finds and creates app credentials.
pub struct AppCredentials {
    vault: Arc<dyn Vault>,
    client_secret: Option<String>,
}

impl AppCredentials {
    /// Over a vault, with the `ENTRA_CLIENT_SECRET` setting as the last resort.
    pub fn new(vault: Arc<dyn Vault>, client_secret: Option<String>) -> AppCredentials {
        AppCredentials {
            vault,
            client_secret,
        }
    }

    /// A certificate credential stored under `names`, if one was created.
    pub async fn certificate_credential(
        &self,
        names: &CredentialNames,
    ) -> Result<Option<AppCredential>, VaultError> {
        let Some(der) = self.vault.get_certificate(&names.certificate).await? else {
            return Ok(None);
        };
        Ok(Some(AppCredential::Certificate {
            certificate_der: Arc::new(der),
            signer: Arc::new(VaultSigner {
                vault: self.vault.clone(),
                key_name: names.certificate.clone(),
            }),
        }))
    }

    /// The service app's credential in a cloud: certificate, else vault secret, else setting.
    pub async fn service_credential(
        &self,
        cloud: Cloud,
    ) -> Result<Option<AppCredential>, VaultError> {
        if let Some(certificate) = self
            .certificate_credential(&CredentialNames::service(cloud))
            .await?
        {
            return Ok(Some(certificate));
        }
        if let Some(secret) = self.vault.get_secret(CLIENT_SECRET_NAME).await? {
            return Ok(Some(AppCredential::Secret(secret)));
        }
        Ok(self.client_secret.clone().map(AppCredential::Secret))
    }

    /// The client secret alone (vault, else setting): the fallback while a new certificate
    /// is not uploaded to the app registration yet.
    pub async fn secret_credential(&self) -> Result<Option<AppCredential>, VaultError> {
        if let Some(secret) = self.vault.get_secret(CLIENT_SECRET_NAME).await? {
            return Ok(Some(AppCredential::Secret(secret)));
        }
        Ok(self.client_secret.clone().map(AppCredential::Secret))
    }

    /// The public part of a stored certificate.
    pub async fn export(
        &self,
        names: &CredentialNames,
    ) -> Result<Option<CertificateExport>, VaultError> {
        let Some(der) = self.vault.get_certificate(&names.certificate).await? else {
            return Ok(None);
        };
        let public_key = self
            .vault
            .public_key(&names.certificate)
            .await?
            .ok_or_else(|| VaultError::NoSuchKey(names.certificate.clone()))?;
        Ok(Some(CertificateExport { der, public_key }))
    }

    /// Has the vault create a key and a self-signed certificate for it, and returns the
    /// certificate's public part.
    pub async fn create_certificate(
        &self,
        names: &CredentialNames,
        common_name: &str,
    ) -> Result<CertificateExport, VaultError> {
        let der = self
            .vault
            .create_certificate(&names.certificate, common_name, CERTIFICATE_MONTHS)
            .await?;
        let public_key = self
            .vault
            .public_key(&names.certificate)
            .await?
            .ok_or_else(|| VaultError::NoSuchKey(names.certificate.clone()))?;
        Ok(CertificateExport { der, public_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_certificate_is_made_with_a_vault_key_and_exported() {
        let dir = std::env::temp_dir().join(format!("app-cred-{}", uuid::Uuid::new_v4()));
        let vault: Arc<dyn Vault> = Arc::new(vault::LocalVault::new(&dir));
        let credentials = AppCredentials::new(vault.clone(), Some("from-setting".into()));
        assert!(
            matches!(credentials.service_credential(Cloud::Global).await.unwrap(), Some(AppCredential::Secret(s)) if s == "from-setting")
        );
        let names = CredentialNames::service(Cloud::Global);
        let export = credentials
            .create_certificate(&names, "entra-connector global")
            .await
            .unwrap();
        assert_eq!(export.der[0], 0x30, "a DER SEQUENCE");
        assert!(export.pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        let json = export.to_json();
        assert_eq!(
            json["thumbprint_sha256"],
            entra::credentials::thumbprint_s256(&export.der)
        );
        assert!(matches!(
            credentials.service_credential(Cloud::Global).await.unwrap(),
            Some(AppCredential::Certificate { .. })
        ));
        assert_eq!(
            credentials.export(&names).await.unwrap().unwrap().der,
            export.der
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
