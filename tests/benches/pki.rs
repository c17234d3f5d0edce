//! Certificate issuance latency with the CA key in the local vault and certificates stored
//! in Azurite, in process (the `pki` crate, as the handler calls it): p50 and p99 for a
//! 2048-bit key made here, a 4096-bit key from the pool and with the pool empty, and the
//! CSR path (EC P-256); then issuances per second with 8 concurrent clients on the CSR path.
//!
//! cargo bench -p system-tests --bench pki
//! (PKI_N_2048, PKI_N_4096, PKI_N_EMPTY, PKI_N_CSR, PKI_N_CONCURRENT change the counts)

use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::{CertificateType, Holder, IssueRequest, KeyFormat, KeyPool, Pki, TableCertificateStore};
use system_tests::{Azurite, env_or, unique_table};
use uuid::Uuid;

fn holder(tenant: Uuid) -> Holder {
    Holder {
        tenant,
        user_id: Uuid::new_v4(),
        entra_id: Some(Uuid::new_v4()),
        upn: "bench.user@contoso.example".into(),
        email: Some("bench.user@contoso.example".into()),
        name: Some("Bench User".into()),
    }
}

fn request(tenant: Uuid, key_size: Option<u32>, csr: Option<String>) -> IssueRequest {
    IssueRequest {
        holder: holder(tenant),
        kind: CertificateType::ClientAuth,
        validity_days: 365,
        key_size,
        csr,
        key_format: KeyFormat::Pkcs8,
    }
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

async fn pki(vault_dir: &std::path::Path, pool: usize) -> (Pki, Uuid) {
    let table = Azurite::shared().client().table(unique_table("benchcerts"));
    table.create_if_not_exists().await.unwrap();
    let pki = Pki::new(
        Arc::new(vault::LocalVault::new(vault_dir)),
        Arc::new(TableCertificateStore::new(table)),
        "https://connector.example.com",
        KeyPool::new(pool),
    );
    let tenant = Uuid::new_v4();
    pki.ensure_authority(tenant, "Bench").await.unwrap();
    (pki, tenant)
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<34} n={:<4} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = std::env::temp_dir().join(format!("pki-bench-{}", Uuid::new_v4()));
    // no pool here: a pool filling in the background would compete for the 2 cores
    let (no_pool, tenant_b) = pki(&dir.join("b"), 0).await;
    let mut samples = Vec::new();
    for _ in 0..env_or("PKI_N_2048", 60) {
        let started = Instant::now();
        no_pool
            .issue(request(tenant_b, Some(2048), None), "Bench")
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    percentiles("server key RSA-2048", samples);

    let (with_pool, tenant) = pki(&dir.join("a"), 2).await;
    with_pool.pool().start();

    // each issuance waits (untimed) until the pool has a 4096-bit key ready
    let mut samples = Vec::new();
    for _ in 0..env_or("PKI_N_4096", 12) {
        while with_pool.pool().ready(4096) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        with_pool
            .issue(request(tenant, Some(4096), None), "Bench")
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    percentiles("server key RSA-4096, from the pool", samples);

    // the pool refills after each take: let it finish before the runs without it
    while with_pool.pool().ready(4096) < 2 || with_pool.pool().ready(3072) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples = Vec::new();
    for _ in 0..env_or("PKI_N_EMPTY", 8) {
        let started = Instant::now();
        no_pool
            .issue(request(tenant_b, Some(4096), None), "Bench")
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    percentiles("server key RSA-4096, pool empty", samples);

    let n = env_or("PKI_N_CSR", 300);
    let csrs: Vec<String> = (0..n).map(|_| csr()).collect();
    let mut samples = Vec::new();
    for c in csrs {
        let started = Instant::now();
        no_pool
            .issue(request(tenant_b, None, Some(c)), "Bench")
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    percentiles("CSR (EC P-256)", samples);

    let total = env_or("PKI_N_CONCURRENT", 800);
    let no_pool = Arc::new(no_pool);
    let per_client = total / 8;
    let csrs: Vec<Vec<String>> = (0..8)
        .map(|_| (0..per_client).map(|_| csr()).collect())
        .collect();
    let started = Instant::now();
    let mut clients = Vec::new();
    for mine in csrs {
        let pki = no_pool.clone();
        clients.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for c in mine {
                let t = Instant::now();
                pki.issue(request(tenant_b, None, Some(c)), "Bench")
                    .await
                    .unwrap();
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed();
    percentiles("CSR, 8 concurrent clients", samples);
    println!(
        "CSR, 8 concurrent clients: {} issuances in {:.2} s = {:.0} issuances/s",
        per_client * 8,
        elapsed.as_secs_f64(),
        (per_client * 8) as f64 / elapsed.as_secs_f64()
    );
    std::fs::remove_dir_all(dir).ok();
}
