//! In-process validations per second on one core: an RS256 token validated from scratch
//! (keys cached, the token not), and a repeated token through the validated-token cache.
//!
//! cargo bench -p entra --bench validate

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use entra::{Cloud, Endpoints, KeyCachePolicy, TenantLookup, Validator, ValidatorConfig};
use serde_json::json;
use system_tests::fake_entra::{self, FakeEntra};
use uuid::Uuid;

const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

struct Tenants(HashMap<Uuid, Cloud>);

#[async_trait]
impl TenantLookup for Tenants {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        Ok(self.0.get(&tenant_id).copied())
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (fake, validator, token) = rt.block_on(async {
        let fake = FakeEntra::start(fake_entra::GLOBAL).await;
        let validator = Validator::new(ValidatorConfig {
            audiences: vec![CLIENT_ID.into()],
            leeway: Duration::from_secs(60),
            keys: KeyCachePolicy::default(),
            cache_capacity: 10_000,
            endpoints: Endpoints::new(Some(&fake.base_url), None).unwrap(),
            dev_key: None,
        });
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "aud": CLIENT_ID, "iss": fake.issuer(true, TENANT), "iat": now, "nbf": now, "exp": now + 3600,
            "azp": "1950a258-227b-4e31-a9cf-717495945fc2", "name": "Ada Lovelace",
            "oid": "8f2b5e0a-1a7c-4c52-9a0e-2f3f6c1f7d11", "preferred_username": "ada@contoso.com",
            "scp": "records.read records.write", "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "tid": TENANT, "uti": "fqiBqXLPj0eQa82S-IYFAA", "ver": "2.0",
        });
        let token = fake.sign(&fake.first_kid(), json!({}), &claims);
        (fake, validator, token)
    });
    let tenants = Tenants(HashMap::from([(
        Uuid::parse_str(TENANT).unwrap(),
        Cloud::Global,
    )]));
    rt.block_on(validator.validate(&token, &tenants))
        .expect("the benchmark token is valid");

    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rs256_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { validator.validate_fresh(&token, &tenants).await.unwrap() })
    });
    group.bench_function("repeated_token_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { validator.validate(&token, &tenants).await.unwrap() })
    });
    group.finish();
    drop(fake);
}

criterion_group!(benches, bench);
criterion_main!(benches);
