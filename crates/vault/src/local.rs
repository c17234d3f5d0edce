//! The local vault: files under a directory, owner-only. For local runs and tests only; in
//! Azure the service uses Key Vault (`KEY_VAULT_URI`).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::digest::{Digest, SHA256};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};

use crate::{RsaPublicKey, SignAlgorithm, Vault, VaultError, check_name};

/// Secrets in `<root>/secrets/<name>`, keys in `<root>/keys/<name>` (PKCS#8 DER), mode 0600
/// in directories of mode 0700.
#[derive(Debug, Clone)]
pub struct LocalVault {
    root: PathBuf,
}

fn local(e: impl std::fmt::Display) -> VaultError {
    VaultError::Local(e.to_string())
}

impl LocalVault {
    /// A vault rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> LocalVault {
        LocalVault { root: root.into() }
    }

    fn path(&self, kind: &str, name: &str) -> Result<PathBuf, VaultError> {
        check_name(name)?;
        Ok(self.root.join(kind).join(name))
    }

    fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let dir = path.parent().expect("vault paths have a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(local)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(local)?;
        // write a new file and rename it over the old one, so readers never see half a secret
        let mut unique = [0u8; 8];
        aws_lc_rs::rand::fill(&mut unique)
            .map_err(|_| VaultError::Local("random temp name".into()))?;
        let temp = path.with_extension(format!("tmp-{}", u64::from_le_bytes(unique)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(local)?;
        file.write_all(bytes).map_err(local)?;
        file.sync_all().map_err(local)?;
        std::fs::rename(&temp, path).map_err(local)
    }

    fn read(path: &Path) -> Result<Option<Vec<u8>>, VaultError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(local(e)),
        }
    }

    fn key(&self, name: &str) -> Result<Option<RsaKeyPair>, VaultError> {
        let path = self.path("keys", name)?;
        Self::read(&path)?
            .map(|der| {
                RsaKeyPair::from_pkcs8(&der)
                    .map_err(|e| VaultError::Local(format!("{}: {e}", path.display())))
            })
            .transpose()
    }
}

fn public_of(pair: &RsaKeyPair) -> RsaPublicKey {
    let public = pair.public_key();
    RsaPublicKey {
        n: public.modulus().big_endian_without_leading_zero().to_vec(),
        e: public.exponent().big_endian_without_leading_zero().to_vec(),
    }
}

/// A local key as rcgen's signer.
struct LocalSigner<'a> {
    pair: &'a RsaKeyPair,
    public_der: Vec<u8>,
}

impl rcgen::PublicKeyData for LocalSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public_der
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for LocalSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg,
                &mut signature,
            )
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(signature)
    }
}

#[async_trait]
impl Vault for LocalVault {
    async fn create_certificate(
        &self,
        name: &str,
        common_name: &str,
        months: u32,
    ) -> Result<Vec<u8>, VaultError> {
        let path = self.path("certificates", name)?;
        let public = self.create_rsa_key(name, 2048).await?;
        let pair = self
            .key(name)?
            .ok_or_else(|| VaultError::NoSuchKey(name.to_string()))?;
        let signer = LocalSigner {
            pair: &pair,
            public_der: crate::rsa_public_key_der(&public),
        };
        let der = crate::self_signed_certificate(&signer, common_name, months)?;
        Self::write_private(&path, &der)?;
        Ok(der)
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        Self::read(&self.path("certificates", name)?)
    }

    async fn set_secret(&self, name: &str, value: &str) -> Result<(), VaultError> {
        Self::write_private(&self.path("secrets", name)?, value.as_bytes())
    }

    async fn get_secret(&self, name: &str) -> Result<Option<String>, VaultError> {
        Self::read(&self.path("secrets", name)?)?
            .map(|b| {
                String::from_utf8(b).map_err(|_| VaultError::Local("a secret is not UTF-8".into()))
            })
            .transpose()
    }

    async fn delete_secret(&self, name: &str) -> Result<(), VaultError> {
        match std::fs::remove_file(self.path("secrets", name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local(e)),
        }
    }

    async fn create_rsa_key(&self, name: &str, bits: u32) -> Result<RsaPublicKey, VaultError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => {
                return Err(VaultError::Local(format!(
                    "RSA keys of {other} bits are not offered (2048, 3072, 4096)"
                )));
            }
        };
        let path = self.path("keys", name)?;
        // key generation takes 50 ms to a second: off the async threads
        let pair = tokio::task::spawn_blocking(move || RsaKeyPair::generate(size))
            .await
            .map_err(local)?
            .map_err(|_| VaultError::Local("RSA key generation failed".into()))?;
        let der = pair.as_der().map_err(local)?;
        Self::write_private(&path, der.as_ref())?;
        Ok(public_of(&pair))
    }

    async fn public_key(&self, name: &str) -> Result<Option<RsaPublicKey>, VaultError> {
        Ok(self.key(name)?.as_ref().map(public_of))
    }

    async fn sign_digest(
        &self,
        name: &str,
        algorithm: SignAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let pair = self
            .key(name)?
            .ok_or_else(|| VaultError::NoSuchKey(name.to_string()))?;
        let digest =
            Digest::import_less_safe(digest, &SHA256).map_err(|_| VaultError::BadDigest)?;
        let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match algorithm {
            SignAlgorithm::Rs256 => &RSA_PKCS1_SHA256,
            SignAlgorithm::Ps256 => &RSA_PSS_SHA256,
        };
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign_digest(padding, &digest, &mut signature)
            .map_err(|_| VaultError::Local("signing failed".into()))?;
        Ok(signature)
    }
}
