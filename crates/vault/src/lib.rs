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
    /// Stores a secret (a new version when it exists). A name deleted before can be set
    /// again: Key Vault keeps deleted secrets' names (soft delete), so it recovers the
    /// deleted secret first; the local vault deletes for good.
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
    /// Creates a self-signed client-authentication certificate (RSA-2048, non-exportable
    /// key) valid for `months`; its key is then the key `name`. Returns the certificate DER.
    async fn create_certificate(
        &self,
        name: &str,
        common_name: &str,
        months: u32,
    ) -> Result<Vec<u8>, VaultError>;
    /// The current certificate's DER.
    async fn get_certificate(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError>;
}

/// Builds a self-signed certificate for a public key with a signer that holds the
/// private key (rcgen signs synchronously: call from a blocking thread).
pub fn self_signed_certificate(
    signer: &impl rcgen::SigningKey,
    common_name: &str,
    months: u32,
) -> Result<Vec<u8>, VaultError> {
    let fail = |e: rcgen::Error| VaultError::Local(format!("certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30 * i64::from(months));
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| VaultError::Local("random serial".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params.self_signed(signer).map_err(fail)?.der().to_vec())
}

/// DER of an RSAPublicKey (PKCS#1): SEQUENCE { INTEGER n, INTEGER e }.
pub fn rsa_public_key_der(key: &RsaPublicKey) -> Vec<u8> {
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
        let start = value
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(value.len().saturating_sub(1));
        let trimmed = &value[start..];
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

/// SHA-256 of a message, ready for [`Vault::sign_digest`].
pub fn sha256(message: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message)
        .as_ref()
        .to_vec()
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
        assert_eq!(rsa_public_key_der(&key), public.as_ref());
    }

    #[test]
    fn names_follow_key_vault_rules() {
        assert!(check_name("app-credential-global").is_ok());
        for bad in ["", "a/b", "a_b", "../x", &"a".repeat(128)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
