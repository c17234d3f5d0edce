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
use time::OffsetDateTime;
use vault::{RsaPublicKey, SignAlgorithm, Vault, VaultError};

/// How long a created certificate is valid.
const CERTIFICATE_DAYS: i64 = 365;

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

/// Names in the vault for one credential.
#[derive(Debug, Clone)]
pub struct CredentialNames {
    /// The RSA key.
    pub key: String,
    /// A secret holding the certificate's DER, base64.
    pub certificate: String,
}

impl CredentialNames {
    /// The service's own app in a cloud.
    pub fn service(cloud: Cloud) -> CredentialNames {
        CredentialNames {
            key: format!("app-credential-{}", cloud.as_str()),
            certificate: format!("app-certificate-{}", cloud.as_str()),
        }
    }

    /// A customer-owned app registration of one tenant.
    pub fn tenant(tenant_id: uuid::Uuid) -> CredentialNames {
        CredentialNames {
            key: format!("tenant-credential-{tenant_id}"),
            certificate: format!("tenant-certificate-{tenant_id}"),
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
        let Some(encoded) = self.vault.get_secret(&names.certificate).await? else {
            return Ok(None);
        };
        let der = STANDARD
            .decode(encoded.trim())
            .map_err(|_| VaultError::Unavailable(format!("{} is not base64", names.certificate)))?;
        Ok(Some(AppCredential::Certificate {
            certificate_der: Arc::new(der),
            signer: Arc::new(VaultSigner {
                vault: self.vault.clone(),
                key_name: names.key.clone(),
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

    /// The public part of a stored certificate.
    pub async fn export(
        &self,
        names: &CredentialNames,
    ) -> Result<Option<CertificateExport>, VaultError> {
        let Some(encoded) = self.vault.get_secret(&names.certificate).await? else {
            return Ok(None);
        };
        let der = STANDARD
            .decode(encoded.trim())
            .map_err(|_| VaultError::Unavailable(format!("{} is not base64", names.certificate)))?;
        let public_key = self
            .vault
            .public_key(&names.key)
            .await?
            .ok_or_else(|| VaultError::NoSuchKey(names.key.clone()))?;
        Ok(Some(CertificateExport { der, public_key }))
    }

    /// Creates a new key in the vault and a self-signed certificate for it (signed by the
    /// vault), stores the certificate, and returns its public part.
    pub async fn create_certificate(
        &self,
        names: &CredentialNames,
        common_name: &str,
    ) -> Result<CertificateExport, VaultError> {
        let public_key = self.vault.create_rsa_key(&names.key, 2048).await?;
        let signer = RemoteKey {
            vault: self.vault.clone(),
            key_name: names.key.clone(),
            public_der: rsa_public_key_der(&public_key),
            runtime: tokio::runtime::Handle::current(),
        };
        let common_name = common_name.to_string();
        // rcgen signs synchronously; the vault call is async: build on a blocking thread
        let der = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let mut params =
                rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name);
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(CERTIFICATE_DAYS);
            let mut serial = [0u8; 16];
            aws_lc_rs::rand::fill(&mut serial).map_err(|_| "random serial".to_string())?;
            serial[0] &= 0x7f;
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let certificate = params.self_signed(&signer).map_err(|e| e.to_string())?;
            Ok(certificate.der().to_vec())
        })
        .await
        .map_err(|e| VaultError::Unavailable(e.to_string()))?
        .map_err(|e| VaultError::Unavailable(format!("certificate: {e}")))?;
        self.vault
            .set_secret(&names.certificate, &STANDARD.encode(&der))
            .await?;
        Ok(CertificateExport { der, public_key })
    }
}

/// A vault key as rcgen's signer.
struct RemoteKey {
    vault: Arc<dyn Vault>,
    key_name: String,
    public_der: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl rcgen::PublicKeyData for RemoteKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_der
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for RemoteKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.runtime
            .block_on(self.vault.sign_digest(
                &self.key_name,
                SignAlgorithm::Rs256,
                &vault::sha256(msg),
            ))
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// DER of an RSAPublicKey (PKCS#1): SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_public_key_der(key: &RsaPublicKey) -> Vec<u8> {
    fn length(len: usize, out: &mut Vec<u8>) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(value: &[u8], out: &mut Vec<u8>) {
        let trimmed: &[u8] = {
            let start = value
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(value.len().saturating_sub(1));
            &value[start..]
        };
        let pad = trimmed.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        length(trimmed.len() + usize::from(pad), out);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
    }
    let mut body = Vec::new();
    integer(&key.n, &mut body);
    integer(&key.e, &mut body);
    let mut out = vec![0x30];
    length(body.len(), &mut out);
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair as _;

    #[test]
    fn rsa_public_key_der_matches_aws_lc() {
        let pair =
            aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let key = RsaPublicKey {
            n: public.modulus().big_endian_without_leading_zero().to_vec(),
            e: public.exponent().big_endian_without_leading_zero().to_vec(),
        };
        // aws-lc's public key bytes are the same RSAPublicKey DER
        assert_eq!(rsa_public_key_der(&key), public.as_ref());
    }

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
