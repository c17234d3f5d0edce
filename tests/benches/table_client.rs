//! Table client overhead: point reads against Azurite through `tables::Table::get` versus a
//! plain reqwest loop sending the same signed request. Sequential and 8 at a time.
//!
//! cargo bench -p system-tests --bench table_client

use std::sync::Arc;
use std::time::{Duration, Instant};

use system_tests::{Azurite, unique_table};
use tables::{Entity, auth};

const READS: usize = 3000;
const CONCURRENCY: usize = 8;

struct Plain {
    http: reqwest::Client,
    url: String,
    path: String,
    key: Vec<u8>,
}

impl Plain {
    async fn get(&self) {
        let date = httpdate();
        let to_sign = auth::string_to_sign("GET", "", &date, "devstoreaccount1", &self.path, None);
        let response = self
            .http
            .get(&self.url)
            .header("x-ms-date", &date)
            .header("x-ms-version", "2019-02-02")
            .header("accept", "application/json;odata=minimalmetadata")
            .header("dataserviceversion", "3.0")
            .header(
                "authorization",
                auth::authorization("devstoreaccount1", &self.key, &to_sign),
            )
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(body.get("RowKey").is_some());
    }
}

fn httpdate() -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc().format(format).unwrap()
}

async fn run<F, Fut>(name: &str, concurrency: usize, read: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let read = Arc::new(read);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let read = read.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(READS / concurrency);
            for _ in 0..READS / concurrency {
                let t = Instant::now();
                read().await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{name:<34} {:>7.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}

#[tokio::main]
async fn main() {
    let azurite = Azurite::shared();
    let client = azurite.client();
    let table = client.table(unique_table("bench"));
    table
        .upsert_replace(
            &Entity::new("tenant", "user")
                .with("DisplayName", "Ada")
                .with("Active", true),
        )
        .await
        .unwrap();
    let plain = Arc::new(Plain {
        http: reqwest::Client::new(),
        url: format!(
            "http://127.0.0.1:{}/devstoreaccount1/{}(PartitionKey='tenant',RowKey='user')",
            azurite.table_port,
            table.name()
        ),
        path: format!(
            "/devstoreaccount1/{}(PartitionKey='tenant',RowKey='user')",
            table.name()
        ),
        key: base64_decode(system_tests::DEV_KEY),
    });
    println!(
        "{READS} point reads against Azurite on 127.0.0.1:{}",
        azurite.table_port
    );
    for round in 1..=3 {
        for concurrency in [1, CONCURRENCY] {
            let t = table.clone();
            let before = client.request_count();
            run(
                &format!("round {round}: tables::get     x{concurrency}"),
                concurrency,
                move || {
                    let t = t.clone();
                    async move {
                        t.get("tenant", "user").await.unwrap();
                    }
                },
            )
            .await;
            assert_eq!(
                client.request_count() - before,
                READS as u64,
                "one request per read"
            );
            let p = plain.clone();
            run(
                &format!("round {round}: plain reqwest   x{concurrency}"),
                concurrency,
                move || {
                    let p = p.clone();
                    async move { p.get().await }
                },
            )
            .await;
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}
