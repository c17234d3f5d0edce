//! Azure Key Vault through the official 1.x SDK clients: secrets with `SecretClient`, RSA
//! keys created and used for signing with `KeyClient` (the private key never leaves).

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Transport};
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
            credential,
            Some(SecretClientOptions {
                client_options,
                ..SecretClientOptions::default()
            }),
        )
        .map_err(unavailable)?;
        Ok(KeyVault { keys, secrets })
    }
}

#[async_trait]
impl Vault for KeyVault {
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
