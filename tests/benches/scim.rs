//! SCIM with 10,000 users in Azurite: Entra's match query and a create/PATCH mix, with wrk
//! on loopback against the release handler.
//!
//! cargo build --release -p handler && cargo bench -p system-tests --bench scim
//! (SCIM_USERS=10000 WRK_CONNECTIONS=8 WRK_SECONDS=10 to change the load;
//! SCIM_READ_CACHE_SECONDS=0 to measure every read against Azurite;
//! BASELINE_HANDLER_BIN=<a handler without auditing> to run the same load against it first,
//! each build against an Azurite of its own; SCIM_BENCH_ROUNDS=n repeats the pair n times,
//! the order alternating)

use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};
use system_tests::{Azurite, HandlerProcess, env_or, release_handler, run_to_exit, unique_table};

fn main() {
    // BASELINE_HANDLER_BIN: a build without the audit trail (e.g. main's before it), run
    // by the same benchmark in the same run, so the cost of auditing is one comparison
    // SCIM_BENCH_ROUNDS=n runs the pair n times, the order alternating, for a spread
    if let Ok(baseline) = std::env::var("BASELINE_HANDLER_BIN") {
        let rounds = env_or("SCIM_BENCH_ROUNDS", 1);
        for round in 0..rounds {
            let builds = [
                ("baseline", std::path::PathBuf::from(&baseline)),
                ("this build (audited)", release_handler()),
            ];
            let order: Vec<usize> = if round % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for i in order {
                let (name, binary) = &builds[i];
                println!("#### round {}: {name}: {}", round + 1, binary.display());
                run(binary.clone(), false);
            }
        }
        return;
    }
    run(release_handler(), true);
}

fn run(binary: std::path::PathBuf, large_groups: bool) {
    // each build meets an Azurite of its own, fresh: one that served a run before answers
    // the same queries about 14% slower (measured: the match query of the second run)
    let azurite = Azurite::fresh();
    let users = env_or("SCIM_USERS", 10_000);
    let connections = env_or("WRK_CONNECTIONS", 8);
    let seconds = env_or("WRK_SECONDS", 10);
    let data = std::env::temp_dir().join(format!("scim-bench-{}", std::process::id()));
    let env: Vec<(&str, String)> = vec![
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("STORAGE_TABLE_PREFIX", unique_table("sb")),
        (
            "ENTRA_CLIENT_ID",
            "6e74172b-be56-4843-9ff4-e66a39bb12e3".into(),
        ),
        (
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        ),
        ("ENTRA_DEV_AUTH", "true".into()),
        ("LOCAL_DATA_DIR", data.display().to_string()),
        ("LOG_LEVEL", "warn".into()),
        (
            "SCIM_READ_CACHE_SECONDS",
            env_or("SCIM_READ_CACHE_SECONDS", 5).to_string(),
        ),
    ];
    let bin = binary.to_str().unwrap();
    let (_, admin) = run_to_exit(bin, &["dev-token", "admin"], &env);
    let admin = admin.trim().to_string();
    let handler = HandlerProcess::start(bin, &["host"], &env);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tenant = uuid::Uuid::new_v4();
    let (token, base, ids, seed_rate) = runtime.block_on(async {
        let http = reqwest::Client::new();
        let root = handler.base_url();
        http.post(format!("{root}/api/v1/tenants"))
            .bearer_auth(&admin)
            .json(&json!({"tenant_id": tenant, "display_name": "Bench"}))
            .send()
            .await
            .unwrap();
        let answer: Value = http
            .post(format!("{root}/api/v1/tenants/{tenant}/scim/token"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = answer["token"].as_str().unwrap().to_string();
        let base = answer["tenant_url"].as_str().unwrap().to_string();
        // seed with 16 concurrent creators
        let started = std::time::Instant::now();
        let cpu_before = cpu(&azurite, &handler);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (http, token, base, next) = (http.clone(), token.clone(), base.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= users {
                        return ids;
                    }
                    let body = json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": format!("user{i}@contoso.com"), "externalId": format!("ext{i}"), "active": true,
                        "emails": [{"primary": true, "type": "work", "value": format!("user{i}@contoso.com")}],
                        "name": {"givenName": "User", "familyName": format!("{i}")},
                    });
                    let r = http.post(format!("{base}/Users")).bearer_auth(&token).json(&body).send().await.unwrap();
                    let status = r.status();
                    if status != 201 {
                        panic!("seeding user {i}: {status} {}", r.text().await.unwrap_or_default());
                    }
                    ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
                }
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            match t.await {
                Ok(some) => ids.extend(some),
                Err(e) => {
                    let said: Vec<String> = handler
                        .output()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .take(20)
                        .map(str::to_string)
                        .collect();
                    panic!("seeding failed: {e}; the handler said:\n{}", said.join("\n"));
                }
            }
        }
        let rate = users as f64 / started.elapsed().as_secs_f64();
        print_cpu(cpu_before, cpu(&azurite, &handler), users as f64, "create");
        (token, base, ids, rate)
    });
    println!(
        "seeded {users} users through POST /Users at {seed_rate:.0} users/s (16 concurrent clients)"
    );

    let dir = std::env::temp_dir().join(format!("scim-bench-lua-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ids.txt"), ids.join("\n")).unwrap();
    let path = url::Url::parse(&base).unwrap().path().to_string();
    std::fs::write(
        dir.join("match.lua"),
        format!(
            r#"local n = {users}
request = function()
  local i = math.random(0, n - 1)
  local filter = "userName%20eq%20%22user" .. i .. "%40contoso.com%22"
  return wrk.format("GET", "{path}/Users?filter=" .. filter, {{["Authorization"] = "Bearer {token}"}})
end
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("mix.lua"),
        format!(
            r#"local ids = {{}}
for line in io.lines("{ids}") do ids[#ids + 1] = line end
local counter = 0
-- each wrk thread has its own Lua state: seed it from the state's own address
math.randomseed(os.time() + (tonumber(tostring({{}}):match("0x(%x+)"), 16) or 0))
local tag = tostring(math.random(1, 1000000000))
request = function()
  counter = counter + 1
  local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/scim+json"}}
  if counter % 2 == 0 then
    local body = '{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"new' .. tag .. '-' .. counter .. '@contoso.com","active":true}}'
    return wrk.format("POST", "{path}/Users", headers, body)
  else
    local id = ids[math.random(1, #ids)]
    local body = '{{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{{"op":"Replace","path":"name.familyName","value":"x' .. counter .. '"}}]}}'
    return wrk.format("PATCH", "{path}/Users/" .. id, headers, body)
  end
end
"#,
            ids = dir.join("ids.txt").display()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{}", handler.port);
    for (name, script) in [
        ("match query (userName eq, random user)", "match.lua"),
        ("create/PATCH mix (50/50)", "mix.lua"),
    ] {
        let args = [
            "-t2".to_string(),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".to_string(),
            "-s".to_string(),
            dir.join(script).display().to_string(),
            url.clone(),
        ];
        println!("== {name}\n$ wrk {}", args.join(" "));
        let before = cpu(&azurite, &handler);
        let out = Command::new("wrk")
            .args(&args)
            .output()
            .expect("wrk runs (apt-get install wrk)");
        let after = cpu(&azurite, &handler);
        let said = String::from_utf8_lossy(&out.stdout);
        println!("{said}");
        // "N requests in 15.04s, ..."
        let requests = said
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse::<f64>().ok());
        if let Some(requests) = requests.filter(|n| *n > 0.0) {
            print_cpu(before, after, requests, "request");
        }
    }

    // one group of SCIM_GROUP_MEMBERS members, added the way Entra does: PATCH after PATCH
    let group_members = env_or("SCIM_GROUP_MEMBERS", 50_000);
    if group_members > 0 && large_groups {
        runtime.block_on(large_group(&token, &base, &ids, group_members));
    }
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&data).ok();
}

/// CPU seconds used so far by Azurite's table service and by the handler.
fn cpu(azurite: &Azurite, handler: &HandlerProcess) -> (Option<f64>, Option<f64>) {
    (azurite.table_cpu_seconds(), handler.cpu_seconds())
}

/// The CPU each of `n` operations cost Azurite and the handler between two readings: the
/// store's share moves less with the machine's speed than throughput does, so it compares
/// two builds more steadily.
fn print_cpu(
    before: (Option<f64>, Option<f64>),
    after: (Option<f64>, Option<f64>),
    n: f64,
    what: &str,
) {
    let per = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) => format!("{:.2} ms", (a - b) * 1000.0 / n),
        _ => "unknown".into(),
    };
    println!(
        "CPU per {what}: Azurite table service {}, handler {}",
        per(before.0, after.0),
        per(before.1, after.1)
    );
}

async fn large_group(token: &str, base: &str, users: &[String], size: usize) {
    let http = reqwest::Client::new();
    let patch = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let group: Value = http
        .post(format!("{base}/Groups"))
        .bearer_auth(token)
        .json(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Everyone"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}/Groups/{}", group["id"].as_str().unwrap());
    // the seeded users first, then made-up ids up to the size
    let members: Vec<String> = users
        .iter()
        .cloned()
        .chain((0..).map(|_| uuid::Uuid::new_v4().to_string()))
        .take(size)
        .collect();
    let started = std::time::Instant::now();
    for chunk in members.chunks(2_000) {
        let value: Vec<Value> = chunk.iter().map(|id| json!({"value": id})).collect();
        let r = http
            .patch(&url)
            .bearer_auth(token)
            .json(&patch(
                json!([{"op": "Add", "path": "members", "value": value}]),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let added = started.elapsed();
    println!(
        "== group of {size} members\nadded in PATCHes of 2,000: {:.1} s ({:.0} members/s)",
        added.as_secs_f64(),
        size as f64 / added.as_secs_f64()
    );
    for (what, query) in [
        ("GET without members", "?excludedAttributes=members"),
        ("GET with members", ""),
    ] {
        let started = std::time::Instant::now();
        let body = http
            .get(format!("{url}{query}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let listed = serde_json::from_slice::<Value>(&body).unwrap()["members"]
            .as_array()
            .map_or(0, Vec::len);
        println!(
            "{what}: {:.1} ms, {} bytes, {listed} members",
            started.elapsed().as_secs_f64() * 1000.0,
            body.len()
        );
    }
    let started = std::time::Instant::now();
    let r = http
        .delete(format!("{base}/Users/{}", users[0]))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    println!(
        "DELETE of a member user: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let value: Vec<Value> = members[1..1_001]
        .iter()
        .map(|id| json!({"value": id}))
        .collect();
    let started = std::time::Instant::now();
    let r = http
        .patch(&url)
        .bearer_auth(token)
        .json(&patch(
            json!([{"op": "Remove", "path": "members", "value": value}]),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    println!(
        "PATCH removing 1,000 members: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
