//! Directory sync end to end: the built handler on Azurite (tables and queues), with the
//! Graph stand-in serving delta pages. Rounds are queued through the API or the
//! `DirectorySync` timer invocation and run by the queue-triggered `SyncTenant`.
//!
//! Each test's handlers poll `sync-tenants` (and its poison queue) on an Azurite queue
//! service of their own, their tables being their own too (by prefix, on the shared table
//! service): no other test's handler takes their messages, so the tests run side by side.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::fake_graph::FakeMicrosoft;
use system_tests::{Azurite, HOST_TIMER_BODY, HandlerProcess, run_to_exit, unique_table};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_handler");
const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "test-client-secret";

struct World {
    fake: FakeMicrosoft,
    handler: Option<HandlerProcess>,
    env: Vec<(&'static str, String)>,
    http: reqwest::Client,
    admin: String,
    tenant: String,
    data: std::path::PathBuf,
    /// The shared tables with a queue service of this test's own.
    storage: Azurite,
}

impl Drop for World {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

impl World {
    async fn start() -> World {
        World::start_as("serve").await
    }

    /// A world whose handler runs as `mode` (`serve`, or `host`: no timers of its own).
    async fn start_as(mode: &str) -> World {
        let fake = FakeMicrosoft::start().await;
        fake.register_secret_app(CLIENT_ID, SECRET);
        let tenant = Uuid::new_v4().to_string();
        fake.add_tenant(&tenant, "Contoso", "contoso.com");
        fake.consent(&tenant, CLIENT_ID, 0);
        let data = std::env::temp_dir().join(format!("sync-{}", Uuid::new_v4()));
        let storage = Azurite::with_own_queues();
        let env: Vec<(&'static str, String)> = vec![
            ("AzureWebJobsStorage", storage.connection_string()),
            ("STORAGE_TABLE_PREFIX", unique_table("y")),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.login_url.clone()),
            ("GRAPH_ENDPOINT", fake.graph_url.clone()),
            ("ENTRA_CLIENT_SECRET", SECRET.into()),
            ("ENTRA_DEV_AUTH", "true".into()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
            ("QUEUE_VISIBILITY_SECONDS", "3".into()),
            ("QUEUE_MAX_POLLING_SECONDS", "1".into()),
            ("SYNC_LEASE_SECONDS", "3".into()),
        ];
        let (code, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
        assert_eq!(code, Some(0), "{admin}");
        let handler = HandlerProcess::start(BIN, &[mode], &env);
        let w = World {
            fake,
            handler: Some(handler),
            env,
            http: reqwest::Client::new(),
            admin: admin.trim().to_string(),
            tenant,
            data,
            storage,
        };
        let r = w
            .post(
                "/api/v1/tenants",
                json!({"tenant_id": w.tenant, "display_name": "Contoso"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        w
    }

    fn base(&self) -> String {
        self.handler.as_ref().expect("a running handler").base_url()
    }

    fn another(&self) -> HandlerProcess {
        HandlerProcess::start(BIN, &["serve"], &self.env)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base()))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base()))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.unwrap()
    }

    async fn status(&self) -> Value {
        self.json(&format!("/api/v1/tenants/{}/sync", self.tenant))
            .await
    }

    /// Queues a round now and waits for a round after `after` to finish.
    async fn sync(&self, full: bool) -> Value {
        let before = self.status().await["last_round"]["round"]
            .as_i64()
            .unwrap_or(0);
        let path = format!("/api/v1/tenants/{}/sync?full={full}", self.tenant);
        let r = self.post(&path, json!({})).await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        self.finished_after(before, Duration::from_secs(90)).await
    }

    async fn finished_after(&self, round: i64, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status().await;
            if s["last_round"]["round"].as_i64().unwrap_or(0) > round && s["status"] == "idle" {
                return s;
            }
            assert!(
                started.elapsed() < limit,
                "no round after {round} finished: {s}\n{}",
                self.handler
                    .as_ref()
                    .map(|h| h.output())
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A table of this test's deployment (by its prefix).
    fn table(&self, name: &str) -> tables::Table {
        let prefix = &self
            .env
            .iter()
            .find(|(k, _)| *k == "STORAGE_TABLE_PREFIX")
            .unwrap()
            .1;
        self.storage.client().table(format!("{prefix}{name}"))
    }

    async fn stats(&self) -> Value {
        let all = self.json("/api/v1/entra-id/statistics").await;
        all["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant_id"] == self.tenant.as_str())
            .cloned()
            .unwrap()
    }

    async fn user(&self, id: &str) -> reqwest::Response {
        self.get(&format!("/api/v1/entra-id/users/{id}")).await
    }

    /// Requests that started a full round of users (no skip or delta token).
    fn user_round_starts(&self) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.path == "/v1.0/users/delta" && !r.query.to_lowercase().contains("token"))
            .count()
    }
}

fn ids_of(users: &Value) -> Vec<String> {
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn full_then_incremental_rounds_mirror_graph_with_deletes_restores_and_members() {
    let w = World::start().await;
    let t = w.tenant.clone();
    w.fake.set_page_sizes(40, 2, 25);
    w.fake.populate(&t, 150, 5, 30);
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    assert_eq!(s["last_round"]["full"], true);
    let st = w.stats().await;
    assert_eq!(
        st["users"],
        json!({"total": 150, "active": 150, "inactive": 0}),
        "{st}"
    );
    assert_eq!(
        (st["groups"].as_i64(), st["memberships"].as_i64()),
        (Some(5), Some(150))
    );

    let users: Vec<String> = (0..150).map(system_tests::fake_graph::user_id).collect();
    let groups: Vec<String> = (0..5).map(system_tests::fake_graph::group_id).collect();
    let detail: Value = w.user(&users[3]).await.json().await.unwrap();
    assert_eq!(detail["entra_upn"], "user3@contoso.com");
    assert_eq!(detail["entra_id"], users[3].as_str());
    assert_eq!(detail["is_active"], true);
    assert_eq!(detail["sources"], json!(["graph"]));
    assert_eq!(detail["entra_groups"].as_array().unwrap().len(), 1);

    // changes in Entra, then an incremental round
    w.fake.update_user(
        &t,
        &users[0],
        json!({"jobTitle": "CTO", "department": null}),
    );
    w.fake
        .update_user(&t, &users[1], json!({"accountEnabled": false}));
    w.fake.soft_delete_user(&t, &users[2]);
    w.fake.hard_delete_user(&t, &users[4]);
    let new_user = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "new@contoso.com", "displayName": "New Person", "accountEnabled": true}),
    );
    w.fake.add_member(&t, &groups[0], &new_user);
    w.fake.remove_member(&t, &groups[0], &users[5]);
    let starts = w.user_round_starts();
    let s = w.sync(false).await;
    assert_eq!(
        (
            s["last_round"]["outcome"].as_str(),
            s["last_round"]["full"].as_bool()
        ),
        (Some("success"), Some(false)),
        "{s}"
    );
    assert_eq!(
        w.user_round_starts(),
        starts,
        "an incremental round starts from the deltaLink"
    );
    let u0: Value = w.user(&users[0]).await.json().await.unwrap();
    assert_eq!(
        (u0["job_title"].as_str(), u0["department"].as_str()),
        (Some("CTO"), None)
    );
    assert_eq!(
        u0["given_name"], "Given0",
        "what Graph did not send is kept"
    );
    let u1: Value = w.user(&users[1]).await.json().await.unwrap();
    assert_eq!(u1["is_active"], false);
    let u2: Value = w.user(&users[2]).await.json().await.unwrap();
    assert_eq!(u2["is_active"], false);
    assert!(u2["deleted_in_entra_at"].is_string());
    assert_eq!(w.user(&users[4]).await.status(), StatusCode::NOT_FOUND);
    let n: Value = w.user(&new_user).await.json().await.unwrap();
    assert_eq!(n["entra_groups"][0]["id"], groups[0].as_str());
    let u5: Value = w.user(&users[5]).await.json().await.unwrap();
    assert!(
        u5["entra_groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["id"] != groups[0].as_str())
    );
    let st = w.stats().await;
    assert_eq!(
        st["users"],
        json!({"total": 150, "active": 148, "inactive": 2}),
        "{st}"
    );

    // restored from the recycle bin
    w.fake.restore_user(&t, &users[2]);
    w.sync(false).await;
    let u2: Value = w.user(&users[2]).await.json().await.unwrap();
    assert_eq!(u2["is_active"], true);
    assert!(u2["deleted_in_entra_at"].is_null());

    // searching and listing
    let found = w.json("/api/v1/entra-id/users?search=NEW%20PER").await;
    assert_eq!(ids_of(&found), vec![new_user.clone()]);
    let inactive = w.json("/api/v1/entra-id/users?active=false").await;
    assert_eq!(ids_of(&inactive), vec![users[1].clone()]);
    let mut seen = 0;
    let mut cursor = String::new();
    loop {
        let page = w
            .json(&format!(
                "/api/v1/entra-id/users?per_page=40&cursor={cursor}"
            ))
            .await;
        seen += page["users"].as_array().unwrap().len();
        assert!(page["users"][0]["certificates"].is_array());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 150);
    let recent = w
        .json("/api/v1/entra-id/users?recently_synced=&per_page=100")
        .await;
    assert_eq!(recent["users"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn a_round_killed_mid_way_resumes_at_its_checkpoint_in_another_process() {
    let mut w = World::start().await;
    let t = w.tenant.clone();
    w.fake.set_page_sizes(10, 5, 50);
    w.fake.populate(&t, 1500, 4, 20);
    let r = w
        .post(&format!("/api/v1/tenants/{t}/sync"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let started = Instant::now();
    loop {
        let s = w.status().await;
        if s["round"]["pages"].as_i64().unwrap_or(0) >= 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill -9: nothing is released, the message and the lease are left behind
    drop(w.handler.take());
    let requests_at_kill = w.fake.request_count("/v1.0/users/delta");
    w.handler = Some(w.another());
    let s = w.finished_after(0, Duration::from_secs(120)).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    assert_eq!(
        w.user_round_starts(),
        1,
        "the round resumed, it did not start again"
    );
    // at most the page in flight was read twice
    let total = w.fake.request_count("/v1.0/users/delta");
    assert!(
        total <= 150 + 2,
        "{total} user pages for 150 ({requests_at_kill} before the kill)"
    );
    let st = w.stats().await;
    assert_eq!(st["users"]["total"], 1500, "{st}");
    assert_eq!(st["memberships"], 80);
}

#[tokio::test]
async fn two_processes_ticking_at_once_run_one_round_for_a_tenant() {
    let w = World::start().await;
    let t = w.tenant.clone();
    w.fake.set_page_sizes(20, 5, 50);
    w.fake.populate(&t, 200, 2, 10);
    let second = w.another();
    let timer = json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
        "Metadata": {"sys": {"MethodName": "DirectorySync", "UtcNow": "2026-12-01T10:00:00.000Z", "RandGuid": "0f8fad5b-d9cb-469f-a165-70867728950e"}}
    });
    let http = reqwest::Client::new();
    let (a, b) = tokio::join!(
        http.post(format!("{}/DirectorySync", w.base()))
            .json(&timer)
            .send(),
        http.post(format!("{}/DirectorySync", second.base_url()))
            .json(&timer)
            .send(),
    );
    let (a, b): (Value, Value) = (
        a.unwrap().json().await.unwrap(),
        b.unwrap().json().await.unwrap(),
    );
    let queued = a["Outputs"]["outMsg"].as_array().map_or(0, Vec::len)
        + b["Outputs"]["outMsg"].as_array().map_or(0, Vec::len);
    assert!(queued >= 1, "{a} {b}");
    let s = w.finished_after(0, Duration::from_secs(60)).await;
    assert_eq!(s["last_round"]["outcome"], "success");
    // let any second message be handled, then check it did not run a second round
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = w.status().await;
    assert_eq!(s["last_round"]["round"], 1, "{s}");
    assert_eq!(w.user_round_starts(), 1);
    assert_eq!(w.stats().await["users"]["total"], 200);
}

#[tokio::test]
async fn resync_throttling_and_revoked_consent_are_handled() {
    let w = World::start().await;
    let t = w.tenant.clone();
    w.fake.set_page_sizes(20, 5, 50);
    w.fake.populate(&t, 60, 1, 10);
    w.sync(false).await;
    // Graph resets the tenant's delta state while a user left Entra unseen
    w.fake
        .hard_delete_user(&t, &system_tests::fake_graph::user_id(7));
    w.fake.reset_delta_sync(&t);
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    assert_eq!(s["last_round"]["full"], true, "410 Gone runs a full round");
    let u7: Value = w
        .user(&system_tests::fake_graph::user_id(7))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(u7["is_active"], false, "swept after the full round: {u7}");
    assert_eq!(w.stats().await["users"]["active"], 59);

    // throttled with a Retry-After: the round waits and still completes
    w.fake.throttle_delta_requests(1, 1, 2);
    w.fake.update_user(
        &t,
        &system_tests::fake_graph::user_id(1),
        json!({"jobTitle": "Lead"}),
    );
    let before = Instant::now();
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    assert!(before.elapsed() >= Duration::from_secs(2));
    let throttled = w.fake.requests();
    let retry = throttled.iter().position(|r| r.status == 429).unwrap();
    assert!(
        throttled[retry + 1..]
            .iter()
            .all(|r| r.at.duration_since(throttled[retry].at) >= Duration::from_secs(2))
    );

    // consent revoked: a clear error, and not retried in a loop
    w.fake.revoke_consent(&t, CLIENT_ID);
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "access_revoked", "{s}");
    assert!(s["error"].as_str().unwrap().len() > 10, "{s}");
    let tokens = w.fake.token_requests().len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(w.fake.token_requests().len(), tokens, "no hot loop");
    let health: Value = reqwest::get(format!("{}/api/v1/entra-id/health", w.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded");
    assert!(!health.to_string().contains(&t), "no tenant ids in health");

    // offboarding stops the tenant's sync: its state is forgotten, no round can be queued
    let r = w
        .http
        .delete(format!("{}/api/v1/tenants/{t}", w.base()))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s = w.status().await;
    assert!(s["last_round"].is_null(), "{s}");
    let r = w
        .post(&format!("/api/v1/tenants/{t}/sync"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_message_that_always_fails_ends_in_the_poison_queue_whose_function_records_it() {
    let w = World::start().await;
    let queue = w.storage.queues().queue("sync-tenants").unwrap();
    queue.create_if_missing().await.unwrap();
    queue
        .send_json(&json!({"tenant_id": "not-a-guid"}))
        .await
        .unwrap();
    // SyncTenantPoison takes it off sync-tenants-poison; the message names no tenant, so
    // the event is the deployment's (the admin tenant's)
    let started = Instant::now();
    loop {
        let page = w
            .json(&format!(
                "/api/v1/tenants/{ADMIN_TENANT}/audit?action=queue.poison"
            ))
            .await;
        if let Some(event) = page["events"].as_array().and_then(|e| e.first()) {
            assert_eq!(event["outcome"]["code"], "sync-tenants", "{event}");
            assert_eq!(event["actor"]["id"], "SyncTenantPoison");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not poisoned: {}",
            w.handler.as_ref().unwrap().output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn sync_user_and_bulk_sync_read_graph_once_per_name() {
    let w = World::start().await;
    let t = w.tenant.clone();
    let guest = "alice_fabrikam.com#EXT#@contoso.com";
    let dollar = "$admin@contoso.com";
    let apostrophe = "o'brien@contoso.com";
    for upn in [guest, dollar, apostrophe] {
        w.fake.add_user(
            &t,
            json!({"userPrincipalName": upn, "displayName": upn, "accountEnabled": true}),
        );
    }
    for upn in [guest, dollar, apostrophe] {
        let r = w
            .post(
                "/api/v1/entra-id/sync-user",
                json!({"user_principal_name": upn}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{upn}");
        let u: Value = r.json().await.unwrap();
        assert_eq!(u["entra_upn"], upn);
        assert!(u["entra_groups"].is_array());
        assert!(u["entra_last_sync"].is_string());
    }
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "ghost@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for bad in ["nobody", "a b@contoso.com", ""] {
        let r = w
            .post(
                "/api/v1/entra-id/sync-user",
                json!({"user_principal_name": bad}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"upn": "x@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // 50 names: 47 distinct ones Graph knows, a repeat, one unknown, one malformed
    let mut names: Vec<String> = (0..47)
        .map(|i| {
            let upn = format!("bulk{i}@contoso.com");
            w.fake.add_user(
                &t,
                json!({"userPrincipalName": upn, "accountEnabled": true}),
            );
            upn
        })
        .collect();
    names.push("BULK0@contoso.com".into());
    names.push("ghost@contoso.com".into());
    names.push("not a upn".into());
    let batches = w.fake.request_count("/v1.0/$batch");
    let r = w
        .post(
            "/api/v1/entra-id/bulk-sync-users",
            json!({"user_principal_names": names, "tenant_id": t}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (
            b["total"].as_u64(),
            b["successful"].as_u64(),
            b["failed"].as_u64()
        ),
        (Some(49), Some(47), Some(2)),
        "{b}"
    );
    assert!(w.fake.request_count("/v1.0/$batch") - batches <= 3);
    let results = b["results"].as_array().unwrap();
    assert_eq!(results[0]["user"]["entra_upn"], "bulk0@contoso.com");
    assert!(
        results
            .iter()
            .any(|r| r["user_principal_name"] == "ghost@contoso.com" && r["status"] == "failed")
    );
    for count in [0, 51] {
        let names: Vec<String> = (0..count).map(|i| format!("u{i}@contoso.com")).collect();
        let r = w
            .post(
                "/api/v1/entra-id/bulk-sync-users",
                json!({"user_principal_names": names}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{count}");
    }
    assert_eq!(w.stats().await["users"]["total"], 50);
}

#[tokio::test]
async fn directory_endpoints_refuse_bad_input_clearly() {
    let w = World::start().await;
    for (path, status) in [
        ("/api/v1/entra-id/users?per_page=0", StatusCode::BAD_REQUEST),
        (
            "/api/v1/entra-id/users?per_page=101",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/entra-id/users?per_page=x", StatusCode::BAD_REQUEST),
        (
            "/api/v1/entra-id/users?active=maybe",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/entra-id/users?recently_synced=-1",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/entra-id/users?colour=red", StatusCode::BAD_REQUEST),
        (
            "/api/v1/entra-id/users?cursor=bm9wZQ",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/entra-id/users?tenant_id=nope",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/entra-id/users/not-a-guid", StatusCode::BAD_REQUEST),
        (
            "/api/v1/entra-id/users/9a9f4f0e-4a0d-4a47-a2d1-6a4f2b3c1d0e",
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/tenants/9a9f4f0e-4a0d-4a47-a2d1-6a4f2b3c1d0e/sync",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let r = w.get(path).await;
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{path}: {body}"
        );
    }
    let r = w
        .http
        .delete(format!("{}/api/v1/entra-id/statistics", w.base()))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "a known path, another method"
    );
    let r = w
        .post(
            &format!("/api/v1/tenants/{}/sync?full=maybe", w.tenant),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for path in [
        "/api/v1/entra-id/users",
        "/api/v1/entra-id/statistics",
        &format!("/api/v1/tenants/{}/sync", w.tenant),
    ] {
        let r = w
            .http
            .get(format!("{}{path}", w.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // a second active tenant: the choice must be named
    let other = Uuid::new_v4();
    w.post(
        "/api/v1/tenants",
        json!({"tenant_id": other, "display_name": "Fabrikam"}),
    )
    .await;
    let r = w.get("/api/v1/entra-id/users").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("tenant_id is required"));
    let r = w
        .get(&format!("/api/v1/entra-id/users?tenant_id={other}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let health = reqwest::get(format!("{}/api/v1/entra-id/health", w.base()))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["storage"], "reachable");
}

#[tokio::test]
async fn a_user_provisioned_over_scim_and_read_from_graph_is_one_record() {
    let w = World::start().await;
    let t = w.tenant.clone();
    let r = w
        .post(&format!("/api/v1/tenants/{t}/scim/token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token: Value = r.json().await.unwrap();
    let scim = token["tenant_url"].as_str().unwrap().to_string();
    let secret = token["token"].as_str().unwrap().to_string();
    let created: Value = w
        .http
        .post(format!("{scim}/Users"))
        .bearer_auth(&secret)
        .header("content-type", "application/scim+json")
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "Pat@contoso.com", "active": true, "displayName": "Pat",
            "emails": [{"primary": true, "type": "work", "value": "pat@contoso.com"}],
            "externalId": "pat",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scim_id = created["id"].as_str().unwrap().to_string();
    let listed = w.json("/api/v1/entra-id/users?search=pat").await;
    assert_eq!(ids_of(&listed), vec![scim_id.clone()]);
    assert_eq!(listed["users"][0]["sources"], json!(["scim"]));
    assert!(listed["users"][0]["entra_id"].is_null());

    let entra_id = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "pat@contoso.com", "displayName": "Pat Jones", "accountEnabled": true, "jobTitle": "Buyer"}),
    );
    w.sync(false).await;
    let listed = w.json("/api/v1/entra-id/users?search=pat").await;
    assert_eq!(
        ids_of(&listed),
        vec![scim_id.clone()],
        "one record: {listed}"
    );
    let u = &listed["users"][0];
    assert_eq!(u["sources"], json!(["graph", "scim"]));
    assert_eq!(u["entra_id"], entra_id.as_str());
    assert_eq!(u["job_title"], "Buyer");
    assert_eq!(w.stats().await["users"]["total"], 1);

    let r = w
        .http
        .delete(format!("{scim}/Users/{scim_id}"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let u: Value = w.user(&scim_id).await.json().await.unwrap();
    assert_eq!(u["sources"], json!(["graph"]), "still in Entra: {u}");
}

#[tokio::test]
async fn a_user_disabled_or_deleted_in_entra_has_its_certificates_revoked_by_the_next_round() {
    let w = World::start().await;
    let t = w.tenant.clone();
    let ann = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "ann@contoso.com", "displayName": "Ann", "accountEnabled": true}),
    );
    let bob = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "bob@contoso.com", "displayName": "Bob", "accountEnabled": true}),
    );
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    let mut serials = Vec::new();
    for user in [&ann, &bob] {
        let r = w
            .post(
                "/api/v1/entra-id/provision-certificate",
                json!({"user_id": user}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let issued: Value = r.json().await.unwrap();
        serials.push(
            issued["certificate"]["serial"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    w.fake
        .update_user(&t, &ann, json!({"accountEnabled": false}));
    w.fake.soft_delete_user(&t, &bob);
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    for user in [&ann, &bob] {
        let detail: Value = w.user(user).await.json().await.unwrap();
        let certificates = detail["certificates"].as_array().unwrap();
        assert_eq!(certificates.len(), 1, "{detail}");
        assert_eq!(
            (
                certificates[0]["status"].as_str(),
                certificates[0]["revocation_reason"].as_str(),
                certificates[0]["revoked_by"].as_str()
            ),
            (
                Some("revoked"),
                Some("cessationOfOperation"),
                Some("graph_sync")
            ),
            "{detail}"
        );
    }
    let crl = w
        .http
        .get(format!("{}/api/v1/pki/{t}/crl", w.base()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl).unwrap();
    let mut listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| pki::x509::hex(r.raw_serial()))
        .collect();
    listed.sort();
    serials.sort();
    assert_eq!(listed, serials);
}

#[tokio::test]
async fn sync_user_of_a_user_disabled_in_entra_revokes_its_certificates_at_once() {
    let w = World::start().await;
    let t = w.tenant.clone();
    let cy = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "cy@contoso.com", "displayName": "Cy", "accountEnabled": true}),
    );
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "cy@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = w
        .post(
            "/api/v1/entra-id/provision-certificate",
            json!({"user_id": cy}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    w.fake
        .update_user(&t, &cy, json!({"accountEnabled": false}));
    // no round: the on-demand sync sees the disable and revokes
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "cy@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let detail: Value = w.user(&cy).await.json().await.unwrap();
    let certificates = detail["certificates"].as_array().unwrap();
    assert_eq!(certificates[0]["status"], "revoked", "{detail}");
    assert_eq!(certificates[0]["revoked_by"], "graph_sync");
    // and a disabled user gets no new certificate
    let r = w
        .post(
            "/api/v1/entra-id/provision-certificate",
            json!({"user_id": cy}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

// Found by Schemathesis: a tenant whose consent is gone made sync-user answer 502, a
// server error for what is the tenant's state, not a fault of this service or of Graph.
#[tokio::test]
async fn sync_user_of_a_tenant_that_refuses_access_is_a_conflict_not_a_server_error() {
    let w = World::start().await;
    let t = w.tenant.clone();
    w.fake.add_user(
        &t,
        json!({"userPrincipalName": "adele@contoso.com", "displayName": "Adele", "accountEnabled": true}),
    );
    w.fake.revoke_consent(&t, CLIENT_ID);
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "adele@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "tenant_access_refused", "{body}");
    let r = w
        .post(
            "/api/v1/entra-id/bulk-sync-users",
            json!({"user_principal_names": ["adele@contoso.com"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["results"][0]["error"]["error"], "tenant_access_refused",
        "{body}"
    );
}

#[tokio::test]
async fn sync_changes_are_audited_per_object_with_graph_sync_as_actor() {
    let w = World::start().await;
    let t = w.tenant.clone();
    w.fake.set_page_sizes(10, 5, 50);
    w.fake.populate(&t, 30, 2, 5);
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    let created = audit_events(&w, "action=sync.user.create").await;
    assert_eq!(created.len(), 30, "one event per user, none twice");
    assert!(created.iter().all(|e| {
        e["actor"]["kind"] == "graph-sync"
            && e["correlation"]
                .as_str()
                .is_some_and(|c| c.starts_with("round "))
    }));
    assert_eq!(audit_events(&w, "action=sync.group.create").await.len(), 2);

    let users: Vec<String> = (0..30).map(system_tests::fake_graph::user_id).collect();
    w.fake
        .update_user(&w.tenant, &users[0], json!({"jobTitle": "CTO"}));
    w.fake
        .update_user(&w.tenant, &users[1], json!({"accountEnabled": false}));
    let s = w.sync(false).await;
    assert_eq!(s["last_round"]["outcome"], "success", "{s}");
    let updated = audit_events(&w, &format!("action=sync.user.update&target={}", users[0])).await;
    assert_eq!(updated.len(), 1, "{updated:?}");
    let job = updated[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["attribute"] == "job_title")
        .cloned()
        .unwrap();
    assert_eq!(job["new"], "CTO");
    let disabled = audit_events(&w, &format!("action=sync.user.disable&target={}", users[1])).await;
    assert_eq!(disabled.len(), 1);
    let rounds = audit_events(&w, "action=sync.round").await;
    assert_eq!(rounds.len(), 2);
    assert!(rounds.iter().all(|r| r["outcome"]["status"] == "success"));
}

async fn audit_events(w: &World, query: &str) -> Vec<Value> {
    let all = w
        .json(&format!(
            "/api/v1/tenants/{}/audit?limit=1000&{query}",
            w.tenant
        ))
        .await;
    all["events"].as_array().unwrap().clone()
}

// Found in review (issue 12): an on-demand sync (sync-user, bulk-sync-users) changed the
// directory and recorded nothing, so the trail could not say who made a user appear or
// change, nor that a request for a UPN Graph does not know failed.
#[tokio::test]
async fn on_demand_syncs_record_each_change_and_failure_by_the_admin_who_asked() {
    let w = World::start().await;
    let t = w.tenant.clone();
    let ada = w.fake.add_user(
        &t,
        json!({"userPrincipalName": "ada@contoso.com", "displayName": "Ada", "jobTitle": "Analyst", "accountEnabled": true}),
    );
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "ada@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let user: Value = r.json().await.unwrap();
    let id = user["id"].as_str().unwrap().to_string();
    w.fake
        .update_user(&t, &ada, json!({"jobTitle": "Engineer"}));
    let r = w
        .post(
            "/api/v1/entra-id/bulk-sync-users",
            json!({"user_principal_names": ["ada@contoso.com", "ghost@contoso.com"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = w
        .post(
            "/api/v1/entra-id/sync-user",
            json!({"user_principal_name": "nobody@contoso.com"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let trail = w
        .json(&format!(
            "/api/v1/tenants/{t}/audit?action=sync.user&limit=100"
        ))
        .await;
    let events = trail["events"].as_array().unwrap();
    let of = |action: &str, target: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == action && e["target"]["id"] == target)
            .collect()
    };
    let created = of("sync.user.create", &id);
    assert_eq!(created.len(), 1, "{trail}");
    assert_eq!(created[0]["actor"]["kind"], "admin", "{trail}");
    assert_eq!(created[0]["outcome"]["status"], "success", "{trail}");
    assert!(
        created[0]["changes"].to_string().contains("Analyst"),
        "{trail}"
    );
    let updated = of("sync.user.update", &id);
    assert_eq!(updated.len(), 1, "{trail}");
    let change = updated[0]["changes"].to_string();
    assert!(
        change.contains("Analyst") && change.contains("Engineer"),
        "{trail}"
    );
    for ghost in ["ghost@contoso.com", "nobody@contoso.com"] {
        let failed = of("sync.user.sync", ghost);
        assert_eq!(failed.len(), 1, "{ghost}: {trail}");
        assert_eq!(failed[0]["outcome"]["status"], "failure", "{trail}");
        assert_eq!(failed[0]["actor"]["kind"], "admin", "{trail}");
    }
}

#[tokio::test]
async fn housekeeping_moves_search_rows_an_older_release_left_in_the_directory_table() {
    // under the host: no timer of its own runs Housekeeping before this test posts it
    let w = World::start_as("host").await;
    let t = w.tenant.clone();
    let r = w
        .post(&format!("/api/v1/tenants/{t}/scim/token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token: Value = r.json().await.unwrap();
    let created: Value = w
        .http
        .post(format!("{}/Users", token["tenant_url"].as_str().unwrap()))
        .bearer_auth(token["token"].as_str().unwrap())
        .header("content-type", "application/scim+json")
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "Pat@contoso.com", "active": true, "displayName": "Pat Jones",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        ids_of(&w.json("/api/v1/entra-id/users?search=pat").await),
        vec![id.clone()]
    );

    // the user's search rows where a release before DirectorySearch wrote them
    let (directory, search) = (w.table("Directory"), w.table("DirectorySearch"));
    let rows = search
        .query_all(tables::Query::partition(&t))
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in &rows {
        let mut old = tables::Entity::new(row.partition_key.as_str(), row.row_key.as_str());
        old.properties = row.properties.clone();
        directory.insert(&old).await.unwrap();
        search
            .delete(&row.partition_key, &row.row_key, tables::IfMatch::Any)
            .await
            .unwrap();
    }
    assert_eq!(
        ids_of(&w.json("/api/v1/entra-id/users?search=pat").await),
        Vec::<String>::new()
    );

    let answer = w
        .http
        .post(format!("{}/Housekeeping", w.base()))
        .header("content-type", "application/json")
        .body(HOST_TIMER_BODY)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert_eq!(status, StatusCode::OK, "{}", answer.text().await.unwrap());
    assert_eq!(
        ids_of(&w.json("/api/v1/entra-id/users?search=pat").await),
        vec![id.clone()]
    );
    assert_eq!(
        ids_of(&w.json("/api/v1/entra-id/users?search=pat%20jo").await),
        vec![id]
    );
    let left = directory
        .query_all(tables::Query::partition(&t))
        .await
        .unwrap();
    assert!(left.iter().all(|r| !r.row_key.starts_with("s-")));
}
