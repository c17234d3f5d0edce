//! Keys made for users (returned once, never stored), and CSRs' public keys.
//!
//! RSA key generation takes 75 ms (2048) to a second (4096) of CPU on a small machine: it
//! runs on blocking threads, and 3072- and 4096-bit keys come from a small pool refilled in
//! the background, so such a request does not wait for a prime search.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;

use crate::PkiError;
use crate::x509::SubjectKey;

/// A key made for a user: the public part for the certificate and the PKCS#8 private key.
pub struct UserKey {
    pub public: SubjectKey,
    pub pkcs8: Vec<u8>,
}

/// Key sizes offered.
pub const KEY_SIZES: [u32; 3] = [2048, 3072, 4096];

fn size_of(bits: u32) -> Result<KeySize, PkiError> {
    match bits {
        2048 => Ok(KeySize::Rsa2048),
        3072 => Ok(KeySize::Rsa3072),
        4096 => Ok(KeySize::Rsa4096),
        other => Err(PkiError::Invalid(format!(
            "key_size {other} is not offered: 2048, 3072 or 4096"
        ))),
    }
}

/// Makes an RSA key (blocking: call from a blocking thread).
fn generate(bits: u32) -> Result<UserKey, PkiError> {
    let pair = KeyPair::generate(size_of(bits)?)
        .map_err(|_| PkiError::Internal("RSA key generation failed".into()))?;
    let pkcs8 = pair
        .as_der()
        .map_err(|_| PkiError::Internal("PKCS#8 encoding failed".into()))?
        .as_ref()
        .to_vec();
    Ok(UserKey {
        public: SubjectKey {
            bits: pair.public_key().as_ref().to_vec(),
            algorithm: &rcgen::PKCS_RSA_SHA256,
        },
        pkcs8,
    })
}

async fn generate_off_runtime(bits: u32) -> Result<UserKey, PkiError> {
    tokio::task::spawn_blocking(move || generate(bits))
        .await
        .map_err(|e| PkiError::Internal(format!("key generation task: {e}")))?
}

#[derive(Default)]
struct Pools {
    keys: HashMap<u32, VecDeque<UserKey>>,
    filling: HashMap<u32, bool>,
}

/// Pre-generated 3072- and 4096-bit keys. Each key is handed out once. The pool starts
/// filling on the first key taken (an instance that never issues never spends the CPU),
/// or on [`KeyPool::start`].
#[derive(Clone)]
pub struct KeyPool {
    /// Keys kept ready per pooled size (0: no pool).
    target: usize,
    pools: Arc<Mutex<Pools>>,
    started: Arc<std::sync::atomic::AtomicBool>,
}

/// Sizes worth pooling: smaller keys are made on request in well under 100 ms.
const POOLED: [u32; 2] = [3072, 4096];

impl KeyPool {
    /// A pool keeping `target` keys of each pooled size; call [`KeyPool::start`] to fill it.
    pub fn new(target: usize) -> KeyPool {
        KeyPool {
            target,
            pools: Arc::default(),
            started: Arc::default(),
        }
    }

    /// Starts filling the pool in the background (needs a Tokio runtime); idempotent.
    pub fn start(&self) {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for bits in POOLED {
            self.refill(bits);
        }
    }

    /// Keys ready of a size.
    pub fn ready(&self, bits: u32) -> usize {
        self.pools
            .lock()
            .expect("pool lock")
            .keys
            .get(&bits)
            .map_or(0, VecDeque::len)
    }

    /// A key of `bits`: from the pool when one is ready, made now otherwise.
    pub async fn take(&self, bits: u32) -> Result<UserKey, PkiError> {
        size_of(bits)?;
        self.start();
        if POOLED.contains(&bits) && self.target > 0 {
            let ready = self
                .pools
                .lock()
                .expect("pool lock")
                .keys
                .get_mut(&bits)
                .and_then(VecDeque::pop_front);
            self.refill(bits);
            if let Some(key) = ready {
                return Ok(key);
            }
        }
        generate_off_runtime(bits).await
    }

    /// Makes keys in the background until `target` are ready (one filler per size).
    fn refill(&self, bits: u32) {
        if self.target == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        {
            let mut pools = self.pools.lock().expect("pool lock");
            let filling = pools.filling.entry(bits).or_default();
            if *filling {
                return;
            }
            *filling = true;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                {
                    // checked and cleared under the lock: a take between the two would
                    // otherwise find `filling` still set and its refill would be lost
                    let mut pools = pool.pools.lock().expect("pool lock");
                    if pools.keys.get(&bits).map_or(0, VecDeque::len) >= pool.target {
                        pools.filling.insert(bits, false);
                        break;
                    }
                }
                match generate_off_runtime(bits).await {
                    Ok(key) => pool
                        .pools
                        .lock()
                        .expect("pool lock")
                        .keys
                        .entry(bits)
                        .or_default()
                        .push_back(key),
                    Err(e) => {
                        tracing::warn!(error = %e, bits, "key pool refill failed");
                        pool.pools
                            .lock()
                            .expect("pool lock")
                            .filling
                            .insert(bits, false);
                        break;
                    }
                }
            }
        });
    }
}

/// A CSR's public key, after its signature verified.
pub struct CsrKey {
    pub public: SubjectKey,
    /// "RSA-2048", "EC-P256"...
    pub description: String,
    /// RSA modulus bits; None for EC.
    pub rsa_bits: Option<u32>,
}

const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";

/// Parses a PEM PKCS#10 request and verifies its signature; only its public key is kept
/// (its subject and requested extensions are ignored: the CA decides them).
pub fn parse_csr(pem: &str) -> Result<CsrKey, PkiError> {
    use x509_parser::prelude::FromDer as _;
    let invalid = |why: &str| PkiError::Invalid(format!("csr: {why}"));
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
        .map_err(|_| invalid("not a PEM block"))?;
    if !matches!(
        block.label.as_str(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(invalid("the PEM block is not a CERTIFICATE REQUEST"));
    }
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|_| invalid("not a PKCS#10 request"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing data after the request"));
    }
    csr.verify_signature()
        .map_err(|_| invalid("its signature does not verify with its own key"))?;
    let spki = &csr.certification_request_info.subject_pki;
    let bits = spki.subject_public_key.data.to_vec();
    match spki.algorithm.algorithm.to_id_string().as_str() {
        RSA_ENCRYPTION => {
            let parsed = spki
                .parsed()
                .map_err(|_| invalid("unreadable RSA public key"))?;
            let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
                return Err(invalid("unreadable RSA public key"));
            };
            let size = rsa.key_size() as u32;
            Ok(CsrKey {
                public: SubjectKey {
                    bits,
                    algorithm: &rcgen::PKCS_RSA_SHA256,
                },
                description: format!("RSA-{size}"),
                rsa_bits: Some(size),
            })
        }
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            if curve.as_deref() != Some(P256) {
                return Err(invalid("EC keys must be on P-256"));
            }
            Ok(CsrKey {
                public: SubjectKey {
                    bits,
                    algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
                },
                description: "EC-P256".into(),
                rsa_bits: None,
            })
        }
        other => Err(invalid(&format!(
            "key algorithm {other} is not accepted (RSA or EC P-256)"
        ))),
    }
}
