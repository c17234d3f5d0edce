//! Azure Key Vault through the official 1.x SDK clients: secrets with `SecretClient`, RSA
//! keys created and used for signing with `KeyClient` (the private key never leaves).
//!
//! Soft delete is always on in Key Vault: a deleted secret keeps its name until it is purged
//! or its retention (90 days by default) ends, and setting that name again is refused with
//! 409 `ObjectIsDeletedButRecoverable`. The service deletes and later sets secrets of fixed
//! names (an HR connection removed and made again), so `set_secret` recovers such a secret
//! and then writes the new value as a new version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Transport};
use azure_security_keyvault_certificates::models::{
    CertificatePolicy, CreateCertificateParameters, IssuerParameters, KeyProperties,
    KeyType as CertificateKeyType, X509CertificateProperties,
};
use azure_security_keyvault_certificates::{CertificateClient, CertificateClientOptions};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, KeyOperation, KeyType, SignParameters, SignatureAlgorithm,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::models::SetSecretParameters;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};

use crate::{RsaPublicKey, SignAlgorithm, Vault, VaultError, check_name};

/// How long `set_secret` waits, by default, for a soft-deleted secret to come back (Key
/// Vault recovers in the background, usually within seconds).
const RECOVERY_WAIT: Duration = Duration::from_secs(30);
/// The first pause between polls; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A Key Vault (`https://<name>.vault.azure.net/`).
pub struct KeyVault {
    keys: KeyClient,
    secrets: SecretClient,
    certificates: CertificateClient,
    recovery_wait: Duration,
}

/// The soft-delete state a 409 names (Key Vault's top-level code is `Conflict`; the state
/// is the inner error's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflict {
    /// Deleted, name kept: recover it (or purge it) before the name can be set.
    DeletedButRecoverable,
    /// A deletion or recovery of the name is still under way: try again shortly.
    InProgress,
}

fn conflict(e: &azure_core::Error) -> Option<Conflict> {
    let azure_core::error::ErrorKind::HttpResponse {
        status,
        error_code,
        raw_response,
    } = e.kind()
    else {
        return None;
    };
    if u16::from(*status) != 409 {
        return None;
    }
    let inner = raw_response
        .as_ref()
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(r.body().as_ref()).ok())
        .and_then(|body| {
            body["error"]["innererror"]["code"]
                .as_str()
                .map(str::to_owned)
        });
    match inner.as_deref().or(error_code.as_deref()) {
        Some("ObjectIsDeletedButRecoverable") => Some(Conflict::DeletedButRecoverable),
        Some("ObjectIsBeingDeleted" | "ObjectIsBeingRecovered") => Some(Conflict::InProgress),
        _ => None,
    }
}

fn unavailable(e: azure_core::Error) -> VaultError {
    VaultError::Unavailable(e.to_string())
}

fn is_not_found(e: &azure_core::Error) -> bool {
    e.http_status().is_some_and(|s| u16::from(s) == 404)
}

impl KeyVault {
    /// Clients for `vault_uri` with `credential` (managed identity in Azure). `transport`
    /// replaces the HTTP client (tests hand in one that answers as Key Vault does).
    pub fn new(
        vault_uri: &str,
        credential: Arc<dyn TokenCredential>,
        transport: Option<Transport>,
    ) -> Result<KeyVault, VaultError> {
        let client_options = ClientOptions {
            transport,
            ..ClientOptions::default()
        };
        let keys = KeyClient::new(
            vault_uri,
            credential.clone(),
            Some(KeyClientOptions {
                client_options: client_options.clone(),
                ..KeyClientOptions::default()
            }),
        )
        .map_err(unavailable)?;
        let secrets = SecretClient::new(
            vault_uri,
            credential.clone(),
            Some(SecretClientOptions {
                client_options: client_options.clone(),
                ..SecretClientOptions::default()
            }),
        )
        .map_err(unavailable)?;
        let certificates = CertificateClient::new(
            vault_uri,
            credential,
            Some(CertificateClientOptions {
                client_options,
                ..CertificateClientOptions::default()
            }),
        )
        .map_err(unavailable)?;
        Ok(KeyVault {
            keys,
            secrets,
            certificates,
            recovery_wait: RECOVERY_WAIT,
        })
    }

    /// Sets how long `set_secret` waits for a soft-deleted secret of the same name to be
    /// recovered and for deletions under way to finish (30 s unless set).
    pub fn with_recovery_wait(mut self, wait: Duration) -> KeyVault {
        self.recovery_wait = wait;
        self
    }

    /// One PUT of the secret.
    async fn put_secret(&self, name: &str, value: &str) -> azure_core::Result<()> {
        let parameters = SetSecretParameters {
            value: Some(value.to_string()),
            ..SetSecretParameters::default()
        };
        let body: RequestContent<SetSecretParameters> = parameters.try_into()?;
        self.secrets.set_secret(name, body, None).await?;
        Ok(())
    }

    /// Recovers the soft-deleted secret `name` and waits, until `deadline`, for the
    /// recovery to finish (GET answers 200 once it has).
    async fn recover_secret(&self, name: &str, deadline: Instant) -> Result<(), VaultError> {
        tracing::info!(secret = %name, "recovering a soft-deleted secret so that its name can be set again");
        match self.secrets.recover_deleted_secret(name, None).await {
            Ok(_) => {}
            // recovered meanwhile by a concurrent call, or being recovered: wait for it
            Err(e) if is_not_found(&e) || conflict(&e).is_some() => {}
            Err(e) => return Err(unavailable(e)),
        }
        let mut pause = FIRST_PAUSE;
        loop {
            match self.secrets.get_secret(name, None).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) || conflict(&e).is_some() => {}
                Err(e) => return Err(unavailable(e)),
            }
            pause = pause_until(deadline, pause)
                .await
                .ok_or_else(|| self.gave_up(name))?;
        }
    }

    fn gave_up(&self, name: &str) -> VaultError {
        VaultError::Unavailable(format!(
            "the secret {name:?} was still being deleted or recovered after {:?}",
            self.recovery_wait
        ))
    }
}

/// Sleeps `pause` unless that would pass `deadline` (then `None`); the next, doubled pause.
async fn pause_until(deadline: Instant, pause: Duration) -> Option<Duration> {
    if Instant::now() + pause > deadline {
        return None;
    }
    tokio::time::sleep(pause).await;
    Some((pause * 2).min(MAX_PAUSE))
}

#[async_trait]
impl Vault for KeyVault {
    async fn create_certificate(
        &self,
        name: &str,
        common_name: &str,
        months: u32,
    ) -> Result<Vec<u8>, VaultError> {
        check_name(name)?;
        let policy = CertificatePolicy {
            issuer_parameters: Some(IssuerParameters {
                name: Some("Self".into()),
                ..IssuerParameters::default()
            }),
            key_properties: Some(KeyProperties {
                exportable: Some(false),
                key_type: Some(CertificateKeyType::Rsa),
                key_size: Some(2048),
                reuse_key: Some(false),
                ..KeyProperties::default()
            }),
            x509_certificate_properties: Some(X509CertificateProperties {
                subject: Some(format!("CN={common_name}")),
                validity_in_months: Some(months as i32),
                enhanced_key_usage: Some(vec!["1.3.6.1.5.5.7.3.2".into()]),
                ..X509CertificateProperties::default()
            }),
            ..CertificatePolicy::default()
        };
        let parameters = CreateCertificateParameters {
            certificate_policy: Some(policy),
            ..CreateCertificateParameters::default()
        };
        let body: RequestContent<CreateCertificateParameters> =
            parameters.try_into().map_err(unavailable)?;
        let certificate = self
            .certificates
            .begin_create_certificate(name, body, None)
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?
            .into_model()
            .map_err(unavailable)?;
        certificate.cer.ok_or_else(|| {
            VaultError::Unavailable("Key Vault returned a certificate without cer".into())
        })
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        check_name(name)?;
        match self.certificates.get_certificate(name, None).await {
            Ok(response) => Ok(response.into_model().map_err(unavailable)?.cer),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn set_secret(&self, name: &str, value: &str) -> Result<(), VaultError> {
        check_name(name)?;
        let deadline = Instant::now() + self.recovery_wait;
        let mut pause = FIRST_PAUSE;
        loop {
            let e = match self.put_secret(name, value).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            match conflict(&e) {
                // the old secret comes back with its versions; the new value is then
                // written as its current version
                Some(Conflict::DeletedButRecoverable) => {
                    self.recover_secret(name, deadline).await?
                }
                Some(Conflict::InProgress) => {
                    pause = pause_until(deadline, pause)
                        .await
                        .ok_or_else(|| self.gave_up(name))?;
                }
                None => return Err(unavailable(e)),
            }
        }
    }

    async fn get_secret(&self, name: &str) -> Result<Option<String>, VaultError> {
        check_name(name)?;
        match self.secrets.get_secret(name, None).await {
            Ok(response) => Ok(response.into_model().map_err(unavailable)?.value),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete_secret(&self, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        match self.secrets.delete_secret(name, None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn create_rsa_key(&self, name: &str, bits: u32) -> Result<RsaPublicKey, VaultError> {
        check_name(name)?;
        let parameters = CreateKeyParameters {
            kty: Some(KeyType::Rsa),
            key_size: Some(bits as i32),
            key_ops: Some(vec![KeyOperation::Sign, KeyOperation::Verify]),
            ..CreateKeyParameters::default()
        };
        let body: RequestContent<CreateKeyParameters> =
            parameters.try_into().map_err(unavailable)?;
        let key = self
            .keys
            .create_key(name, body, None)
            .await
            .map_err(unavailable)?;
        public_part(key.into_model().map_err(unavailable)?).ok_or_else(|| {
            VaultError::Unavailable("Key Vault returned a key without n and e".into())
        })
    }

    async fn public_key(&self, name: &str) -> Result<Option<RsaPublicKey>, VaultError> {
        check_name(name)?;
        match self.keys.get_key(name, None).await {
            Ok(response) => Ok(public_part(response.into_model().map_err(unavailable)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn sign_digest(
        &self,
        name: &str,
        algorithm: SignAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        check_name(name)?;
        if digest.len() != 32 {
            return Err(VaultError::BadDigest);
        }
        let parameters = SignParameters {
            algorithm: Some(match algorithm {
                SignAlgorithm::Rs256 => SignatureAlgorithm::Rs256,
                SignAlgorithm::Ps256 => SignatureAlgorithm::Ps256,
            }),
            value: Some(digest.to_vec()),
        };
        let body: RequestContent<SignParameters> = parameters.try_into().map_err(unavailable)?;
        match self.keys.sign(name, body, None).await {
            Ok(response) => response
                .into_model()
                .map_err(unavailable)?
                .result
                .ok_or_else(|| VaultError::Unavailable("Key Vault returned no signature".into())),
            Err(e) if is_not_found(&e) => Err(VaultError::NoSuchKey(name.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }
}

fn public_part(key: azure_security_keyvault_keys::models::Key) -> Option<RsaPublicKey> {
    let jwk = key.key?;
    Some(RsaPublicKey {
        n: jwk.n?,
        e: jwk.e?,
    })
}
