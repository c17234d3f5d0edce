//! DER building with rcgen, signed by the vault. rcgen signs synchronously, and the vault
//! signs asynchronously: each structure is therefore serialized twice. The first pass
//! records the exact to-be-signed bytes (the TBSCertificate or TBSCertList); the vault signs
//! their digest; the second pass, from the same parameters, must produce the same bytes and
//! receives that signature. The CA's private key never enters this process.

use std::sync::{Arc, Mutex};

use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::PkiError;

/// A public key as rcgen wants it: the subjectPublicKey bits and the algorithm they are for.
#[derive(Debug, Clone)]
pub struct SubjectKey {
    /// The BIT STRING content of subjectPublicKeyInfo (PKCS#1 RSAPublicKey for RSA, the
    /// uncompressed point for EC).
    pub bits: Vec<u8>,
    pub algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

#[derive(Default)]
struct Exchange {
    /// What the first pass asked to be signed.
    message: Option<Vec<u8>>,
    /// The vault's signature over it, for the second pass.
    signature: Option<Vec<u8>>,
}

/// The CA key as rcgen's signer: records, or answers with the vault's signature.
#[derive(Clone)]
pub struct RemoteSigner {
    key: SubjectKey,
    exchange: Arc<Mutex<Exchange>>,
}

impl PublicKeyData for RemoteSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.key.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm
    }
}

impl SigningKey for RemoteSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut exchange = self.exchange.lock().expect("signer lock");
        match &exchange.signature {
            None => {
                exchange.message = Some(msg.to_vec());
                // a placeholder: the first pass's output is thrown away
                Ok(vec![0; 1])
            }
            Some(signature) if exchange.message.as_deref() == Some(msg) => Ok(signature.clone()),
            // the two passes serialized differently: refuse rather than mis-sign
            Some(_) => Err(rcgen::Error::RemoteKeyError),
        }
    }
}

/// Builds and signs a structure with the vault key `key_name` (RSA, PKCS#1 v1.5 SHA-256).
/// `build` is called twice with a signer; it must build the same structure both times.
pub async fn sign_with_vault<T>(
    vault: &dyn vault::Vault,
    key_name: &str,
    ca_key: &SubjectKey,
    build: impl Fn(RemoteSigner) -> Result<T, rcgen::Error>,
) -> Result<T, PkiError> {
    let signer = RemoteSigner {
        key: ca_key.clone(),
        exchange: Arc::default(),
    };
    build(signer.clone()).map_err(PkiError::build)?;
    let message = signer
        .exchange
        .lock()
        .expect("signer lock")
        .message
        .clone()
        .ok_or_else(|| PkiError::Internal("nothing was signed".into()))?;
    let digest = vault::sha256(&message);
    let signature = vault
        .sign_digest(key_name, vault::SignAlgorithm::Rs256, &digest)
        .await?;
    signer.exchange.lock().expect("signer lock").signature = Some(signature);
    build(signer).map_err(PkiError::build)
}

/// The CA key of an RSA public key from the vault.
pub fn rsa_key(public: &vault::RsaPublicKey) -> SubjectKey {
    SubjectKey {
        bits: vault::rsa_public_key_der(public),
        algorithm: &rcgen::PKCS_RSA_SHA256,
    }
}

fn der_length(len: usize, out: &mut Vec<u8>) {
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

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_length(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// id-ad-caIssuers (1.3.6.1.5.5.7.48.2), DER-encoded.
const CA_ISSUERS_OID: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];

/// The Authority Information Access extension's value naming where the CA certificate is
/// (rcgen writes no AIA of its own).
pub fn authority_info_access(ca_issuers_url: &str) -> rcgen::CustomExtension {
    let mut description = CA_ISSUERS_OID.to_vec();
    // accessLocation: GeneralName uniformResourceIdentifier, [6] IMPLICIT IA5String
    description.extend(der(0x86, ca_issuers_url.as_bytes()));
    let value = der(0x30, &der(0x30, &description));
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], value)
}

/// A random serial number: 16 bytes, positive, 127 bits of randomness.
pub fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| PkiError::Internal("random serial".into()))?;
    serial[0] &= 0x7f;
    // a leading zero byte would make the DER INTEGER shorter than 16 bytes; keep it long
    serial[0] |= 0x01;
    Ok(serial.to_vec())
}

/// Hex of bytes, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SHA-256 thumbprint of a DER certificate, lower-case hex.
pub fn thumbprint(der: &[u8]) -> String {
    hex(&vault::sha256(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_sixteen_bytes() {
        let s = random_serial().unwrap();
        assert_eq!(s.len(), 16);
        assert!(s[0] & 0x80 == 0 && s[0] != 0);
        assert_eq!(unhex(&hex(&s)).unwrap(), s);
    }
}
