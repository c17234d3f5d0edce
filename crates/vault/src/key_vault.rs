//! Azure Key Vault through the official 1.x SDK clients: secrets with `SecretClient`, RSA
//! keys created and used for signing with `KeyClient` (the private key never leaves).

use std::sync::Arc;

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

/// A Key Vault (`https://<name>.vault.azure.net/`).
pub struct KeyVault {
    keys: KeyClient,
    secrets: SecretClient,
    certificates: CertificateClient,
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
        })
    }
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
        let parameters = SetSecretParameters {
            value: Some(value.to_string()),
            ..SetSecretParameters::default()
        };
        let body: RequestContent<SetSecretParameters> =
            parameters.try_into().map_err(unavailable)?;
        self.secrets
            .set_secret(name, body, None)
            .await
            .map_err(unavailable)?;
        Ok(())
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
