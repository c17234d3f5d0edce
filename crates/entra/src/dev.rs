//! Development tokens for local runs without Entra: an RSA key kept in a local file signs
//! tokens shaped like Entra's v2 access tokens, under a reserved `.invalid` issuer. The
//! handler trusts this key only when development authentication is switched on.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};

use crate::jwks::SigningKey;
use crate::validate::DEV_ISSUER_PREFIX;

/// The local development signing key.
pub struct DevSigner {
    pair: RsaKeyPair,
    kid: String,
}

impl DevSigner {
    /// Loads the key from `path` (PKCS#8 DER), creating it (owner-only) when absent.
    pub fn load_or_create(path: &Path) -> Result<DevSigner, String> {
        let pair = match std::fs::read(path) {
            Ok(der) => RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| format!("{}: not an RSA PKCS#8 key ({e})", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| "RSA key generation failed".to_string())?;
                let der = pair
                    .as_der()
                    .map_err(|_| "cannot encode the key".to_string())?;
                write_private(path, der.as_ref())?;
                pair
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pair.public_key().as_ref());
        let kid = format!("dev-{}", hex(&digest.as_ref()[..8]));
        Ok(DevSigner { pair, kid })
    }

    /// The key identifier tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for the validator.
    pub fn verifying_key(&self) -> Arc<SigningKey> {
        let public = self.pair.public_key();
        Arc::new(
            SigningKey::from_components(
                &self.kid,
                Some(format!("{DEV_ISSUER_PREFIX}/{{tenantid}}/v2.0")),
                public.modulus().big_endian_without_leading_zero(),
                public.exponent().big_endian_without_leading_zero(),
            )
            .expect("a generated RSA-2048 key parses"),
        )
    }

    /// Signs `claims` as an RS256 token; `iss` and `ver` are set for the tenant in `tid`.
    pub fn mint(&self, mut claims: Value) -> String {
        let tid = claims["tid"].as_str().unwrap_or_default().to_string();
        claims["iss"] = json!(format!("{DEV_ISSUER_PREFIX}/{tid}/v2.0"));
        claims["ver"] = json!("2.0");
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        crate::jwt::encode(&header, &claims, |input| {
            let mut signature = vec![0; self.pair.public_modulus_len()];
            self.pair
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input,
                    &mut signature,
                )
                .expect("RSA signing with a valid key succeeds");
            signature
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
