//! What the service keeps secret, behind one trait: secrets (client secrets, refresh
//! tokens) and RSA keys that sign without leaving the vault. Two implementations: Azure Key
//! Vault through the official SDK ([`KeyVault`]), and a local vault of owner-only files for
//! local runs ([`LocalVault`], never for production).

mod key_vault;
mod local;

pub use key_vault::KeyVault;
pub use local::LocalVault;

use async_trait::async_trait;

/// Signature algorithms the vault signs with (over a SHA-256 digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256 (client assertions).
    Ps256,
}

/// An RSA public key: modulus and exponent, big-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A name Key Vault would refuse (1-127 letters, digits and dashes).
    #[error("invalid vault name {0:?}: 1-127 letters, digits and dashes")]
    InvalidName(String),
    #[error("no key named {0:?}")]
    NoSuchKey(String),
    /// A digest of the wrong length for the algorithm.
    #[error("a SHA-256 digest is 32 bytes")]
    BadDigest,
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    #[error("local vault: {0}")]
    Local(String),
}

/// Checks a secret or key name.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = (1..=127).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidName(name.to_string()))
    }
}

/// Secrets and keys.
#[async_trait]
pub trait Vault: Send + Sync {
    /// Stores a secret (a new version when it exists).
    async fn set_secret(&self, name: &str, value: &str) -> Result<(), VaultError>;
    /// The current version of a secret.
    async fn get_secret(&self, name: &str) -> Result<Option<String>, VaultError>;
    /// Deletes a secret; deleting a missing one is not an error.
    async fn delete_secret(&self, name: &str) -> Result<(), VaultError>;
    /// Creates an RSA key in the vault (a new version when it exists); returns its public part.
    async fn create_rsa_key(&self, name: &str, bits: u32) -> Result<RsaPublicKey, VaultError>;
    /// The public part of a key's current version.
    async fn public_key(&self, name: &str) -> Result<Option<RsaPublicKey>, VaultError>;
    /// Signs a SHA-256 digest with the key's current version; the private key never leaves.
    async fn sign_digest(
        &self,
        name: &str,
        algorithm: SignAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, VaultError>;
}

/// SHA-256 of a message, ready for [`Vault::sign_digest`].
pub fn sha256(message: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_key_vault_rules() {
        assert!(check_name("app-credential-global").is_ok());
        for bad in ["", "a/b", "a_b", "../x", &"a".repeat(128)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
