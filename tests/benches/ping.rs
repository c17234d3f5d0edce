//! `/api/ping` over HTTP on loopback with wrk: one reused token, then many distinct tokens.
//! Starts Azurite, a local Entra stand-in and the release handler, registers a tenant and a
//! grant through the admin API, then runs wrk (Debian package `wrk`).
//!
//! cargo build --release -p handler && cargo bench -p system-tests --bench ping
//! (PING_DISTINCT_TOKENS=5000 WRK_CONNECTIONS=32 WRK_SECONDS=10 to change the load)

use std::process::Command;

use serde_json::json;
use system_tests::fake_entra::{self, FakeEntra};
use system_tests::{Azurite, HandlerProcess, env_or, release_handler, unique_table};

const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn main() {
    let distinct = env_or("PING_DISTINCT_TOKENS", 5000);
    let connections = env_or("WRK_CONNECTIONS", 32);
    let seconds = env_or("WRK_SECONDS", 10);
    let binary = release_handler();
    assert!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "wrk is needed: apt-get install wrk"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(FakeEntra::start(fake_entra::GLOBAL));
    let handler = HandlerProcess::start(
        binary.to_str().unwrap(),
        &["host"],
        &[
            ("AzureWebJobsStorage", Azurite::shared().connection_string()),
            ("STORAGE_TABLE_PREFIX", unique_table("ping")),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.base_url.clone()),
            ("CONNECTOR_SCOPES", "records.read,records.write".into()),
            (
                "LOG_LEVEL",
                std::env::var("HANDLER_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            ),
        ],
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let kid = fake.first_kid();
    let admin = fake.sign(&kid, json!({}), &json!({
        "aud": CLIENT_ID, "iss": fake.issuer(true, ADMIN_TENANT), "tid": ADMIN_TENANT, "ver": "2.0",
        "iat": now, "nbf": now, "exp": now + 3600, "oid": uuid::Uuid::new_v4(), "roles": ["Integration.Manage"], "scp": "x",
    }));
    let tenant = uuid::Uuid::new_v4();
    let app = uuid::Uuid::new_v4();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let base = handler.base_url();
        let r = http.post(format!("{base}/api/v1/tenants")).bearer_auth(&admin)
            .json(&json!({"tenant_id": tenant, "display_name": "Bench"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let r = http.post(format!("{base}/api/v1/access/grants")).bearer_auth(&admin)
            .json(&json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}))
            .send().await.unwrap();
        assert_eq!(r.status(), 201);
    });
    let token = |i: usize| {
        fake.sign(&kid, json!({}), &json!({
            "aud": CLIENT_ID, "iss": fake.issuer(false, &tenant.to_string()), "tid": tenant, "ver": "1.0",
            "iat": now, "nbf": now, "exp": now + 3600, "oid": uuid::Uuid::new_v4(), "appid": app,
            "idtyp": "app", "roles": ["Records.Read.All"], "uti": format!("bench{i}"),
        }))
    };
    let reused = token(0);
    let check = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/api/ping", handler.base_url()))
            .bearer_auth(&reused)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(check, 200, "the benchmark token is accepted");

    let dir = std::env::temp_dir().join(format!("ping-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens: Vec<String> = (1..=distinct).map(token).collect();
    std::fs::write(dir.join("tokens.txt"), tokens.join("\n")).unwrap();
    let script = dir.join("distinct.lua");
    std::fs::write(
        &script,
        format!(
            r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/api/ping", {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"#,
            dir.join("tokens.txt").display()
        ),
    )
    .unwrap();

    let url = format!("{}/api/ping", handler.base_url());
    let wrk = |extra: &[String]| {
        // every request carries an invocation id, as the Functions host sends it
        let mut args = vec![
            "-t2".to_string(),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".to_string(),
            "-H".to_string(),
            std::env::var("PING_EXTRA_HEADER").unwrap_or_else(|_| {
                "X-Azure-Functions-InvocationId: 5e2ad1c4-0000-4000-8000-000000000001".into()
            }),
        ];
        args.extend(extra.iter().cloned());
        args.push(url.clone());
        println!("$ wrk {}", args.join(" ").replace(&reused, "<token>"));
        let out = Command::new("wrk").args(&args).output().expect("wrk runs");
        println!("{}", String::from_utf8_lossy(&out.stdout));
    };
    println!("== one reused token");
    wrk(&["-H".into(), format!("Authorization: Bearer {reused}")]);
    println!("== {distinct} distinct tokens, round robin");
    wrk(&["-s".into(), script.display().to_string()]);
    let log = handler.output();
    println!(
        "handler wrote {} log lines during the run; the last ones:",
        log.lines().count()
    );
    for line in log.lines().rev().take(3) {
        println!("  {line}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
