//! The audit trail at scale: AUDIT_EVENTS events (default 1,000,000) of one tenant spread
//! over AUDIT_DAYS days (default 90) written into Azurite in the production layout, then
//! the p50/p95 of the queries an admin makes: the newest page, the next page by cursor, a
//! page for one target, and a page filtered by action prefix.
//!
//! cargo bench -p system-tests --bench audit   (AUDIT_EVENTS=100000 for a quick run)

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{Actor, AuditQuery, AuditStore, Event, Outcome, TableAuditStore, Target};
use system_tests::{Azurite, env_or, unique_table};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure<F, Fut>(runs: usize, mut query: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        let n = query(i).await;
        samples.push(started.elapsed());
        assert!(n > 0, "the query found nothing");
    }
    (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.95),
    )
}

fn main() {
    let total = env_or("AUDIT_EVENTS", 1_000_000);
    let days = env_or("AUDIT_DAYS", 90).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let table = Azurite::shared().client().table(unique_table("auditbench"));
        table.create_if_not_exists().await.unwrap();
        let store = Arc::new(TableAuditStore::new(table));
        let tenant = uuid::Uuid::new_v4();
        let now = time::OffsetDateTime::now_utc();
        let per_day = total.div_ceil(days);
        let started = Instant::now();
        // 50 events (100 entities: event and target rows) per transaction, 8 at a time
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writers = Vec::new();
        for _ in 0..8 {
            let (store, next) = (store.clone(), next.clone());
            writers.push(tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(50, std::sync::atomic::Ordering::Relaxed);
                    if first >= total {
                        return;
                    }
                    let events: Vec<Event> = (first..(first + 50).min(total))
                        .map(|i| {
                            let day = i / per_day;
                            let mut e = Event::new(
                                tenant,
                                Actor::entra_provisioning(),
                                if i % 10 == 0 { "scim.group.update" } else { "scim.user.update" },
                                Target::new("user", format!("user-{}", i % 100_000))
                                    .display(format!("user{}@contoso.com", i % 100_000)),
                            )
                            .change(audit::Change::new(
                                "name.familyName",
                                Some(serde_json::json!("before")),
                                Some(serde_json::json!(format!("after{i}"))),
                            ))
                            .correlation(uuid::Uuid::new_v4().to_string());
                            if i % 100 == 0 {
                                e.outcome = Outcome::failure(400, "invalid PATCH operation");
                            }
                            // newest day first; within a day, a second apart
                            e.time = now
                                - time::Duration::days(day as i64)
                                - time::Duration::seconds((i % per_day) as i64);
                            e
                        })
                        .collect();
                    store.append(&events).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "wrote {total} events over {days} days in {elapsed:.0} s ({:.0} events/s, 8 writers, 50 events per transaction)",
            total as f64 / elapsed
        );

        let runs = 50;
        let newest = AuditQuery::default();
        let (p50, p95) = measure(runs, |_| {
            let (store, q) = (store.clone(), newest.clone());
            async move { store.page(tenant, &q, None, 100).await.unwrap().events.len() }
        })
        .await;
        println!("newest page of 100: p50 {p50:?}, p95 {p95:?}");
        let first = store.page(tenant, &newest, None, 100).await.unwrap();
        let cursor = first.next.clone().unwrap();
        let (p50, p95) = measure(runs, |_| {
            let (store, q, c) = (store.clone(), newest.clone(), cursor.clone());
            async move { store.page(tenant, &q, Some(&c), 100).await.unwrap().events.len() }
        })
        .await;
        println!("next page of 100 by cursor: p50 {p50:?}, p95 {p95:?}");
        let (p50, p95) = measure(runs, |i| {
            let store = store.clone();
            let q = AuditQuery {
                target_id: Some(format!("user-{}", (i * 7919) % 100_000.min(total))),
                ..AuditQuery::default()
            };
            async move { store.page(tenant, &q, None, 100).await.unwrap().events.len() }
        })
        .await;
        println!("one target's events (up to 100): p50 {p50:?}, p95 {p95:?}");
        let groups = AuditQuery {
            action_prefix: Some("scim.group".into()),
            ..AuditQuery::default()
        };
        let (p50, p95) = measure(runs, |_| {
            let (store, q) = (store.clone(), groups.clone());
            async move { store.page(tenant, &q, None, 100).await.unwrap().events.len() }
        })
        .await;
        println!("action prefix scim.group (1 in 10), page of 100: p50 {p50:?}, p95 {p95:?}");
        let failures = AuditQuery {
            outcome: Some("failure".into()),
            ..AuditQuery::default()
        };
        let (p50, p95) = measure(10, |_| {
            let (store, q) = (store.clone(), failures.clone());
            async move { store.page(tenant, &q, None, 100).await.unwrap().events.len() }
        })
        .await;
        println!("outcome failure (1 in 100), page of 100: p50 {p50:?}, p95 {p95:?}");
    });
}
