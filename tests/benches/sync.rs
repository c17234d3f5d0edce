//! Directory sync at scale: Azurite's raw batch ceiling measured first, then a full round
//! of SYNC_USERS users (default 100,000) and 2,000 groups from the Graph stand-in into
//! Azurite through the release handler, an incremental round of 1,000 changes, and the
//! directory search at that size.
//!
//! cargo build --release -p handler && cargo bench -p system-tests --bench sync
//! (SYNC_USERS=10000 SYNC_GROUPS=200 SYNC_MEMBERS=50 to change the size)

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use system_tests::fake_graph::{FakeMicrosoft, user_id};
use system_tests::{Azurite, HandlerProcess, env_or, release_handler, run_to_exit, unique_table};
use tables::{Entity, Operation};

const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const SECRET: &str = "bench-secret";

/// 100-entity batch upserts of user-sized rows into one partition, one batch at a time
/// (as a round writes) and four at a time.
async fn raw_ceiling(entities: usize) -> (f64, f64) {
    let table = Azurite::shared().client().table(unique_table("raw"));
    table.create_if_not_exists().await.unwrap();
    let row = |p: &str, i: usize| {
        Entity::new(p, format!("u-{:032x}", i))
            .with("Upn", format!("user{i}@contoso.com"))
            .with("Name", format!("User {i}"))
            .with("Email", format!("user{i}@contoso.com"))
            .with("GivenName", format!("Given{i}"))
            .with("Surname", format!("Surname{i}"))
            .with("JobTitle", "Engineer")
            .with("Department", "Department 1")
            .with("EmployeeId", format!("E{i:07}"))
            .with("Active", true)
            .with("SeenRound", 1i64)
    };
    let batches = |p: String| {
        (0..entities / 100)
            .map(|b| {
                (0..100)
                    .map(|k| Operation::UpsertReplace(row(&p, b * 100 + k)))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    for ops in batches("seq".into()) {
        table.transact(&ops).await.unwrap();
    }
    let sequential = entities as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let table = table.clone();
        let mine: Vec<Vec<Operation>> = batches(format!("par{w}"))
            .into_iter()
            .take(entities / 400)
            .collect();
        tasks.push(tokio::spawn(async move {
            for ops in mine {
                table.transact(&ops).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let parallel = (entities / 400 * 400) as f64 / started.elapsed().as_secs_f64();
    (sequential, parallel)
}

/// Azurite's raw rate for the volume a round writes, in the directory's layout: `users`
/// user-sized records, `groups` group rows and two rows per membership in one fresh table,
/// two small search rows per user in another (as the directory keeps them), written in
/// 100-entity batches one at a time, one partition each, with row keys in random order as
/// the round's are. Azurite's cost per insert grows with the table (its indices are sorted
/// arrays), so a ceiling measured on a small partition overstates what it can take for
/// 500,000 rows; this is the like-for-like figure. With `events`, also that many audit
/// events in a third table as the trail keeps them (the event row, newest first, and its
/// per-target copy, 50 events to a transaction), as a round writes one per object.
async fn raw_ceiling_at_volume(
    users: usize,
    groups: usize,
    memberships: usize,
    events: usize,
) -> (f64, usize) {
    let names = [
        unique_table("vol"),
        unique_table("volsearch"),
        unique_table("volaudit"),
    ];
    let client = Azurite::shared().client();
    let (table, search, audit) = (
        client.table(names[0].clone()),
        client.table(names[1].clone()),
        client.table(names[2].clone()),
    );
    for t in [&table, &search, &audit] {
        t.create_if_not_exists().await.unwrap();
    }
    let p = "volume";
    let key = |kind: &str, i: usize| {
        format!(
            "{kind}-{:032x}",
            (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        )
    };
    let mut rows: Vec<Entity> = Vec::new();
    let mut search_rows: Vec<Entity> = Vec::new();
    let mut written = 0;
    let started = Instant::now();
    let flush = |table: &tables::Table, rows: &mut Vec<Entity>| {
        let ops: Vec<Operation> = rows.drain(..).map(Operation::UpsertReplace).collect();
        let table = table.clone();
        async move { table.transact(&ops).await.unwrap() }
    };
    for i in 0..users {
        rows.push(
            Entity::new(p, key("u", i))
                .with("Upn", format!("user{i}@contoso.com"))
                .with("Name", format!("User {i}"))
                .with("Email", format!("user{i}@contoso.com"))
                .with("GivenName", format!("Given{i}"))
                .with("Surname", format!("Surname{i}"))
                .with("JobTitle", "Engineer")
                .with("Department", "Department 1")
                .with("EmployeeId", format!("E{i:07}"))
                .with("Active", true)
                .with("SeenRound", 1i64),
        );
        for t in ["s", "n"] {
            search_rows.push(
                Entity::new(p, key(t, i))
                    .with("Id", format!("{i:032x}"))
                    .with("Term", format!("user{i}@contoso.com"))
                    .with("Terms", format!("user{i}@contoso.com\nuser {i}")),
            );
        }
        if rows.len() >= 100 {
            written += rows.len();
            flush(&table, &mut rows).await;
        }
        if search_rows.len() >= 100 {
            written += search_rows.len();
            flush(&search, &mut search_rows).await;
        }
    }
    for i in 0..groups {
        rows.push(Entity::new(p, key("g", i)).with("Name", format!("Group {i}")));
        if rows.len() >= 100 {
            written += rows.len();
            flush(&table, &mut rows).await;
        }
    }
    for i in 0..memberships {
        for t in ["gm", "ug"] {
            rows.push(Entity::new(p, key(t, i)).with("SeenRound", 1i64));
        }
        if rows.len() >= 100 {
            written += rows.len();
            flush(&table, &mut rows).await;
        }
    }
    // the round records its events as it goes, page by page: written after the directory's
    // rows here, as their order does not change what Azurite does per row
    let mut audit_rows: Vec<Entity> = Vec::new();
    let tenant = "0b5e1b2a9c6d4f0e8a7b6c5d4e3f2a1b";
    for i in 0..events {
        let stamp = format!("{:016}{:032x}", 9_000_000_000_000_000u64 - i as u64, i);
        let target = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
        let changes = format!(
            r#"[{{"attribute":"upn","new":"user{i}@contoso.com"}},{{"attribute":"name","new":"User {i}"}},{{"attribute":"email","new":"user{i}@contoso.com"}},{{"attribute":"given_name","new":"Given{i}"}},{{"attribute":"surname","new":"Surname{i}"}},{{"attribute":"job_title","new":"Engineer"}},{{"attribute":"department","new":"Department 1"}},{{"attribute":"employee_id","new":"E{i:07}"}},{{"attribute":"enabled","new":"true"}}]"#
        );
        for row in [
            format!("e{tenant}{stamp}"),
            format!("t{tenant}{target}|{stamp}"),
        ] {
            audit_rows.push(
                Entity::new(p, row)
                    .with("Id", format!("{i:032x}"))
                    .with("Action", "sync.user.create")
                    .with("ActorKind", "graph-sync")
                    .with("ActorId", "round 1")
                    .with("TargetType", "user")
                    .with("TargetId", target.as_str())
                    .with("TargetDisplay", format!("user{i}@contoso.com"))
                    .with("Outcome", "success")
                    .with("Correlation", "round 1, page 1")
                    .with("Changes", changes.as_str()),
            );
        }
        if audit_rows.len() >= 100 {
            written += audit_rows.len();
            flush(&audit, &mut audit_rows).await;
        }
    }
    for (t, left) in [
        (&table, &mut rows),
        (&search, &mut search_rows),
        (&audit, &mut audit_rows),
    ] {
        if !left.is_empty() {
            written += left.len();
            flush(t, left).await;
        }
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    // free Azurite's memory before the round
    for name in &names {
        client.delete_table(name).await.unwrap();
    }
    (rate, written)
}

struct Bench {
    handler: HandlerProcess,
    http: reqwest::Client,
    admin: String,
    tenant: String,
}

impl Bench {
    async fn sync(&self) -> (Value, Duration) {
        let root = self.handler.base_url();
        let before = self.status().await["last_round"]["round"]
            .as_i64()
            .unwrap_or(0);
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{root}/api/v1/tenants/{}/sync", self.tenant))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loop {
            let s = self.status().await;
            if s["last_round"]["round"].as_i64().unwrap_or(0) > before && s["status"] == "idle" {
                return (s, started.elapsed());
            }
            // seldom: every status read is Azurite work taken from the round it measures
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }

    async fn status(&self) -> Value {
        self.http
            .get(format!(
                "{}/api/v1/tenants/{}/sync",
                self.handler.base_url(),
                self.tenant
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let users = env_or("SYNC_USERS", 100_000);
    let groups = env_or("SYNC_GROUPS", 2_000);
    let members = env_or("SYNC_MEMBERS", 50);
    let binary = release_handler();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // SYNC_SKIP_CEILING=1 skips both ceilings when profiling the round itself
        let skip = std::env::var("SYNC_SKIP_CEILING").is_ok_and(|v| v == "1");
        let (sequential, parallel) = if skip { (f64::NAN, f64::NAN) } else { raw_ceiling(20_000).await };
        println!(
            "Azurite raw ceiling: {sequential:.0} entities/s (100-entity batches, one at a time), {parallel:.0} entities/s (four at a time)"
        );

        let (at_volume, volume) = if skip {
            (f64::NAN, 0)
        } else {
            raw_ceiling_at_volume(users, groups, groups * members.min(users), 0).await
        };
        println!(
            "Azurite raw ceiling at the round's volume: {at_volume:.0} entities/s ({volume} rows, 100-entity batches, one at a time)"
        );
        // the round also writes an audit event (two rows) per user and group it creates
        let (with_audit, volume_with_audit) = if skip {
            (f64::NAN, 0)
        } else {
            raw_ceiling_at_volume(users, groups, groups * members.min(users), users + groups).await
        };
        println!(
            "Azurite raw ceiling at the round's volume with its audit rows: {with_audit:.0} entities/s ({volume_with_audit} rows)"
        );

        let fake = FakeMicrosoft::start().await;
        fake.register_secret_app(CLIENT_ID, SECRET);
        let tenant = uuid::Uuid::new_v4().to_string();
        fake.add_tenant(&tenant, "Bench", "contoso.com");
        fake.consent(&tenant, CLIENT_ID, 0);
        fake.populate(&tenant, users, groups, members);
        let prefix = unique_table("sy");
        let data = std::env::temp_dir().join(format!("sync-bench-{}", std::process::id()));
        let env: Vec<(&str, String)> = vec![
            ("AzureWebJobsStorage", Azurite::shared().connection_string()),
            ("STORAGE_TABLE_PREFIX", prefix.clone()),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.login_url.clone()),
            ("GRAPH_ENDPOINT", fake.graph_url.clone()),
            ("ENTRA_CLIENT_SECRET", SECRET.into()),
            ("ENTRA_DEV_AUTH", "true".into()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
            // the round's summary line (Table requests) is logged at info
            ("LOG_LEVEL", std::env::var("SYNC_BENCH_LOG").unwrap_or_else(|_| "warn,handler::functions::sync=info".into())),
        ];
        let bin = binary.to_str().unwrap();
        let (_, admin) = run_to_exit(bin, &["dev-token", "admin"], &env);
        let handler = HandlerProcess::start(bin, &["serve"], &env);
        let b = Bench {
            handler,
            http: reqwest::Client::new(),
            admin: admin.trim().to_string(),
            tenant: tenant.clone(),
        };
        let r = b
            .http
            .post(format!("{}/api/v1/tenants", b.handler.base_url()))
            .bearer_auth(&b.admin)
            .json(&json!({"tenant_id": tenant, "display_name": "Bench"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let client = Azurite::shared().client();
        let requests_before = client.request_count();
        let (full, took) = b.sync().await;
        let _ = requests_before;
        assert_eq!(full["last_round"]["outcome"], "success", "{full}");
        // the round's own time, from its start to its end (not the queue's pick-up delay)
        let secs = full["last_round"]["duration_ms"].as_f64().unwrap() / 1000.0;
        println!(
            "full round: queued to finished {:.1} s, the round itself {secs:.1} s",
            took.as_secs_f64()
        );
        // what the round left in the directory: counted row by row where that is cheap (a
        // query is a scan of the partition in Azurite), else from the counters the
        // statistics keep and the layout (record + search rows per user, 2 per membership)
        let stats: Value = b
            .http
            .get(format!("{}/api/v1/entra-id/statistics", b.handler.base_url()))
            .bearer_auth(&b.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = &stats["tenants"][0];
        let memberships = t["memberships"].as_u64().unwrap() as usize;
        assert_eq!(t["users"]["total"].as_u64(), Some(users as u64), "{stats}");
        let (user_rows, search_rows, entities) = if users <= 20_000 {
            let mut rows = Vec::new();
            for name in ["Directory", "DirectorySearch"] {
                rows.extend(
                    client
                        .table(format!("{prefix}{name}"))
                        .query_all(tables::Query {
                            filter: Some(format!("PartitionKey eq '{tenant}'")),
                            select: Some(vec!["RowKey".into()]),
                            page_size: Some(1000),
                            limit: None,
                        })
                        .await
                        .unwrap(),
                );
            }
            let count = |p: &str| rows.iter().filter(|r| r.row_key.starts_with(p)).count();
            (count("u-"), count("s-"), rows.len())
        } else {
            // every populated user has a UPN equal to its mail, and a name: two search rows
            (users, 2 * users, 3 * users + 2 * memberships + groups)
        };
        println!(
            "full round: {users} users, {groups} groups, {memberships} memberships in {secs:.1} s: {:.0} users/s, {:.0} entities/s ({:.0}% of the ceiling at the same volume, {:.0}% of the small-partition ceiling); {} pages",
            users as f64 / secs,
            entities as f64 / secs,
            100.0 * entities as f64 / secs / at_volume,
            100.0 * entities as f64 / secs / sequential,
            full["last_round"]["pages"]
        );
        println!(
            "rows per user: {:.2} (record {user_rows}, search {search_rows}); rows per membership: 2; {entities} rows in all",
            (user_rows + search_rows) as f64 / user_rows as f64
        );
        if let Some(kib) = b.handler.peak_rss_kib() {
            println!("handler peak RSS after the full round: {:.1} MiB", kib as f64 / 1024.0);
        }
        let requests = b
            .handler
            .output()
            .lines()
            .filter(|l| l.contains("success ("))
            .filter_map(|l| l.split(" Table requests").next()?.rsplit(' ').next()?.parse::<f64>().ok())
            .next();
        if let Some(requests) = requests {
            println!(
                "Table requests in the full round: {requests:.0} ({:.0} per 1,000 users, groups included)",
                requests * 1000.0 / users as f64
            );
        }
        let events = b
            .handler
            .output()
            .lines()
            .filter(|l| l.contains("success ("))
            .filter_map(|l| l.split(" audit events").next()?.rsplit(' ').next()?.parse::<f64>().ok())
            .next();
        if let Some(events) = events {
            println!(
                "audit events written by the full round: {events:.0} ({:.0} events/s over the round)",
                events / secs
            );
            // each event is two rows (the event and its per-target copy)
            let all = entities as f64 + 2.0 * events;
            println!(
                "all the full round's writes, its audit rows included: {all:.0} rows, {:.0} entities/s ({:.0}% of the ceiling at the same volume with audit rows)",
                all / secs,
                100.0 * all / secs / with_audit
            );
        }

        // 1,000 changes in Entra, then an incremental round
        for i in 0..1000 {
            fake.update_user(&tenant, &user_id(i * (users / 1000)), json!({"jobTitle": format!("Title {i}")}));
        }
        let cpu_before = Azurite::shared().table_cpu_seconds();
        let (inc, took) = b.sync().await;
        let round_secs = inc["last_round"]["duration_ms"].as_f64().unwrap() / 1000.0;
        println!(
            "incremental round of 1,000 changes: {round_secs:.2} s for the round ({:.2} s queued to finished; {} pages, {} changes)",
            took.as_secs_f64(),
            inc["last_round"]["pages"],
            inc["last_round"]["changes"]
        );
        if let (Some(before), Some(after)) = (cpu_before, Azurite::shared().table_cpu_seconds()) {
            println!(
                "  Azurite's table service used {:.2} s of CPU from queueing to finish ({:.0}% of that time; it runs on one thread)",
                after - before,
                100.0 * (after - before) / took.as_secs_f64()
            );
        }

        // search at this size: prefixes of UPNs and names
        let mut samples = Vec::new();
        for i in 0..200 {
            let q = format!("user{}", (i * 7919) % users);
            let started = Instant::now();
            let r = b
                .http
                .get(format!("{}/api/v1/entra-id/users?search={q}", b.handler.base_url()))
                .bearer_auth(&b.admin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let page: Value = r.json().await.unwrap();
            assert!(!page["users"].as_array().unwrap().is_empty());
            samples.push(started.elapsed());
        }
        println!("search first page at {users} users: p50 {:.1} ms", p50(samples).as_secs_f64() * 1000.0);
        // the one range query a search page makes, sent by a plain client: Azurite's share
        // (it evaluates every query's filter on every row of the table)
        let directory_table = client.table(format!("{prefix}DirectorySearch"));
        let mut raw = Vec::new();
        for i in 0..50 {
            let term = format!("user{}", (i * 7919) % users);
            let started = Instant::now();
            let rows = directory_table
                .query_all(tables::Query {
                    filter: Some(format!(
                        "RowKey ge 's-{term}' and RowKey lt 's-{term}\u{ffff}' and PartitionKey eq '{tenant}'"
                    )),
                    select: Some(vec!["Id".into(), "Term".into(), "Terms".into()]),
                    page_size: Some(32),
                    limit: Some(32),
                })
                .await
                .unwrap();
            assert!(!rows.is_empty());
            raw.push(started.elapsed());
        }
        println!(
            "  of which Azurite's range query (plain client, same filter): p50 {:.1} ms",
            p50(raw).as_secs_f64() * 1000.0
        );
        if let Some(kib) = b.handler.peak_rss_kib() {
            println!("handler peak RSS at the end: {:.1} MiB", kib as f64 / 1024.0);
        }
        if let Ok(path) = std::env::var("SYNC_BENCH_LOG_FILE") {
            std::fs::write(&path, b.handler.output()).unwrap();
            println!("handler log written to {path}");
        }
        std::fs::remove_dir_all(&data).ok();
    });
}
