//! One contract, both vaults: the local vault on disk, and Key Vault through the real SDK
//! clients with a transport that answers as Key Vault does.

use std::sync::Arc;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};
use system_tests::fake_key_vault::{FakeCredential, FakeKeyVault, VAULT_URI};
use vault::{KeyVault, LocalVault, SignAlgorithm, Vault, VaultError, sha256};

async fn secrets_round_trip(v: &dyn Vault) {
    assert_eq!(v.get_secret("client-secret").await.unwrap(), None);
    v.set_secret("client-secret", "first value").await.unwrap();
    assert_eq!(
        v.get_secret("client-secret").await.unwrap().as_deref(),
        Some("first value")
    );
    v.set_secret("client-secret", "second value ✓")
        .await
        .unwrap();
    assert_eq!(
        v.get_secret("client-secret").await.unwrap().as_deref(),
        Some("second value ✓")
    );
    v.delete_secret("client-secret").await.unwrap();
    assert_eq!(v.get_secret("client-secret").await.unwrap(), None);
    v.delete_secret("never-existed").await.unwrap();
    assert!(matches!(
        v.set_secret("../escape", "x").await,
        Err(VaultError::InvalidName(_))
    ));
    assert!(matches!(
        v.get_secret("a/b").await,
        Err(VaultError::InvalidName(_))
    ));
}

/// What the HR connection does: a secret of a fixed name deleted (connection removed or
/// replaced) and set again later (connection made again).
async fn a_deleted_secret_can_be_set_again(v: &dyn Vault) {
    v.set_secret("hr-refresh-token-x", "first connection")
        .await
        .unwrap();
    v.delete_secret("hr-refresh-token-x").await.unwrap();
    assert_eq!(v.get_secret("hr-refresh-token-x").await.unwrap(), None);
    v.set_secret("hr-refresh-token-x", "second connection")
        .await
        .unwrap();
    assert_eq!(
        v.get_secret("hr-refresh-token-x").await.unwrap().as_deref(),
        Some("second connection")
    );
}

async fn keys_sign_without_leaving(v: &dyn Vault) {
    assert_eq!(v.public_key("app-credential").await.unwrap(), None);
    let public = v.create_rsa_key("app-credential", 2048).await.unwrap();
    assert_eq!(public.n.len(), 256);
    assert_eq!(
        v.public_key("app-credential").await.unwrap(),
        Some(public.clone())
    );
    let message = b"header.claims of a client assertion";
    let components = PublicKeyComponents {
        n: &public.n,
        e: &public.e,
    };
    let pss = v
        .sign_digest("app-credential", SignAlgorithm::Ps256, &sha256(message))
        .await
        .unwrap();
    components
        .verify(&RSA_PSS_2048_8192_SHA256, message, &pss)
        .expect("PS256 verifies");
    let pkcs1 = v
        .sign_digest("app-credential", SignAlgorithm::Rs256, &sha256(message))
        .await
        .unwrap();
    components
        .verify(&RSA_PKCS1_2048_8192_SHA256, message, &pkcs1)
        .expect("RS256 verifies");
    assert!(
        components
            .verify(&RSA_PKCS1_2048_8192_SHA256, b"another message", &pkcs1)
            .is_err()
    );

    assert!(matches!(
        v.sign_digest("missing-key", SignAlgorithm::Ps256, &sha256(message))
            .await,
        Err(VaultError::NoSuchKey(_))
    ));
    assert!(matches!(
        v.sign_digest("app-credential", SignAlgorithm::Ps256, b"short")
            .await,
        Err(VaultError::BadDigest)
    ));

    // a new version replaces the current one
    let rotated = v.create_rsa_key("app-credential", 2048).await.unwrap();
    assert_ne!(rotated, public);
    assert_eq!(v.public_key("app-credential").await.unwrap(), Some(rotated));
}

async fn certificates_are_made_with_keys_that_stay_in_the_vault(v: &dyn Vault) {
    let name = "app-credential-global";
    assert_eq!(v.get_certificate(name).await.unwrap(), None);
    let der = v
        .create_certificate(name, "entra-connector global", 12)
        .await
        .unwrap();
    assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    assert_eq!(v.get_certificate(name).await.unwrap(), Some(der.clone()));
    // the certificate's key is the vault key of the same name
    let public = v
        .public_key(name)
        .await
        .unwrap()
        .expect("the certificate's key");
    assert!(
        der.windows(public.n.len())
            .any(|w| w == public.n.as_slice()),
        "the certificate carries the vault key's modulus"
    );
    let message = b"client assertion";
    let signature = v
        .sign_digest(name, SignAlgorithm::Ps256, &sha256(message))
        .await
        .unwrap();
    PublicKeyComponents {
        n: &public.n,
        e: &public.e,
    }
    .verify(&RSA_PSS_2048_8192_SHA256, message, &signature)
    .expect("the certificate's key signs");
}

fn local() -> (LocalVault, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "local-vault-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    (LocalVault::new(&dir), dir)
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn key_vault() -> (KeyVault, Arc<FakeKeyVault>, Arc<FakeCredential>) {
    let fake = Arc::new(FakeKeyVault::default());
    let credential = Arc::new(FakeCredential::default());
    let transport = azure_core::http::Transport::new(fake.clone());
    let vault = KeyVault::new(VAULT_URI, credential.clone(), Some(transport)).unwrap();
    (vault, fake, credential)
}

#[tokio::test]
async fn local_vault_keeps_secrets() {
    let (v, dir) = local();
    secrets_round_trip(&v).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn local_vault_signs_with_keys_that_stay_on_disk() {
    let (v, dir) = local();
    keys_sign_without_leaving(&v).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn local_vault_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let (v, dir) = local();
    v.set_secret("refresh-token", "value").await.unwrap();
    v.create_rsa_key("signing", 2048).await.unwrap();
    for path in [dir.join("secrets"), dir.join("keys")] {
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700,
            "{}",
            path.display()
        );
    }
    for path in [dir.join("secrets/refresh-token"), dir.join("keys/signing")] {
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn key_vault_keeps_secrets_through_the_sdk() {
    let (v, fake, credential) = key_vault();
    secrets_round_trip(&v).await;
    let log = fake.log();
    assert!(
        log[0].ends_with("auth=none"),
        "the SDK's first request is unauthenticated: {log:?}"
    );
    assert!(
        log[1..].iter().all(|l| l.ends_with("auth=bearer")),
        "{log:?}"
    );
    assert!(
        credential
            .scopes
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "https://vault.azure.net/.default")
    );
}

#[tokio::test]
async fn key_vault_signs_with_keys_that_never_leave_it() {
    let (v, fake, _) = key_vault();
    keys_sign_without_leaving(&v).await;
    assert!(
        fake.log()
            .iter()
            .any(|l| l.starts_with("POST /keys/app-credential/") && l.contains("/sign")),
        "{:?}",
        fake.log()
    );
}

#[tokio::test]
async fn local_vault_makes_certificates() {
    let (v, dir) = local();
    certificates_are_made_with_keys_that_stay_in_the_vault(&v).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn key_vault_makes_certificates_through_the_sdk_poller() {
    let (v, fake, _) = key_vault();
    certificates_are_made_with_keys_that_stay_in_the_vault(&v).await;
    let log = fake.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /certificates/app-credential-global/create")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /certificates/app-credential-global/pending")),
        "polled: {log:?}"
    );
}

#[tokio::test]
async fn local_vault_sets_a_secret_again_after_deleting_it() {
    let (v, dir) = local();
    a_deleted_secret_can_be_set_again(&v).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn key_vault_recovers_a_soft_deleted_secret_to_set_it_again() {
    let (v, fake, _) = key_vault();
    a_deleted_secret_can_be_set_again(&v).await;
    let log = fake.log();
    let at = |line: &str| {
        log.iter()
            .position(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line}: {log:?}"))
    };
    // refused while the name is soft-deleted, recovered, polled until back, then set
    let recover = at("POST /deletedsecrets/hr-refresh-token-x/recover");
    assert!(
        log[recover + 1..]
            .iter()
            .any(|l| l.starts_with("GET /secrets/hr-refresh-token-x")),
        "polled after recovering: {log:?}"
    );
    assert!(
        log[recover + 1..]
            .iter()
            .any(|l| l.starts_with("PUT /secrets/hr-refresh-token-x")),
        "set after recovering: {log:?}"
    );
}

#[tokio::test]
async fn key_vault_gives_up_on_a_recovery_that_does_not_finish_in_time() {
    let (v, fake, _) = key_vault();
    let v = v.with_recovery_wait(std::time::Duration::from_millis(300));
    fake.recovery_takes(u32::MAX);
    v.set_secret("hr-client-secret-x", "one").await.unwrap();
    v.delete_secret("hr-client-secret-x").await.unwrap();
    let started = std::time::Instant::now();
    let result = v.set_secret("hr-client-secret-x", "two").await;
    assert!(
        matches!(&result, Err(VaultError::Unavailable(why)) if why.contains("recover")),
        "{result:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    let log = fake.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /deletedsecrets/hr-client-secret-x/recover")),
        "{log:?}"
    );
    let polls = log
        .iter()
        .filter(|l| l.starts_with("GET /secrets/hr-client-secret-x"))
        .count();
    assert!(polls >= 2, "polled until the wait ran out: {log:?}");
}
