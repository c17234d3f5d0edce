//! Issuance, CSRs, revocation and the CRL against a real Azurite, with the CA key in the
//! local vault or in Key Vault (the real SDK over a fake transport). Certificates are read
//! back with x509-parser and checked by `openssl verify -crl_check` against the CA and CRL
//! the service publishes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pki::{
    CertificateType, Holder, IssueRequest, Issued, KeyFormat, KeyPool, Pki, PkiError, PrivateKey,
    RevocationReason, TableCertificateStore,
};
use rcgen::PublicKeyData as _;
use system_tests::fake_key_vault::{FakeCredential, FakeKeyVault, VAULT_URI};
use system_tests::{Azurite, unique_table};
use uuid::Uuid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

const BASE: &str = "https://connector.example.com";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pki-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn pki_with(vault: Arc<dyn vault::Vault>) -> Pki {
    let table = Azurite::shared().client().table(unique_table("certs"));
    table.create_if_not_exists().await.unwrap();
    Pki::new(
        vault,
        Arc::new(TableCertificateStore::new(table)),
        BASE,
        KeyPool::new(0),
    )
}

async fn local_pki() -> (Pki, PathBuf) {
    let dir = scratch();
    let pki = pki_with(Arc::new(vault::LocalVault::new(dir.join("vault")))).await;
    (pki, dir)
}

fn holder(tenant: Uuid) -> Holder {
    Holder {
        tenant,
        user_id: Uuid::new_v4(),
        entra_id: Some(Uuid::new_v4()),
        upn: "ann.lee@contoso.example".into(),
        email: Some("ann.lee@contoso.example".into()),
        name: Some("Ann Lee".into()),
    }
}

fn request(holder: Holder, kind: CertificateType, key_size: Option<u32>) -> IssueRequest {
    IssueRequest {
        holder,
        kind,
        validity_days: 30,
        key_size,
        csr: None,
        key_format: KeyFormat::Pkcs8,
    }
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `openssl verify -crl_check` of a leaf against the tenant's published CA and CRL.
fn openssl_verify(
    dir: &Path,
    ca_pem: &str,
    crl_der: &[u8],
    leaf_pem: &str,
    purpose: &str,
) -> (bool, String) {
    let ca = write(dir, "ca.pem", ca_pem);
    let crl = write(dir, "crl.der", crl_der);
    let crl_pem = dir.join("crl.pem");
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&crl)
        .arg("-out")
        .arg(&crl_pem)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leaf = write(dir, "leaf.pem", leaf_pem);
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-purpose", purpose, "-CAfile"])
        .arg(&ca)
        .arg("-CRLfile")
        .arg(&crl_pem)
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Checks what every issued certificate must say, and returns its SANs.
fn check_common(issued: &Issued, ca_der: &[u8], holder: &Holder) -> Vec<String> {
    let (_, cert) = parse_x509_certificate(&issued.record.der).unwrap();
    let (_, ca) = parse_x509_certificate(ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the tenant's CA");
    assert_eq!(cert.issuer(), ca.subject());
    assert!(cert.raw_serial().len() >= 8, "at least 64 bits of serial");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = cert.validity().not_before.timestamp();
    assert!(
        (now - nb) >= 4 * 60 && (now - nb) <= 6 * 60,
        "backdated ~5 min"
    );
    assert!(cert.validity().not_after <= ca.validity().not_after);
    let ski = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .expect("AKI");
    let ca_ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
            _ => None,
        })
        .expect("CA SKI");
    assert_eq!(ski.0, ca_ski.0);
    assert!(cert.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(!bc.value.ca);
    let crl_dp = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(dp) => Some(format!("{dp:?}")),
            _ => None,
        })
        .expect("CRL distribution point");
    assert!(crl_dp.contains(&format!("{BASE}/api/v1/pki/{}/crl", holder.tenant)));
    let aia = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => Some(aia.clone()),
            _ => None,
        })
        .expect("AIA");
    assert_eq!(
        aia.accessdescs[0].access_method.to_id_string(),
        "1.3.6.1.5.5.7.48.2"
    );
    assert!(matches!(
        aia.accessdescs[0].access_location,
        GeneralName::URI(u) if u == format!("{BASE}/api/v1/pki/{}/ca.crt", holder.tenant)
    ));
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(!eku.server_auth && !eku.any, "never serverAuth or anyEKU");
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SANs")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::OtherName(oid, value) => {
                // [0] EXPLICIT UTF8String: skip the two headers
                format!(
                    "otherName:{}:{}",
                    oid.to_id_string(),
                    String::from_utf8_lossy(&value[4..])
                )
            }
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::RFC822Name(e) => format!("email:{e}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        issued.record.thumbprint,
        pki::x509::thumbprint(&issued.record.der)
    );
    sans
}

#[tokio::test]
async fn a_client_auth_certificate_chains_to_the_tenants_ca_and_passes_openssls_crl_check() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    let issued = pki
        .issue(
            request(h.clone(), CertificateType::ClientAuth, None),
            "Contoso",
        )
        .await
        .unwrap();
    let authority = pki
        .authority(tenant)
        .await
        .unwrap()
        .expect("CA created on first use");
    let sans = check_common(&issued, &authority.der, &h);
    assert_eq!(
        sans,
        vec![
            format!("otherName:1.3.6.1.4.1.311.20.2.3:{}", h.upn),
            format!("uri:urn:entra:tid:{tenant}:oid:{}", h.entra_id.unwrap()),
        ]
    );
    let (_, cert) = parse_x509_certificate(&issued.record.der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.email_protection && !eku.code_signing);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let (_, ca) = parse_x509_certificate(&authority.der).unwrap();
    let ca_ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ca_ku.key_cert_sign() && ca_ku.crl_sign());
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    assert!(ca.subject().to_string().contains(&tenant.to_string()));
    // the key was made here, returned once as PKCS#8, and matches the certificate
    let Some(PrivateKey::Pkcs8Pem(key)) = &issued.private_key else {
        panic!("a PKCS#8 key")
    };
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let rsa_bits = match cert.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(r) => r.key_size(),
        other => panic!("{other:?}"),
    };
    assert_eq!(rsa_bits, 2048);
    assert_eq!(issued.chain.len(), 2);

    let crl = pki
        .crl(tenant)
        .await
        .unwrap()
        .expect("a CRL from the start");
    let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl, &issued.chain[0], "sslclient");
    assert!(ok, "openssl verify: {out}");

    // revoke, then the CRL (a higher number) lists the serial and openssl refuses it
    let revoked = pki
        .revoke(
            tenant,
            issued.record.id,
            RevocationReason::KeyCompromise,
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(revoked.status, pki::CertificateStatus::Revoked);
    let again = pki
        .revoke(
            tenant,
            issued.record.id,
            RevocationReason::Superseded,
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(
        again.reason,
        Some(RevocationReason::KeyCompromise),
        "idempotent"
    );
    let crl2 = pki.crl(tenant).await.unwrap().unwrap();
    let (_, parsed) = parse_x509_crl(&crl2).unwrap();
    let (_, first) = parse_x509_crl(&crl).unwrap();
    assert!(parsed.crl_number().unwrap() > first.crl_number().unwrap());
    assert!(parsed.next_update().is_some());
    let serials: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| pki::x509::hex(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![issued.record.serial.clone()]);
    parsed
        .verify_signature(
            parse_x509_certificate(&authority.der)
                .unwrap()
                .1
                .public_key(),
        )
        .expect("the CRL is signed by the CA");
    let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl2, &issued.chain[0], "sslclient");
    assert!(!ok && out.contains("revoked"), "openssl verify: {out}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn every_type_and_key_size_has_its_eku_key_usage_and_names() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    let email = pki
        .issue(
            request(h.clone(), CertificateType::EmailProtection, Some(3072)),
            "Contoso",
        )
        .await
        .unwrap();
    let mut p12_request = request(h.clone(), CertificateType::CodeSigning, Some(4096));
    p12_request.key_format = KeyFormat::Pkcs12;
    let code = pki.issue(p12_request, "Contoso").await.unwrap();
    let authority = pki.authority(tenant).await.unwrap().unwrap();
    let crl = pki.crl(tenant).await.unwrap().unwrap();

    let sans = check_common(&email, &authority.der, &h);
    assert!(sans.contains(&format!("email:{}", h.email.as_deref().unwrap())));
    let (_, cert) = parse_x509_certificate(&email.record.der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.email_protection && !eku.client_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert_eq!(
        cert.public_key().parsed().map(|k| k.key_size()).unwrap(),
        3072
    );
    let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl, &email.chain[0], "smimesign");
    assert!(ok, "{out}");

    check_common(&code, &authority.der, &h);
    let (_, cert) = parse_x509_certificate(&code.record.der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.code_signing && !eku.client_auth && !eku.email_protection);
    assert_eq!(
        cert.public_key().parsed().map(|k| k.key_size()).unwrap(),
        4096
    );
    let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl, &code.chain[0], "any");
    assert!(ok, "{out}");
    // the PKCS#12 opens with its one-time password and holds key, certificate and CA
    let Some(PrivateKey::Pkcs12 { der, password }) = &code.private_key else {
        panic!("a PKCS#12")
    };
    let p12 = write(&dir, "user.p12", der);
    let out = Command::new("openssl")
        .args(["pkcs12", "-nodes", "-passin"])
        .arg(format!("pass:{password}"))
        .arg("-in")
        .arg(&p12)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(text.contains("BEGIN PRIVATE KEY"));
    std::fs::remove_dir_all(dir).ok();
}

fn csr_of(key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Someone Else");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.serialize_request(key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn a_csrs_key_is_used_and_nothing_else_it_asks_for() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    for key in [
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap(),
    ] {
        let mut req = request(h.clone(), CertificateType::ClientAuth, None);
        req.csr = Some(csr_of(&key));
        let issued = pki.issue(req, "Contoso").await.unwrap();
        assert!(
            issued.private_key.is_none(),
            "the key stays with the requester"
        );
        let authority = pki.authority(tenant).await.unwrap().unwrap();
        let sans = check_common(&issued, &authority.der, &h);
        assert!(!sans.iter().any(|s| s.contains("evil")), "{sans:?}");
        let (_, cert) = parse_x509_certificate(&issued.record.der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(!cert.subject().to_string().contains("Someone Else"));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let crl = pki.crl(tenant).await.unwrap().unwrap();
        let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl, &issued.chain[0], "sslclient");
        assert!(ok, "{out}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn bad_csrs_and_out_of_range_requests_are_refused_and_nothing_is_written() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_of(&key);
    // forge: change one byte of the subject, keep the signature
    let (_, block) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
    let mut der = block.contents.clone();
    let at = der.windows(12).position(|w| w == b"Someone Else").unwrap();
    der[at] = b'T';
    let forged = pki::x509::pem("CERTIFICATE REQUEST", &der);
    let p384 = csr_of(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap());
    let cases: Vec<(IssueRequest, &str)> = vec![
        (
            IssueRequest {
                csr: Some(forged),
                ..request(h.clone(), CertificateType::ClientAuth, None)
            },
            "signature",
        ),
        (
            IssueRequest {
                csr: Some("not a csr".into()),
                ..request(h.clone(), CertificateType::ClientAuth, None)
            },
            "PEM",
        ),
        (
            IssueRequest {
                csr: Some(p384),
                ..request(h.clone(), CertificateType::ClientAuth, None)
            },
            "P-256",
        ),
        (
            request(h.clone(), CertificateType::ClientAuth, Some(1024)),
            "key_size",
        ),
        (
            IssueRequest {
                validity_days: 0,
                ..request(h.clone(), CertificateType::ClientAuth, None)
            },
            "validity_days",
        ),
        (
            IssueRequest {
                validity_days: 3651,
                ..request(h.clone(), CertificateType::ClientAuth, None)
            },
            "validity_days",
        ),
        (
            request(
                Holder {
                    email: None,
                    ..h.clone()
                },
                CertificateType::EmailProtection,
                None,
            ),
            "e-mail",
        ),
    ];
    for (req, why) in cases {
        match pki.issue(req, "Contoso").await {
            Err(PkiError::Invalid(m)) => assert!(m.contains(why), "{m} should mention {why}"),
            other => panic!("expected Invalid({why}), got {other:?}"),
        }
    }
    assert!(
        pki.authority(tenant).await.unwrap().is_none(),
        "nothing written"
    );
    assert!(
        pki.certificates(tenant, None, None)
            .await
            .unwrap()
            .is_empty()
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn through_key_vault_the_ca_key_signs_remotely() {
    let fake = Arc::new(FakeKeyVault::default());
    let credential = Arc::new(FakeCredential::default());
    let transport = azure_core::http::Transport::new(fake.clone());
    let kv = vault::KeyVault::new(VAULT_URI, credential, Some(transport)).unwrap();
    let pki = pki_with(Arc::new(kv)).await;
    let dir = scratch();
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    let issued = pki
        .issue(
            request(h.clone(), CertificateType::ClientAuth, None),
            "Contoso",
        )
        .await
        .unwrap();
    let authority = pki.authority(tenant).await.unwrap().unwrap();
    check_common(&issued, &authority.der, &h);
    pki.revoke_all(
        tenant,
        Some(&[h.user_id]),
        RevocationReason::CessationOfOperation,
        "scim",
    )
    .await
    .unwrap();
    let crl = pki.crl(tenant).await.unwrap().unwrap();
    let (ok, out) = openssl_verify(&dir, &authority.pem(), &crl, &issued.chain[0], "sslclient");
    assert!(!ok && out.contains("revoked"), "{out}");
    let log = fake.log();
    // CA self-signature, first CRL, the leaf, the CRL after revocation
    assert!(
        log.iter().filter(|l| l.contains("/sign")).count() >= 4,
        "{log:?}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn revoking_all_of_a_users_certificates_is_idempotent_and_recorded() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    let other = holder(tenant);
    for holder in [&h, &h, &other] {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut req = request(holder.clone(), CertificateType::ClientAuth, None);
        req.csr = Some(csr_of(&key));
        pki.issue(req, "Contoso").await.unwrap();
    }
    let n = pki
        .revoke_all(
            tenant,
            Some(&[h.user_id]),
            RevocationReason::CessationOfOperation,
            "graph_sync",
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let number = pki.authority(tenant).await.unwrap().unwrap().crl_number;
    let again = pki
        .revoke_all(
            tenant,
            Some(&[h.user_id]),
            RevocationReason::CessationOfOperation,
            "graph_sync",
        )
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(
        pki.authority(tenant).await.unwrap().unwrap().crl_number,
        number,
        "a replay makes no new CRL"
    );
    let mine = pki
        .certificates(tenant, Some(&[h.user_id]), None)
        .await
        .unwrap();
    assert!(
        mine.iter()
            .all(|c| c.reason == Some(RevocationReason::CessationOfOperation)
                && c.revoked_by.as_deref() == Some("graph_sync"))
    );
    let theirs = pki
        .certificates(tenant, Some(&[other.user_id]), None)
        .await
        .unwrap();
    assert!(
        theirs
            .iter()
            .all(|c| c.status == pki::CertificateStatus::Active)
    );
    let crl = pki.crl(tenant).await.unwrap().unwrap();
    let (_, parsed) = parse_x509_crl(&crl).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 2);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn certificates_of_many_users_are_listed_in_one_call() {
    let (pki, dir) = local_pki().await;
    let tenant = Uuid::new_v4();
    let holders: Vec<Holder> = (0..12).map(|_| holder(tenant)).collect();
    for h in &holders {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut req = request(h.clone(), CertificateType::ClientAuth, None);
        req.csr = Some(csr_of(&key));
        pki.issue(req, "Contoso").await.unwrap();
    }
    let ids: Vec<Uuid> = holders.iter().map(|h| h.user_id).collect();
    let listed = pki
        .certificates(tenant, Some(&ids), Some(pki::CertificateStatus::Active))
        .await
        .unwrap();
    assert_eq!(listed.len(), 12);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_key_pool_fills_in_the_background_and_hands_each_key_out_once() {
    let pool = KeyPool::new(1);
    assert_eq!(pool.ready(4096), 0);
    pool.start();
    let started = std::time::Instant::now();
    while pool.ready(4096) < 1 || pool.ready(3072) < 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "pool never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let took = std::time::Instant::now();
    let a = pool.take(4096).await.unwrap();
    assert!(
        took.elapsed() < std::time::Duration::from_millis(100),
        "{:?}",
        took.elapsed()
    );
    assert_eq!(pool.ready(4096), 0, "handed out once");
    let b = pool.take(4096).await.unwrap();
    assert_ne!(a.public.bits, b.public.bits);
}

/// Keeps the revocations it is told of; refuses while `refuse` is set.
#[derive(Default)]
struct Told {
    refuse: std::sync::atomic::AtomicBool,
    ids: std::sync::Mutex<Vec<Uuid>>,
}

#[async_trait::async_trait]
impl pki::RevocationJournal for Told {
    async fn revoked(&self, record: &pki::CertificateRecord) -> Result<(), String> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the audit trail is unavailable".into());
        }
        self.ids.lock().unwrap().push(record.id);
        Ok(())
    }
}

// Automatic revocations (a user disabled by sync or SCIM, a tenant offboarded) left no
// per-certificate record. The journal now hears of each; when it cannot take one, the
// certificate row remembers it and the next revocation of the user tells it again.
#[tokio::test]
async fn every_automatic_revocation_reaches_the_journal_once_even_after_it_failed_and_never_stops_one()
 {
    let dir = scratch();
    let told = Arc::new(Told::default());
    let pki = pki_with(Arc::new(vault::LocalVault::new(dir.join("vault"))))
        .await
        .with_journal(told.clone());
    let tenant = Uuid::new_v4();
    let h = holder(tenant);
    for _ in 0..2 {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut req = request(h.clone(), CertificateType::ClientAuth, None);
        req.csr = Some(csr_of(&key));
        pki.issue(req, "Contoso").await.unwrap();
    }
    let users = [h.user_id];
    let revoke = || {
        pki.revoke_all(
            tenant,
            Some(&users),
            RevocationReason::CessationOfOperation,
            "graph_sync",
        )
    };
    told.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    // the journal failing neither stops nor undoes the revocations
    assert_eq!(revoke().await.unwrap(), 2);
    let mine = pki
        .certificates(tenant, Some(&[h.user_id]), None)
        .await
        .unwrap();
    assert!(
        mine.iter()
            .all(|c| c.status == pki::CertificateStatus::Revoked)
    );
    assert!(told.ids.lock().unwrap().is_empty());
    assert_eq!(
        pki.record_unrecorded(tenant).await.unwrap(),
        0,
        "still refused"
    );
    told.refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Housekeeping's pass tells both once the journal works (the user is never named again)
    assert_eq!(pki.record_unrecorded(tenant).await.unwrap(), 2);
    assert_eq!(
        told.ids.lock().unwrap().len(),
        2,
        "both told once the journal works"
    );
    assert_eq!(revoke().await.unwrap(), 0, "nothing left to revoke");
    assert_eq!(pki.record_unrecorded(tenant).await.unwrap(), 0);
    assert_eq!(told.ids.lock().unwrap().len(), 2, "and never again");
    std::fs::remove_dir_all(dir).ok();
}
