//! Certificates for a tenant's Entra users, from one issuing CA per tenant whose key is made
//! in, and never leaves, the vault: every TBSCertificate and CRL is signed by the vault's
//! sign operation over its digest. Issuance rules (names, extensions, validity), revocation
//! and the CRL live here, with the store trait and its Table Storage implementation.

mod keys;
mod store;
pub mod x509;

pub use keys::{CsrKey, KEY_SIZES, KeyPool, UserKey, parse_csr};
pub use store::{CertificateStore, StoreError, TableCertificateStore};

use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::x509::{SubjectKey, hex, pem, thumbprint};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The request breaks a rule (bad input, a user not eligible): a 4xx, nothing written.
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("vault: {0}")]
    Vault(#[from] vault::VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kept changing under concurrent writers.
    #[error("the authority changed concurrently; try again")]
    Contended,
    /// A defect here.
    #[error("internal: {0}")]
    Internal(String),
}

impl PkiError {
    fn build(e: rcgen::Error) -> PkiError {
        PkiError::Internal(format!("certificate encoding: {e}"))
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateType {
    ClientAuth,
    EmailProtection,
    CodeSigning,
}

impl CertificateType {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateType::ClientAuth => "client_auth",
            CertificateType::EmailProtection => "email_protection",
            CertificateType::CodeSigning => "code_signing",
        }
    }

    /// From the API's name.
    pub fn parse(s: &str) -> Option<CertificateType> {
        [
            CertificateType::ClientAuth,
            CertificateType::EmailProtection,
            CertificateType::CodeSigning,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// Active or revoked (expiry is read from `not_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    Active,
    Revoked,
}

impl CertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "active",
            CertificateStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<CertificateStatus> {
        match s {
            "active" => Some(CertificateStatus::Active),
            "revoked" => Some(CertificateStatus::Revoked),
            _ => None,
        }
    }
}

/// RFC 5280 revocation reasons (removeFromCRL is not offered: nothing is put on hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    const ALL: [RevocationReason; 9] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// RFC 5280's name (`keyCompromise`...).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }

    /// From RFC 5280's name, case-insensitively (snake_case accepted too).
    pub fn parse(s: &str) -> Option<RevocationReason> {
        let wanted = s.replace('_', "").to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().to_ascii_lowercase() == wanted)
    }

    /// Every name, for error messages.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        }
    }
}

/// A tenant's issuing CA: its certificate, the vault key that signs for it, the current CRL.
#[derive(Debug, Clone)]
pub struct Authority {
    pub tenant: Uuid,
    /// The vault key (made for this CA alone).
    pub key_name: String,
    pub der: Vec<u8>,
    pub crl_der: Vec<u8>,
    pub crl_number: u64,
    pub crl_this_update: OffsetDateTime,
    pub crl_next_update: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

impl Authority {
    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// Subject, serial and validity of the CA certificate.
    pub fn describe(&self) -> Result<CertificateInfo, PkiError> {
        CertificateInfo::of(&self.der)
    }
}

/// What a certificate says, read back from its DER.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub subject: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub thumbprint: String,
}

impl CertificateInfo {
    /// Reads a certificate's DER (any certificate: a CA's, an app credential's).
    pub fn of(der: &[u8]) -> Result<CertificateInfo, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::Internal(format!("a stored certificate is unreadable: {e}")))?;
        let time = |t: x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(t.timestamp())
                .map_err(|_| PkiError::Internal("certificate time out of range".into()))
        };
        Ok(CertificateInfo {
            subject: cert.subject().to_string(),
            serial: hex(cert.raw_serial()),
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
            thumbprint: thumbprint(der),
        })
    }
}

/// An issued certificate as stored (never with a private key).
#[derive(Debug, Clone)]
pub struct CertificateRecord {
    pub id: Uuid,
    pub tenant: Uuid,
    pub user_id: Uuid,
    /// Lower-case hex of the serial number.
    pub serial: String,
    pub kind: CertificateType,
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, lower-case hex.
    pub thumbprint: String,
    pub der: Vec<u8>,
    /// `server` (a key made here, returned once) or `csr`.
    pub key_source: String,
    pub status: CertificateStatus,
    pub revoked_at: Option<OffsetDateTime>,
    pub reason: Option<RevocationReason>,
    /// What revoked it: `admin`, `scim`, `graph_sync`, `offboarding`.
    pub revoked_by: Option<String>,
    /// For an automatic revocation ([`Pki::revoke_all`]) with a [`RevocationJournal`]:
    /// whether the journal has it yet (`Some(false)` until it has; `None` otherwise).
    pub revocation_recorded: Option<bool>,
    pub created_at: OffsetDateTime,
}

/// Told of every certificate an automatic revocation ([`Pki::revoke_all`]: a user disabled
/// or deleted, a tenant offboarded) revoked, after the revocation is stored (the audit trail
/// listens here). Until it answers Ok the certificate row says so, and the next
/// `revoke_all` naming its user, or [`Pki::record_unrecorded`] (Housekeeping), tells it
/// again: a crash or an outage in between loses no record, and the record must be
/// idempotent (same certificate, same record). Its failure never undoes or stops a
/// revocation.
#[async_trait::async_trait]
pub trait RevocationJournal: Send + Sync {
    async fn revoked(&self, record: &CertificateRecord) -> Result<(), String>;
}

impl CertificateRecord {
    /// The certificate in PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// Active and not expired.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.status == CertificateStatus::Active && self.not_after > now
    }
}

/// The user a certificate is for, as the directory knows them.
#[derive(Debug, Clone)]
pub struct Holder {
    pub tenant: Uuid,
    /// The directory's local id.
    pub user_id: Uuid,
    /// The Entra object id; None for a SCIM user Entra sent without one.
    pub entra_id: Option<Uuid>,
    pub upn: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// How the private key of a server-made key is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    Pkcs8,
    Pkcs12,
}

/// An issuance request, checked by [`Pki::issue`].
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub holder: Holder,
    pub kind: CertificateType,
    pub validity_days: u32,
    /// The requested RSA size; for a CSR, None means "whatever size the CSR's key has".
    pub key_size: Option<u32>,
    pub csr: Option<String>,
    pub key_format: KeyFormat,
}

/// A private key returned once.
#[derive(Debug)]
pub enum PrivateKey {
    /// PKCS#8 PEM (`PRIVATE KEY`).
    Pkcs8Pem(String),
    /// A PKCS#12 file (key, certificate and CA) with a one-time password.
    Pkcs12 { der: Vec<u8>, password: String },
}

/// The outcome of an issuance.
#[derive(Debug)]
pub struct Issued {
    pub record: CertificateRecord,
    /// The certificate then the CA, PEM.
    pub chain: Vec<String>,
    /// Present when the key was made here.
    pub private_key: Option<PrivateKey>,
}

/// Limits of issuance requests.
pub const MAX_VALIDITY_DAYS: u32 = 3650;
/// How far not_before is set back, for relying parties whose clocks run slow.
pub const BACKDATE: Duration = Duration::minutes(5);
/// How long a CRL is valid; one is made again well before.
pub const CRL_VALIDITY: Duration = Duration::days(7);
/// A CRL older than this is made again when asked for.
pub const CRL_REFRESH_AFTER: Duration = Duration::days(1);
/// The CA certificate's lifetime.
pub const CA_VALIDITY: Duration = Duration::days(3650 + 365);
/// The CA key (the vault holds RSA keys; 3072 bits per the issue).
pub const CA_KEY_BITS: u32 = 3072;

/// OID of the Microsoft UPN otherName.
const UPN_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

/// The PKI service.
pub struct Pki {
    vault: Arc<dyn vault::Vault>,
    store: Arc<dyn CertificateStore>,
    /// `PUBLIC_BASE_URL` without a trailing slash: CRL and AIA URLs are under it.
    base_url: String,
    pool: KeyPool,
    journal: Option<Arc<dyn RevocationJournal>>,
}

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

impl Pki {
    /// The service; `pool` is started by the caller.
    pub fn new(
        vault: Arc<dyn vault::Vault>,
        store: Arc<dyn CertificateStore>,
        base_url: &str,
        pool: KeyPool,
    ) -> Pki {
        Pki {
            vault,
            store,
            base_url: base_url.trim_end_matches('/').to_string(),
            pool,
            journal: None,
        }
    }

    /// The same service, telling `journal` of every automatic revocation.
    pub fn with_journal(mut self, journal: Arc<dyn RevocationJournal>) -> Pki {
        self.journal = Some(journal);
        self
    }

    /// The key pool.
    pub fn pool(&self) -> &KeyPool {
        &self.pool
    }

    /// Where the tenant's CRL is published.
    pub fn crl_url(&self, tenant: Uuid) -> String {
        format!("{}/api/v1/pki/{tenant}/crl", self.base_url)
    }

    /// Where the tenant's CA certificate (DER) is published.
    pub fn ca_url(&self, tenant: Uuid) -> String {
        format!("{}/api/v1/pki/{tenant}/ca.crt", self.base_url)
    }

    /// The tenant's authority, if it has one.
    pub async fn authority(&self, tenant: Uuid) -> Result<Option<Authority>, PkiError> {
        Ok(self.store.authority(tenant).await?.map(|(a, _)| a))
    }

    /// The tenant's authority, created when it has none (true when created now). Two
    /// instances creating at once each make a vault key; the one whose row is stored first
    /// wins, and the other's key is left unused.
    pub async fn ensure_authority(
        &self,
        tenant: Uuid,
        display_name: &str,
    ) -> Result<(Authority, bool), PkiError> {
        if let Some((a, _)) = self.store.authority(tenant).await? {
            return Ok((a, false));
        }
        let mut unique = [0u8; 6];
        aws_lc_rs::rand::fill(&mut unique).map_err(|_| PkiError::Internal("random".into()))?;
        let key_name = format!("pki-ca-{tenant}-{}", hex(&unique));
        let public = self.vault.create_rsa_key(&key_name, CA_KEY_BITS).await?;
        let ca_key = x509::rsa_key(&public);
        let now = now_seconds();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Entra users CA {tenant}"),
        );
        let org: String = display_name.chars().take(64).collect();
        if !org.trim().is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, tenant.to_string());
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()?));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let der = x509::sign_with_vault(&*self.vault, &key_name, &ca_key, |signer| {
            params.self_signed(&signer).map(|c| c.der().to_vec())
        })
        .await?;
        let crl = self.build_crl(&key_name, &ca_key, &der, 1, &[]).await?;
        let authority = Authority {
            tenant,
            key_name,
            der,
            crl_der: crl,
            crl_number: 1,
            crl_this_update: now,
            crl_next_update: now + CRL_VALIDITY,
            created_at: now,
        };
        if self.store.create_authority(&authority).await? {
            tracing::info!(%tenant, "certificate authority created");
            return Ok((authority, true));
        }
        tracing::warn!(%tenant, key = %authority.key_name, "lost a race creating the authority; its key is unused");
        let (a, _) = self
            .store
            .authority(tenant)
            .await?
            .ok_or_else(|| PkiError::Internal("the authority vanished".into()))?;
        Ok((a, false))
    }

    /// The CA's public key, read from its certificate (no vault round trip per issuance;
    /// the CA's vault key has one version, made for it alone).
    async fn ca_key(&self, authority: &Authority) -> Result<SubjectKey, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&authority.der)
            .map_err(|e| PkiError::Internal(format!("the CA certificate is unreadable: {e}")))?;
        Ok(SubjectKey {
            bits: cert.public_key().subject_public_key.data.to_vec(),
            algorithm: &rcgen::PKCS_RSA_SHA256,
        })
    }

    async fn build_crl(
        &self,
        key_name: &str,
        ca_key: &SubjectKey,
        ca_der: &[u8],
        number: u64,
        revoked: &[CertificateRecord],
    ) -> Result<Vec<u8>, PkiError> {
        let now = now_seconds();
        let entries: Vec<rcgen::RevokedCertParams> = revoked
            .iter()
            .filter_map(|r| {
                Some(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&x509::unhex(&r.serial)?),
                    revocation_time: r.revoked_at.unwrap_or(now),
                    reason_code: r.reason.map(RevocationReason::rcgen),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let ca_der = rustls_der(ca_der);
        x509::sign_with_vault(&*self.vault, key_name, ca_key, |signer| {
            let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der, signer)?;
            params.signed_by(&issuer).map(|c| c.der().to_vec())
        })
        .await
    }

    /// The tenant's current CRL (DER), made again first when it is a day old.
    pub async fn crl(&self, tenant: Uuid) -> Result<Option<Vec<u8>>, PkiError> {
        let Some((authority, _)) = self.store.authority(tenant).await? else {
            return Ok(None);
        };
        if OffsetDateTime::now_utc() - authority.crl_this_update < CRL_REFRESH_AFTER {
            return Ok(Some(authority.crl_der));
        }
        // anonymous callers: one attempt each; a caller that loses the race to another
        // answers the CRL the winner just published rather than signing again
        match self.make_crl(tenant, 1).await {
            Ok(fresh) => Ok(Some(fresh.crl_der)),
            Err(PkiError::Contended) => Ok(self.authority(tenant).await?.map(|a| a.crl_der)),
            Err(e) => Err(e),
        }
    }

    /// Makes the CRL again from every revoked, unexpired certificate, with the next number.
    /// The authority is read before the certificates, and written only if unchanged, so a
    /// CRL never drops a revocation another writer published.
    pub async fn regenerate_crl(&self, tenant: Uuid) -> Result<Authority, PkiError> {
        self.make_crl(tenant, 8).await
    }

    async fn make_crl(&self, tenant: Uuid, attempts: usize) -> Result<Authority, PkiError> {
        for _ in 0..attempts {
            let (mut authority, etag) = self
                .store
                .authority(tenant)
                .await?
                .ok_or_else(|| PkiError::NotFound(format!("tenant {tenant} has no CA")))?;
            let now = OffsetDateTime::now_utc();
            let revoked: Vec<CertificateRecord> = self
                .store
                .list(tenant, None, Some(CertificateStatus::Revoked))
                .await?
                .into_iter()
                .filter(|r| r.not_after > now)
                .collect();
            let ca_key = self.ca_key(&authority).await?;
            let number = authority.crl_number + 1;
            let crl = self
                .build_crl(
                    &authority.key_name,
                    &ca_key,
                    &authority.der,
                    number,
                    &revoked,
                )
                .await?;
            authority.crl_der = crl;
            authority.crl_number = number;
            authority.crl_this_update = now_seconds();
            authority.crl_next_update = authority.crl_this_update + CRL_VALIDITY;
            if self.store.replace_authority(&authority, &etag).await? {
                return Ok(authority);
            }
        }
        Err(PkiError::Contended)
    }

    /// Issues a certificate. The holder must already have been checked against the
    /// directory (exists in this tenant, came from Entra, active) by the caller.
    pub async fn issue(
        &self,
        request: IssueRequest,
        display_name: &str,
    ) -> Result<Issued, PkiError> {
        if !(1..=MAX_VALIDITY_DAYS).contains(&request.validity_days) {
            return Err(PkiError::Invalid(format!(
                "validity_days must be 1 to {MAX_VALIDITY_DAYS}"
            )));
        }
        if let Some(bits) = request.key_size
            && !KEY_SIZES.contains(&bits)
        {
            return Err(PkiError::Invalid(format!(
                "key_size {bits} is not offered: 2048, 3072 or 4096"
            )));
        }
        let holder = &request.holder;
        if request.kind == CertificateType::EmailProtection && holder.email.is_none() {
            return Err(PkiError::Invalid(format!(
                "user {} has no e-mail address for an email_protection certificate",
                holder.user_id
            )));
        }
        // the subject key: the CSR's, or one made here
        let (public, user_key, key_source) = match &request.csr {
            Some(csr) => {
                let key = parse_csr(csr)?;
                if let Some(bits) = key.rsa_bits {
                    if !KEY_SIZES.contains(&bits) {
                        return Err(PkiError::Invalid(format!(
                            "csr: an RSA key of {bits} bits; 2048, 3072 or 4096 are accepted"
                        )));
                    }
                    if request.key_size.is_some_and(|k| k != bits) {
                        return Err(PkiError::Invalid(format!(
                            "csr: its key has {bits} bits, key_size says {}",
                            request.key_size.unwrap_or_default()
                        )));
                    }
                }
                if request.key_format == KeyFormat::Pkcs12 {
                    return Err(PkiError::Invalid(
                        "key_format applies to keys made here; a CSR's key stays with its requester"
                            .into(),
                    ));
                }
                (key.public, None, "csr")
            }
            None => {
                let key = self.pool.take(request.key_size.unwrap_or(2048)).await?;
                (key.public.clone(), Some(key), "server")
            }
        };
        let (authority, _) = self.ensure_authority(holder.tenant, display_name).await?;
        let ca_key = self.ca_key(&authority).await?;
        let ca_info = authority.describe()?;
        let now = now_seconds();
        let not_after =
            (now + Duration::days(i64::from(request.validity_days))).min(ca_info.not_after);
        let serial = x509::random_serial()?;
        let params = self.leaf_params(&request, now, not_after, &serial, &public)?;
        let ca_der = rustls_der(&authority.der);
        let der = x509::sign_with_vault(&*self.vault, &authority.key_name, &ca_key, |signer| {
            let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der, signer)?;
            params.signed_by(&public, &issuer).map(|c| c.der().to_vec())
        })
        .await?;
        let info = CertificateInfo::of(&der)?;
        let record = CertificateRecord {
            id: Uuid::new_v4(),
            tenant: holder.tenant,
            user_id: holder.user_id,
            serial: hex(&serial),
            kind: request.kind,
            subject: info.subject,
            not_before: info.not_before,
            not_after: info.not_after,
            thumbprint: info.thumbprint,
            der,
            key_source: key_source.into(),
            status: CertificateStatus::Active,
            revoked_at: None,
            reason: None,
            revoked_by: None,
            revocation_recorded: None,
            created_at: OffsetDateTime::now_utc(),
        };
        let private_key = match user_key {
            None => None,
            Some(key) => Some(match request.key_format {
                KeyFormat::Pkcs8 => PrivateKey::Pkcs8Pem(pem("PRIVATE KEY", &key.pkcs8)),
                KeyFormat::Pkcs12 => {
                    let leaf = record.der.clone();
                    let ca = authority.der.clone();
                    let pkcs8 = key.pkcs8;
                    let alias = holder.upn.clone();
                    tokio::task::spawn_blocking(move || pkcs12(&alias, &pkcs8, &leaf, &ca))
                        .await
                        .map_err(|e| PkiError::Internal(format!("PKCS#12 task: {e}")))??
                }
            }),
        };
        // stored last: a failure before leaves nothing behind
        self.store.insert(&record).await?;
        tracing::info!(tenant = %record.tenant, user = %record.user_id, certificate = %record.id, kind = record.kind.as_str(), "certificate issued");
        Ok(Issued {
            chain: vec![record.pem(), authority.pem()],
            record,
            private_key,
        })
    }

    fn leaf_params(
        &self,
        request: &IssueRequest,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
        serial: &[u8],
        public: &SubjectKey,
    ) -> Result<rcgen::CertificateParams, PkiError> {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku, SanType};
        let holder = &request.holder;
        let ia5 = |s: &str| {
            rcgen::string::Ia5String::try_from(s.to_string())
                .map_err(|_| PkiError::Invalid(format!("{s:?} is not ASCII")))
        };
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, holder.upn.as_str());
        params.distinguished_name.push(
            rcgen::DnType::OrganizationalUnitName,
            holder.tenant.to_string(),
        );
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        // the URI binds tenant and user: the Entra object id, or the local id of a SCIM
        // user Entra sent without one (a different word, so the two never collide)
        let binding = match holder.entra_id {
            Some(oid) => format!("urn:entra:tid:{}:oid:{oid}", holder.tenant),
            None => format!("urn:entra:tid:{}:local:{}", holder.tenant, holder.user_id),
        };
        let upn = SanType::OtherName((
            UPN_OID.to_vec(),
            rcgen::OtherNameValue::Utf8String(holder.upn.clone()),
        ));
        let rsa = public.algorithm == &rcgen::PKCS_RSA_SHA256;
        match request.kind {
            CertificateType::ClientAuth => {
                params.subject_alt_names = vec![upn, SanType::URI(ia5(&binding)?)];
                params.key_usages = vec![Ku::DigitalSignature];
                params.extended_key_usages = vec![Eku::ClientAuth];
            }
            CertificateType::EmailProtection => {
                let email = holder.email.as_deref().unwrap_or_default();
                params.subject_alt_names = vec![
                    SanType::Rfc822Name(ia5(email)?),
                    SanType::URI(ia5(&binding)?),
                ];
                params.key_usages = if rsa {
                    vec![Ku::DigitalSignature, Ku::KeyEncipherment]
                } else {
                    vec![Ku::DigitalSignature, Ku::KeyAgreement]
                };
                params.extended_key_usages = vec![Eku::EmailProtection];
            }
            CertificateType::CodeSigning => {
                params.subject_alt_names = vec![upn, SanType::URI(ia5(&binding)?)];
                params.key_usages = vec![Ku::DigitalSignature];
                params.extended_key_usages = vec![Eku::CodeSigning];
            }
        }
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![self.crl_url(holder.tenant)],
        }];
        params
            .custom_extensions
            .push(x509::authority_info_access(&self.ca_url(holder.tenant)));
        Ok(params)
    }

    /// A tenant's certificate.
    pub async fn certificate(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<CertificateRecord>, PkiError> {
        Ok(self.store.get(tenant, id).await?.map(|(r, _)| r))
    }

    /// Certificates of some users (all when None), optionally of one status.
    pub async fn certificates(
        &self,
        tenant: Uuid,
        users: Option<&[Uuid]>,
        status: Option<CertificateStatus>,
    ) -> Result<Vec<CertificateRecord>, PkiError> {
        Ok(self.store.list(tenant, users, status).await?)
    }

    /// Revokes one certificate (idempotent: revoking a revoked one changes nothing but
    /// makes sure the CRL lists it) and publishes a new CRL.
    pub async fn revoke(
        &self,
        tenant: Uuid,
        id: Uuid,
        reason: RevocationReason,
        by: &str,
    ) -> Result<CertificateRecord, PkiError> {
        let record = self.mark_revoked(tenant, id, reason, by, None).await?;
        self.publish_if_missing(tenant, std::slice::from_ref(&record))
            .await?;
        Ok(record)
    }

    async fn mark_revoked(
        &self,
        tenant: Uuid,
        id: Uuid,
        reason: RevocationReason,
        by: &str,
        recorded: Option<bool>,
    ) -> Result<CertificateRecord, PkiError> {
        for _ in 0..8 {
            let (mut record, etag) = self.store.get(tenant, id).await?.ok_or_else(|| {
                PkiError::NotFound(format!("no certificate {id} in tenant {tenant}"))
            })?;
            if record.status == CertificateStatus::Revoked {
                return Ok(record);
            }
            record.status = CertificateStatus::Revoked;
            record.revoked_at = Some(now_seconds());
            record.reason = Some(reason);
            record.revoked_by = Some(by.to_string());
            record.revocation_recorded = recorded;
            if self.store.replace(&record, &etag).await? {
                tracing::info!(%tenant, certificate = %id, reason = reason.as_str(), by, "certificate revoked");
                return Ok(record);
            }
        }
        Err(PkiError::Contended)
    }

    /// Makes a new CRL unless the current one lists every one of `revoked` (so a replay
    /// after a crash between the two writes still publishes, and other replays make none).
    async fn publish_if_missing(
        &self,
        tenant: Uuid,
        revoked: &[CertificateRecord],
    ) -> Result<(), PkiError> {
        let Some(authority) = self.authority(tenant).await? else {
            return Ok(());
        };
        let listed: std::collections::HashSet<String> =
            x509_parser::parse_x509_crl(&authority.crl_der)
                .map_err(|e| PkiError::Internal(format!("the stored CRL is unreadable: {e}")))?
                .1
                .iter_revoked_certificates()
                .map(|r| hex(r.raw_serial()))
                .collect();
        let now = OffsetDateTime::now_utc();
        let missing = revoked
            .iter()
            .any(|r| r.not_after > now && !listed.contains(&r.serial));
        if missing {
            self.regenerate_crl(tenant).await?;
        }
        Ok(())
    }

    /// Revokes every active certificate of some users (all of the tenant's when None):
    /// a user disabled or deleted, a tenant offboarded. Idempotent; how many it revoked.
    pub async fn revoke_all(
        &self,
        tenant: Uuid,
        users: Option<&[Uuid]>,
        reason: RevocationReason,
        by: &str,
    ) -> Result<usize, PkiError> {
        // revoked rows of these users that a CRL may still miss (a crash between writes)
        let all = self.store.list(tenant, users, None).await?;
        let mut revoked = Vec::new();
        let mut count = 0;
        // with a journal, a revocation is marked unrecorded until the journal has it
        let unrecorded = self.journal.as_ref().map(|_| false);
        for record in all {
            if record.status == CertificateStatus::Active {
                revoked.push(
                    self.mark_revoked(tenant, record.id, reason, by, unrecorded)
                        .await?,
                );
                count += 1;
            } else {
                revoked.push(record);
            }
        }
        if !revoked.is_empty() {
            self.publish_if_missing(tenant, &revoked).await?;
        }
        // this call's revocations, and earlier ones a crash or an outage kept from it
        self.tell_journal(tenant, &revoked).await?;
        Ok(count)
    }

    /// Tells the journal of the revocations in `records` it has not had yet. One it cannot
    /// take stays marked on its row, for the next revocation of its user or
    /// [`Pki::record_unrecorded`]: the revocations themselves are done, whatever it says.
    async fn tell_journal(
        &self,
        tenant: Uuid,
        records: &[CertificateRecord],
    ) -> Result<usize, PkiError> {
        let Some(journal) = &self.journal else {
            return Ok(0);
        };
        let mut told = 0;
        for record in records
            .iter()
            .filter(|r| r.revocation_recorded == Some(false))
        {
            match journal.revoked(record).await {
                Ok(()) => {
                    self.mark_recorded(tenant, record.id).await?;
                    told += 1;
                }
                Err(e) => {
                    tracing::warn!(%tenant, certificate = %record.id, error = %e, "revocation not recorded yet; Housekeeping tries again");
                }
            }
        }
        Ok(told)
    }

    /// Tells the journal of every revocation of the tenant it has not had (its record
    /// failed before); Housekeeping calls this. Answers how many it told.
    pub async fn record_unrecorded(&self, tenant: Uuid) -> Result<usize, PkiError> {
        if self.journal.is_none() {
            return Ok(0);
        }
        let revoked = self
            .store
            .list(tenant, None, Some(CertificateStatus::Revoked))
            .await?;
        self.tell_journal(tenant, &revoked).await
    }

    /// Notes on the certificate's row that the journal has its revocation.
    async fn mark_recorded(&self, tenant: Uuid, id: Uuid) -> Result<(), PkiError> {
        for _ in 0..8 {
            let Some((mut record, etag)) = self.store.get(tenant, id).await? else {
                return Ok(());
            };
            if record.revocation_recorded != Some(false) {
                return Ok(());
            }
            record.revocation_recorded = Some(true);
            if self.store.replace(&record, &etag).await? {
                return Ok(());
            }
        }
        Err(PkiError::Contended)
    }
}

impl Pki {
    /// Revokes the active certificates of users a directory write left inactive (disabled
    /// or deleted by Graph sync or SCIM), reason cessationOfOperation, recorded as revoked
    /// by `trigger`. Idempotent: a replay finds nothing left to revoke.
    pub async fn revoke_inactive_users(
        &self,
        tenant: Uuid,
        users: &[Uuid],
        trigger: &str,
    ) -> Result<usize, PkiError> {
        let mut users = users.to_vec();
        users.sort();
        users.dedup();
        let mut revoked = 0;
        // bounded filters: Table Storage caps the comparisons of one filter
        for chunk in users.chunks(50) {
            revoked += self
                .revoke_all(
                    tenant,
                    Some(chunk),
                    RevocationReason::CessationOfOperation,
                    trigger,
                )
                .await?;
        }
        if revoked > 0 {
            tracing::info!(%tenant, revoked, trigger, "certificates of inactive users revoked");
        }
        Ok(revoked)
    }
}

fn rustls_der(der: &[u8]) -> rustls_pki_types::CertificateDer<'static> {
    rustls_pki_types::CertificateDer::from(der.to_vec())
}

/// A PKCS#12 file of the key, the certificate and the CA, under a fresh password.
fn pkcs12(alias: &str, pkcs8: &[u8], leaf: &[u8], ca: &[u8]) -> Result<PrivateKey, PkiError> {
    use base64::Engine as _;
    let fail = |e: p12_keystore::error::Error| PkiError::Internal(format!("PKCS#12: {e}"));
    let mut secret = [0u8; 18];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| PkiError::Internal("random".into()))?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let key = p12_keystore::PrivateKey::from_der(pkcs8).map_err(fail)?;
    let chain = p12_keystore::PrivateKeyChain::new(
        vault::sha256(leaf)[..20].to_vec(),
        key,
        [
            p12_keystore::Certificate::from_der(leaf).map_err(fail)?,
            p12_keystore::Certificate::from_der(ca).map_err(fail)?,
        ],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    let der = store.writer(&password).write().map_err(fail)?;
    Ok(PrivateKey::Pkcs12 { der, password })
}
