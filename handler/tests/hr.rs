//! HR write-back end to end: the built handler on Azurite, a customer-owned connection
//! authenticated with the tenant's credential certificate, and the Graph stand-in taking
//! the writes (users, members, manager, passwordProfile, revokeSignInSessions, `$batch`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::fake_graph::FakeMicrosoft;
use system_tests::{Azurite, HandlerProcess, run_to_exit, unique_table};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_handler");
const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const CUSTOMER_APP: &str = "3b1f6f0e-5c8a-4d7e-9f21-0a4c2e7d9b11";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "test-client-secret";

struct World {
    fake: FakeMicrosoft,
    handler: HandlerProcess,
    http: reqwest::Client,
    admin: String,
    tenant: String,
    engineers: String,
    sales: String,
    data: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

fn day(offset: i64) -> String {
    let d = today() + time::Duration::days(offset);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl World {
    /// A tenant with a customer-owned HR connection (certificate) in `cloud`, and rules.
    async fn start_in(cloud: &str) -> World {
        World::start_on(
            cloud,
            unique_table("h"),
            Azurite::shared().connection_string(),
        )
        .await
    }

    /// As [`World::start_in`], with tables named `prefix...` reached through `storage`.
    async fn start_on(cloud: &str, prefix: String, storage: String) -> World {
        let fake = FakeMicrosoft::start().await;
        fake.register_secret_app(CLIENT_ID, SECRET);
        let tenant = Uuid::new_v4().to_string();
        fake.add_tenant(&tenant, "Contoso", "contoso.com");
        fake.consent(&tenant, CLIENT_ID, 0);
        let engineers = fake.add_group(&tenant, json!({"displayName": "Engineers"}));
        let sales = fake.add_group(&tenant, json!({"displayName": "Sales"}));
        let data = std::env::temp_dir().join(format!("hr-{}", Uuid::new_v4()));
        let env: Vec<(&'static str, String)> = vec![
            ("AzureWebJobsStorage", storage),
            ("STORAGE_TABLE_PREFIX", prefix),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.login_url.clone()),
            ("GRAPH_ENDPOINT", fake.graph_url.clone()),
            ("ENTRA_CLIENT_SECRET", SECRET.into()),
            ("ENTRA_DEV_AUTH", "true".into()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
        ];
        let (code, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
        assert_eq!(code, Some(0), "{admin}");
        let handler = HandlerProcess::start(BIN, &["serve"], &env);
        let w = World {
            fake,
            handler,
            http: reqwest::Client::new(),
            admin: admin.trim().to_string(),
            tenant,
            engineers,
            sales,
            data,
        };
        let (s, b) = w
            .call(
                "POST",
                "/api/v1/tenants",
                Some(json!({"tenant_id": w.tenant, "display_name": "Contoso"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, export) = w
            .call(
                "POST",
                &format!("/api/v1/tenants/{}/credential-certificate", w.tenant),
                Some(json!({"client_id": CUSTOMER_APP})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{export}");
        register_certificate(&w.fake, CUSTOMER_APP, &export);
        w.fake.consent(&w.tenant, CUSTOMER_APP, 0);
        let (s, b) = w
            .call(
                "PUT",
                &w.hr("connection"),
                Some(json!({"type": "customer_owned", "client_id": CUSTOMER_APP, "cloud": cloud})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let rules = json!({
            "upn": {"pattern": "lower(ascii(join(\".\", given_name, surname)))", "domain": "contoso.com"},
            "groups": [
                {"field": "department", "equals": "engineering", "groups": [w.engineers]},
                {"field": "department", "equals": "sales", "groups": [w.sales]},
            ],
            "joiner_days_before_start": 1,
        });
        let (s, b) = w.call("PUT", &w.hr("rules"), Some(rules)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        w
    }

    async fn start() -> World {
        World::start_in("global").await
    }

    fn hr(&self, rest: &str) -> String {
        format!("/api/v1/tenants/{}/hr/{rest}", self.tenant)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.handler.base_url()),
            )
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn import(&self, records: Value) {
        let (s, b) = self.call("POST", &self.hr("import"), Some(records)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }

    async fn plan(&self) -> Value {
        let (s, plan) = self.call("POST", &self.hr("plan"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{plan}");
        plan
    }

    async fn apply(&self, plan: &Value, confirm: bool) -> (StatusCode, Value) {
        self.call(
            "POST",
            &self.hr("apply"),
            Some(json!({"plan_id": plan["id"], "confirm": confirm})),
        )
        .await
    }

    /// Plans and applies; every step must succeed.
    async fn plan_and_apply(&self) -> (Value, Value) {
        let plan = self.plan().await;
        let (s, report) = self.apply(&plan, true).await;
        assert_eq!(s, StatusCode::OK, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        (plan, report)
    }

    async fn tick_due(&self) {
        let timer = json!({
            "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
            "Metadata": {"sys": {"MethodName": "HrDue", "UtcNow": "2026-12-01T10:00:00.000Z", "RandGuid": "0f8fad5b-d9cb-469f-a165-70867728950e"}}
        });
        let r = self
            .http
            .post(format!("{}/HrDue", self.handler.base_url()))
            .json(&timer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
}

fn register_certificate(fake: &FakeMicrosoft, client_id: &str, export: &Value) {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(export["certificate_der_base64"].as_str().unwrap())
        .unwrap();
    let b64url = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let jwk = &export["public_key_jwk"];
    fake.register_certificate_app(client_id, &der, &b64url(&jwk["n"]), &b64url(&jwk["e"]));
}

fn employee(id: &str, given: &str, surname: &str, department: &str) -> Value {
    json!({"employee_id": id, "given_name": given, "surname": surname, "department": department,
           "job_title": "Engineer", "usage_location": "GB", "start_date": day(-30)})
}

fn actions(plan: &Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn customer_owned_connection_signs_with_the_tenant_certificate_and_names_missing_permissions()
{
    let w = World::start().await;
    w.fake
        .set_app_roles(&w.tenant, CUSTOMER_APP, &["User.ReadWrite.All"]);
    let (s, test) = w
        .call("POST", &w.hr("connection/test"), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{test}");
    assert_eq!(test["ok"], false);
    assert_eq!(test["organization"]["display_name"], "Contoso");
    let missing: Vec<&str> = test["missing_permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["permission"].as_str().unwrap())
        .collect();
    assert!(missing.contains(&"Group.ReadWrite.All"), "{test}");
    assert!(!missing.contains(&"User.ReadWrite.All"), "{test}");
    let (_, form) = w
        .fake
        .token_requests()
        .into_iter()
        .rfind(|(_, f)| f.get("client_id").map(String::as_str) == Some(CUSTOMER_APP))
        .expect("a token request of the customer's app");
    assert!(
        form.contains_key("client_assertion"),
        "a certificate, not a secret"
    );
    assert!(!form.contains_key("client_secret"));
    let (s, c) = w.call("GET", &w.hr("connection"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["type"], "customer_owned");
    assert_eq!(c["client_id"], CUSTOMER_APP);
    assert!(c["last_success"].is_string(), "{c}");
    let (s, _) = w.call("DELETE", &w.hr("connection"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = w.call("POST", &w.hr("plan"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
}

#[tokio::test]
async fn a_national_cloud_connection_asks_for_that_clouds_graph() {
    let w = World::start_in("usgov").await;
    let (s, test) = w
        .call("POST", &w.hr("connection/test"), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{test}");
    let (_, form) = w
        .fake
        .token_requests()
        .into_iter()
        .rfind(|(_, f)| f.get("client_id").map(String::as_str) == Some(CUSTOMER_APP))
        .unwrap();
    assert_eq!(form["scope"], "https://graph.microsoft.us/.default");
    let (_, c) = w.call("GET", &w.hr("connection"), None).await;
    assert_eq!(c["cloud"], "usgov");
}

#[tokio::test]
async fn a_joiner_gets_an_account_groups_and_manager_and_a_second_apply_writes_nothing() {
    let w = World::start().await;
    let mut ada = employee("E1", "Ada", "Lovelace", "Engineering");
    ada["manager_employee_id"] = json!("E0");
    w.import(json!([employee("E0", "Grace", "Hopper", "Sales"), ada]))
        .await;
    let (plan, report) = w.plan_and_apply().await;
    let mut got = actions(&plan);
    got.sort();
    assert_eq!(
        got,
        [
            "add_member",
            "add_member",
            "create_user",
            "create_user",
            "set_manager"
        ],
        "{plan}"
    );
    assert!(plan["steps"][0]["reason"].is_string());
    assert_eq!(report["done"], 5, "{report}");
    let user = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap();
    let boss = w.fake.user(&w.tenant, "grace.hopper@contoso.com").unwrap();
    let id = user["id"].as_str().unwrap();
    assert_eq!(user["employeeId"], "E1");
    assert_eq!(user["accountEnabled"], true);
    assert_eq!(user["usageLocation"], "GB");
    assert_eq!(w.fake.groups_of(&w.tenant, id), vec![w.engineers.clone()]);
    let state = w.fake.hr_state(&w.tenant, id);
    assert_eq!(state.manager.as_deref(), boss["id"].as_str());
    assert!(state.force_change, "the first password must be changed");
    // every applied step is in the audit trail, with the admin who applied the plan
    let (s, trail) = w
        .call(
            "GET",
            &format!("/api/v1/tenants/{}/audit?action=hr.&limit=100", w.tenant),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{trail}");
    let events = trail["events"].as_array().unwrap();
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "hr.user.create")
        .collect();
    assert_eq!(created.len(), 2, "{trail}");
    assert!(
        created.iter().all(|e| e["actor"]["kind"] == "admin"),
        "{trail}"
    );
    assert!(
        created.iter().any(
            |e| e["target"]["id"] == json!(id) && e["changes"].to_string().contains("Lovelace")
        ),
        "{trail}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "hr.member.add")
            .count(),
        2,
        "{trail}"
    );

    let (s, again) = w.apply(&plan, false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["already_done"], 5, "{again}");
    assert_eq!(w.fake.created_users(&w.tenant).len(), 2);
    let next = w.plan().await;
    assert_eq!(actions(&next), Vec::<String>::new(), "{next}");
}

#[tokio::test]
async fn a_upn_taken_in_entra_gives_the_next_one() {
    let w = World::start().await;
    w.fake.add_user(
        &w.tenant,
        json!({"userPrincipalName": "ada.lovelace@contoso.com", "displayName": "Another Ada", "employeeId": "X9", "accountEnabled": true}),
    );
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    let plan = w.plan().await;
    assert_eq!(
        plan["steps"][0]["upn"], "ada.lovelace2@contoso.com",
        "{plan}"
    );
    w.apply(&plan, false).await;
    let user = w.fake.user(&w.tenant, "ada.lovelace2@contoso.com").unwrap();
    assert_eq!(user["employeeId"], "E1");
}

#[tokio::test]
async fn an_apply_retried_after_a_create_whose_answer_was_lost_makes_no_second_user() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    let plan = w.plan().await;
    // an earlier attempt created the user, then died before recording it
    let made = w.fake.add_user(
        &w.tenant,
        json!({"userPrincipalName": "ada.lovelace@contoso.com", "displayName": "Ada Lovelace", "employeeId": "E1", "accountEnabled": true}),
    );
    let (s, report) = w.apply(&plan, false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["results"][0]["user_id"], made, "{report}");
    assert!(w.fake.created_users(&w.tenant).is_empty(), "no POST /users");
    assert_eq!(
        w.fake.groups_of(&w.tenant, &made),
        vec![w.engineers.clone()]
    );
}

#[tokio::test]
async fn a_mover_a_leaver_and_a_rehire_follow_hr() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // mover: only what changed, and the groups follow
    w.import(json!([employee("E1", "Ada", "Lovelace", "Sales")]))
        .await;
    let (plan, _) = w.plan_and_apply().await;
    let mut got = actions(&plan);
    got.sort();
    assert_eq!(
        got,
        ["add_member", "remove_member", "update_user"],
        "{plan}"
    );
    let update = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "update_user")
        .unwrap();
    assert_eq!(update["changes"], json!({"department": "Sales"}));
    assert_eq!(w.fake.groups_of(&w.tenant, &id), vec![w.sales.clone()]);
    assert_eq!(w.fake.user(&w.tenant, &id).unwrap()["department"], "Sales");

    // leaver: one of one user is over HR_MAX_DISABLE_PERCENT, so it needs confirmation
    let mut leaver = employee("E1", "Ada", "Lovelace", "Sales");
    leaver["end_date"] = json!(day(-1));
    w.import(json!([leaver])).await;
    let plan = w.plan().await;
    assert_eq!(
        actions(&plan),
        ["disable_user", "revoke_sessions", "remove_member"],
        "{plan}"
    );
    assert_eq!(plan["needs_confirmation"], true);
    let (s, refused) = w.apply(&plan, false).await;
    assert_eq!(s, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "confirmation_required");
    assert_eq!(w.fake.user(&w.tenant, &id).unwrap()["accountEnabled"], true);
    let (s, report) = w.apply(&plan, true).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(
        w.fake.user(&w.tenant, &id).unwrap()["accountEnabled"],
        false
    );
    assert_eq!(w.fake.hr_state(&w.tenant, &id).sessions_revoked, 1);
    assert!(w.fake.groups_of(&w.tenant, &id).is_empty());

    // rehire: enabled again with a new temporary password, back in the group
    w.import(json!([employee("E1", "Ada", "Lovelace", "Sales")]))
        .await;
    let (plan, _) = w.plan_and_apply().await;
    assert_eq!(
        actions(&plan),
        ["enable_user", "reset_password", "add_member"],
        "{plan}"
    );
    assert_eq!(w.fake.user(&w.tenant, &id).unwrap()["accountEnabled"], true);
    assert_eq!(w.fake.hr_state(&w.tenant, &id).passwords_set, 2);
    assert_eq!(w.fake.created_users(&w.tenant).len(), 1, "the same user");
}

#[tokio::test]
async fn a_privileged_account_is_never_disabled_by_a_plan() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.fake
        .assign_directory_role(&w.tenant, &id, "Global Administrator");
    let mut leaver = employee("E1", "Ada", "Lovelace", "Engineering");
    leaver["end_date"] = json!(day(-1));
    w.import(json!([leaver])).await;
    let plan = w.plan().await;
    assert_eq!(actions(&plan), Vec::<String>::new(), "{plan}");
    assert!(
        plan["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("privileged"),
        "{plan}"
    );
}

#[tokio::test]
async fn a_csv_import_names_every_bad_row_and_imports_nothing() {
    let w = World::start().await;
    let csv = format!(
        "employee_id,given_name,surname,start_date,department\n\
         E1,Ada,Lovelace,{},Engineering\n\
         E2,,Hopper,{},Sales\n\
         E3,Alan,Turing,yesterday,Sales\n",
        day(-3),
        day(-3)
    );
    let r = w
        .http
        .post(format!("{}{}", w.handler.base_url(), w.hr("import")))
        .bearer_auth(&w.admin)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    let rows: Vec<u64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [2, 3], "{body}");
    assert!(
        body["rejected"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("start_date")
    );
    let plan = w.plan().await;
    assert_eq!(
        actions(&plan),
        Vec::<String>::new(),
        "nothing was imported: {plan}"
    );
    let good = format!(
        "employee_id,given_name,surname,start_date,department\nE1,Ada,Lovelace,{},Engineering\n",
        day(-3)
    );
    let r = w
        .http
        .post(format!("{}{}", w.handler.base_url(), w.hr("import")))
        .bearer_auth(&w.admin)
        .header("content-type", "text/csv")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(actions(&w.plan().await), ["create_user", "add_member"]);
}

#[tokio::test]
async fn a_future_hire_waits_and_the_timer_creates_the_account_when_due() {
    let w = World::start().await;
    let mut hire = employee("E7", "Alan", "Turing", "Engineering");
    hire["start_date"] = json!(day(5));
    w.import(json!([hire])).await;
    let plan = w.plan().await;
    assert_eq!(actions(&plan), Vec::<String>::new());
    assert_eq!(plan["waiting"][0]["due_on"], day(4), "{plan}");
    w.tick_due().await;
    assert!(w.fake.user(&w.tenant, "alan.turing@contoso.com").is_none());
    // the hire is due once accounts are made five days ahead
    let (_, mut rules) = w.call("GET", &w.hr("rules"), None).await;
    rules["joiner_days_before_start"] = json!(5);
    let (s, _) = w.call("PUT", &w.hr("rules"), Some(rules)).await;
    assert_eq!(s, StatusCode::OK);
    w.tick_due().await;
    let user = w
        .fake
        .user(&w.tenant, "alan.turing@contoso.com")
        .expect("created by the timer");
    assert_eq!(
        w.fake.groups_of(&w.tenant, user["id"].as_str().unwrap()),
        vec![w.engineers.clone()]
    );
}

#[tokio::test]
async fn a_password_reset_is_shown_once_and_must_be_changed() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let r = w
        .http
        .post(format!(
            "{}{}",
            w.handler.base_url(),
            w.hr("employees/E1/reset-password")
        ))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    let password = body["temporary_password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 16);
    assert_eq!(body["force_change_password_next_sign_in"], true);
    let id = body["user_id"].as_str().unwrap();
    let state = w.fake.hr_state(&w.tenant, id);
    assert_eq!(state.passwords_set, 2);
    assert!(state.force_change);
    assert!(
        !w.handler.output().contains(&password),
        "the password is never logged"
    );
    w.fake
        .assign_directory_role(&w.tenant, id, "Global Administrator");
    let (s, refused) = w
        .call("POST", &w.hr("employees/E1/reset-password"), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("User Administrator"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_throttled_write_waits_for_retry_after_and_then_succeeds() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.import(json!([employee("E1", "Ada", "Lovelace", "Sales")]))
        .await;
    let plan = w.plan().await;
    w.fake.throttle_batch_item(&format!("/users/{id}"), 1, 2);
    let started = Instant::now();
    let (s, report) = w.apply(&plan, false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["failed"], 0, "{report}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    assert_eq!(w.fake.user(&w.tenant, &id).unwrap()["department"], "Sales");
}

impl World {
    /// Asks for a delegated link and returns its authorize URL.
    async fn link_url(&self) -> String {
        let (s, link) = self.call("GET", &self.hr("connection/link"), None).await;
        assert_eq!(s, StatusCode::OK, "{link}");
        link["authorize_url"].as_str().unwrap().to_string()
    }

    /// Follows Microsoft's redirect back to the handler (path and query of `redirect`).
    async fn follow(&self, redirect: &str) -> (StatusCode, Value) {
        let url = url::Url::parse(redirect).unwrap();
        let r = self
            .http
            .get(format!(
                "{}{}?{}",
                self.handler.base_url(),
                url.path(),
                url.query().unwrap_or_default()
            ))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn refresh_redemptions(&self) -> usize {
        self.fake
            .token_requests()
            .iter()
            .filter(|(_, f)| f.get("grant_type").map(String::as_str) == Some("refresh_token"))
            .count()
    }
}

#[tokio::test]
async fn a_delegated_connection_rotates_its_refresh_token_and_a_revoked_one_asks_for_a_relink() {
    let w = World::start().await;
    w.fake.set_delegated_token_lifetime(2);
    let url = w.link_url().await;
    let scope = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .unwrap()
        .1
        .into_owned();
    assert!(
        scope.contains("Directory.AccessAsUser.All") && scope.contains("offline_access"),
        "{scope}"
    );
    let admin = Uuid::new_v4().to_string();
    let (s, linked) = w.follow(&w.fake.sign_in(&url, &w.tenant, &admin)).await;
    assert_eq!(s, StatusCode::OK, "{linked}");
    let (_, c) = w.call("GET", &w.hr("connection"), None).await;
    assert_eq!(c["type"], "delegated");
    assert!(c["linked_by"].as_str().unwrap().contains(&admin), "{c}");
    assert!(
        !c.to_string().contains("fake-refresh"),
        "no refresh token shown: {c}"
    );

    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    assert!(w.fake.user(&w.tenant, "ada.lovelace@contoso.com").is_some());
    let first = w.refresh_redemptions();
    assert!(first >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // the stand-in refuses a refresh token once redeemed: this works only with the new one
    w.plan().await;
    assert!(
        w.refresh_redemptions() > first,
        "the access token was renewed"
    );

    w.fake.revoke_refresh_tokens(&w.tenant);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, refused) = w.call("POST", &w.hr("plan"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "relink_required", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("AADSTS50173"));
}

#[tokio::test]
async fn a_delegated_sign_in_from_another_tenant_keeps_nothing() {
    let w = World::start().await;
    let url = w.link_url().await;
    let other = Uuid::new_v4().to_string();
    w.fake.add_tenant(&other, "Fabrikam", "fabrikam.com");
    let (s, refused) = w
        .follow(&w.fake.sign_in(&url, &other, &Uuid::new_v4().to_string()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"], "wrong_tenant");
    let (_, c) = w.call("GET", &w.hr("connection"), None).await;
    assert_eq!(c["type"], "customer_owned", "the connection is unchanged");
    // the link was single-use
    let (s, _) = w.follow(&w.fake.sign_in(&url, &w.tenant, "x")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn missing_consent_on_a_delegated_link_is_shown_with_a_relink_url() {
    let w = World::start().await;
    let url = w.link_url().await;
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut back = url::Url::parse("http://localhost/api/v1/hr/connection/callback").unwrap();
    back.query_pairs_mut()
        .append_pair("error", "consent_required")
        .append_pair("error_description", "AADSTS65001: The user or administrator has not consented to use the application with ID '6e74172b'.\r\nTrace ID: x")
        .append_pair("state", &state);
    let (s, body) = w.follow(back.as_str()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "consent_required");
    assert!(
        body["relink_url"]
            .as_str()
            .unwrap()
            .contains("code_challenge="),
        "{body}"
    );
}

#[tokio::test]
async fn one_hr_record_is_put_and_read_back_and_a_bad_one_refused() {
    let w = World::start().await;
    let mut ada = employee("E1", "Ada", "Lovelace", "Engineering");
    ada.as_object_mut().unwrap().remove("employee_id");
    let (s, b) = w
        .call("PUT", &w.hr("employees/E1"), Some(ada.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, again) = w.call("PUT", &w.hr("employees/E1"), Some(ada)).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let (s, got) = w.call("GET", &w.hr("employees/E1"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["surname"], "Lovelace");
    let mut bad = employee("E2", "Alan", "Turing", "Sales");
    bad["end_date"] = json!("2000-01-01");
    let (s, b) = w.call("PUT", &w.hr("employees/E2"), Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(actions(&w.plan().await), ["create_user", "add_member"]);
}

#[tokio::test]
async fn a_role_given_between_plan_and_apply_keeps_the_account_enabled() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut leaver = employee("E1", "Ada", "Lovelace", "Engineering");
    leaver["end_date"] = json!(day(-1));
    w.import(json!([leaver])).await;
    let plan = w.plan().await;
    assert_eq!(actions(&plan)[0], "disable_user", "{plan}");
    w.fake
        .assign_directory_role(&w.tenant, &id, "User Administrator");
    let (s, report) = w.apply(&plan, true).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["failed"], 3, "{report}");
    assert_eq!(w.fake.user(&w.tenant, &id).unwrap()["accountEnabled"], true);
    assert_eq!(w.fake.groups_of(&w.tenant, &id), vec![w.engineers.clone()]);
}

#[tokio::test]
async fn an_offboarded_tenant_is_never_written_to_by_a_plan_an_apply_or_the_timer() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    let plan = w.plan().await;
    let (s, b) = w
        .call("DELETE", &format!("/api/v1/tenants/{}", w.tenant), None)
        .await;
    assert!(s.is_success(), "{s} {b}");
    let (s, refused) = w.apply(&plan, false).await;
    assert_eq!(s, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "tenant_not_active");
    let (s, _) = w.call("POST", &w.hr("plan"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    w.tick_due().await;
    assert!(w.fake.created_users(&w.tenant).is_empty());
}

#[tokio::test]
async fn an_employee_body_that_is_not_an_object_is_refused_and_the_handler_keeps_serving() {
    let w = World::start().await;
    for body in [json!([1, 2]), json!("E1"), json!(7)] {
        let (s, b) = w.call("PUT", &w.hr("employees/E1"), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
    let record = json!({"given_name": "Ada", "surname": "Lovelace", "start_date": "2026-02-01"});
    let (s, b) = w.call("PUT", &w.hr("employees/E1"), Some(record)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["employee_id"], "E1");
}

impl World {
    /// The status of a GET of one HR record.
    async fn status_of(&self, employee_id: &str) -> StatusCode {
        self.call("GET", &self.hr(&format!("employees/{employee_id}")), None)
            .await
            .0
    }

    /// The tenant's audit events whose action starts with `action`, newest first.
    async fn audit(&self, action: &str) -> Vec<Value> {
        let (s, trail) = self
            .call(
                "GET",
                &format!(
                    "/api/v1/tenants/{}/audit?action={action}&limit=100",
                    self.tenant
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{trail}");
        trail["events"].as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn a_manager_cleared_in_hr_is_removed_in_entra_and_one_already_gone_is_done() {
    let w = World::start().await;
    let mut ada = employee("E1", "Ada", "Lovelace", "Engineering");
    ada["manager_employee_id"] = json!("E0");
    w.import(json!([employee("E0", "Grace", "Hopper", "Sales"), ada]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(w.fake.hr_state(&w.tenant, &id).manager.is_some());

    // HR no longer names a manager: two plans made before either is applied
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    let first = w.plan().await;
    assert_eq!(actions(&first), ["remove_manager"], "{first}");
    let second = w.plan().await;
    let (s, report) = w.apply(&first, false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["done"], 1, "{report}");
    assert_eq!(w.fake.hr_state(&w.tenant, &id).manager, None);
    // Graph's 404 for a manager that is gone means the state asked for holds
    let (s, report) = w.apply(&second, false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["done"], 1, "{report}");
    assert_eq!(actions(&w.plan().await), Vec::<String>::new());
    let events = w.audit("hr.user.remove_manager").await;
    assert_eq!(events.len(), 2, "{events:?}");
    // each says which manager went (as HR named them)
    for e in &events {
        assert_eq!(
            e["changes"],
            json!([{"attribute": "manager", "old": "E0", "new": null}]),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_user_in_150_groups_gets_only_the_group_steps_hr_asks_for() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // 149 groups HR does not manage, whose ids sort first: Graph's first page of 100
    // holds none of the groups the rules manage
    for i in 0..149 {
        let g = w.fake.add_group(
            &w.tenant,
            json!({"id": format!("00000000-0000-0000-0000-{i:012}"), "displayName": format!("Other {i}")}),
        );
        w.fake.add_member(&w.tenant, &g, &id);
    }
    assert_eq!(w.fake.groups_of(&w.tenant, &id).len(), 150);
    assert_eq!(actions(&w.plan().await), Vec::<String>::new());

    // a mover leaves the group on the second page and joins the other
    w.import(json!([employee("E1", "Ada", "Lovelace", "Sales")]))
        .await;
    let (plan, _) = w.plan_and_apply().await;
    let mut got = actions(&plan);
    got.sort();
    assert_eq!(
        got,
        ["add_member", "remove_member", "update_user"],
        "{plan}"
    );
    let groups = w.fake.groups_of(&w.tenant, &id);
    assert_eq!(groups.len(), 150);
    assert!(groups.contains(&w.sales) && !groups.contains(&w.engineers));
}

#[tokio::test]
async fn an_update_event_records_the_old_and_the_new_value() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let mut mover = employee("E1", "Ada", "Lovelace", "Sales");
    mover["job_title"] = json!("Account Manager");
    w.import(json!([mover])).await;
    w.plan_and_apply().await;
    let events = w.audit("hr.user.update").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let mut changes = events[0]["changes"].as_array().unwrap().clone();
    changes.sort_by_key(|c| c["attribute"].as_str().unwrap().to_string());
    assert_eq!(
        Value::Array(changes),
        json!([
            {"attribute": "department", "old": "Engineering", "new": "Sales"},
            {"attribute": "jobTitle", "old": "Engineer", "new": "Account Manager"},
        ])
    );
}

#[tokio::test]
async fn a_direct_password_reset_is_audited_with_the_admin_and_without_the_password() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let (s, body) = w
        .call("POST", &w.hr("employees/E1/reset-password"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let password = body["temporary_password"].as_str().unwrap();
    let events = w.audit("hr.user.reset_password").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["actor"]["kind"], "admin", "{e}");
    assert_eq!(e["target"]["id"], body["user_id"], "{e}");
    assert_eq!(e["outcome"]["status"], "success", "{e}");
    assert_eq!(e["changes"][0]["attribute"], "password", "{e}");
    assert!(!e.to_string().contains(password), "{e}");

    // a refused reset is recorded as failed
    let id = body["user_id"].as_str().unwrap();
    w.fake
        .assign_directory_role(&w.tenant, id, "Global Administrator");
    let (s, _) = w
        .call("POST", &w.hr("employees/E1/reset-password"), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let events = w.audit("hr.user.reset_password").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["outcome"]["status"], "failure", "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_storage_fails_midway_is_in_whole_or_not_at_all() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let prefix = unique_table("h");
    let hr_table = format!("{prefix}Hr");
    // armed: the HR table's transactions from the `pass`-th on fail, retries included
    let armed = Arc::new(AtomicBool::new(false));
    let pass = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let port = {
        let (armed, pass, seen) = (armed.clone(), pass.clone(), seen.clone());
        system_tests::faulty_table_endpoint(move |r| {
            armed.load(Ordering::SeqCst)
                && r.path.ends_with("/$batch")
                && r.body.contains(hr_table.as_str())
                && seen.fetch_add(1, Ordering::SeqCst) >= pass.load(Ordering::SeqCst)
        })
        .await
    };
    let w = World::start_on("global", prefix, system_tests::connection_string_via(port)).await;
    let rows: Vec<Value> = (0..150)
        .map(|i| employee(&format!("E{i}"), "Ada", &format!("L{i}"), "Engineering"))
        .collect();
    for failing_from in [0, 1] {
        let tenant_rows = json!(rows);
        pass.store(failing_from, Ordering::SeqCst);
        seen.store(0, Ordering::SeqCst);
        armed.store(true, Ordering::SeqCst);
        let (status, answer) = w.call("POST", &w.hr("import"), Some(tenant_rows)).await;
        armed.store(false, Ordering::SeqCst);
        let first = w.status_of("E0").await;
        let last = w.status_of("E149").await;
        if status == StatusCode::OK {
            assert_eq!(answer["imported"], 150, "{answer}");
            assert_eq!((first, last), (StatusCode::OK, StatusCode::OK), "all in");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("nothing was imported"),
            "{answer}"
        );
        assert_eq!(
            (first, last),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "a failed import leaves no row (failing from transaction {failing_from})"
        );
    }
    // the same file again, storage well: every row is in
    w.import(json!(rows)).await;
    assert_eq!(w.status_of("E149").await, StatusCode::OK);
}

#[tokio::test]
async fn the_position_held_today_gives_the_job_title_in_entra() {
    let w = World::start().await;
    let mut ada = employee("E1", "Ada", "Lovelace", "Engineering");
    ada["positions"] = json!([
        {"title": "Engineer", "start": day(-30), "end": day(-6)},
        {"title": "Lead Engineer", "start": day(-5)},
        {"title": "Director", "start": day(10)},
    ]);
    w.import(json!([ada])).await;
    w.plan_and_apply().await;
    let user = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap();
    assert_eq!(user["jobTitle"], "Lead Engineer", "{user}");
    assert_eq!(user["department"], "Engineering", "the position names none");
}

#[tokio::test]
async fn every_hr_admin_change_is_in_the_audit_trail_without_its_secrets() {
    let w = World::start().await;
    // World::start set a customer-owned connection and rules
    let set = w.audit("hr.connection.set").await;
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set[0]["actor"]["kind"], "admin");
    assert!(
        set[0]["changes"].to_string().contains(CUSTOMER_APP),
        "{set:?}"
    );
    let rules = w.audit("hr.rules.set").await;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(rules[0]["changes"].to_string().contains("contoso.com"));

    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    let import = w.audit("hr.import").await;
    assert_eq!(import.len(), 1, "{import:?}");
    assert_eq!(import[0]["changes"][0]["new"], 1, "{import:?}");

    let mut moved = employee("E1", "Ada", "Lovelace", "Sales");
    moved.as_object_mut().unwrap().remove("employee_id");
    let (s, _) = w.call("PUT", &w.hr("employees/E1"), Some(moved)).await;
    assert_eq!(s, StatusCode::OK);
    let update = w.audit("hr.employee.update").await;
    assert_eq!(update.len(), 1, "{update:?}");
    assert_eq!(
        update[0]["changes"],
        json!([{"attribute": "department", "old": "Engineering", "new": "Sales"}])
    );

    // a delegated link replaces it: the refresh token is only said to have changed
    let url = w.link_url().await;
    let admin = Uuid::new_v4().to_string();
    let (s, linked) = w.follow(&w.fake.sign_in(&url, &w.tenant, &admin)).await;
    assert_eq!(s, StatusCode::OK, "{linked}");
    let link = w.audit("hr.connection.link").await;
    assert_eq!(link.len(), 1, "{link:?}");
    assert_eq!(link[0]["actor"]["id"], json!(admin), "{link:?}");
    assert!(!link[0].to_string().contains("fake-refresh"), "{link:?}");
    assert!(link[0]["changes"].to_string().contains("refresh_token"));

    let (s, _) = w.call("DELETE", &w.hr("connection"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(w.audit("hr.connection.delete").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hr_admin_change_whose_audit_event_cannot_be_stored_is_not_made() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let prefix = unique_table("h");
    let audit_table = format!("{prefix}Audit");
    // armed: every request to the audit tables fails, retries included
    let armed = Arc::new(AtomicBool::new(false));
    let port = {
        let armed = armed.clone();
        system_tests::faulty_table_endpoint(move |r| {
            armed.load(Ordering::SeqCst)
                && (r.path.contains(audit_table.as_str()) || r.body.contains(audit_table.as_str()))
        })
        .await
    };
    let w = World::start_on("global", prefix, system_tests::connection_string_via(port)).await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    armed.store(true, Ordering::SeqCst);
    let (put, answer) = w
        .call(
            "PUT",
            &w.hr("employees/E1"),
            Some(employee("E1", "Ada", "Lovelace", "Sales")),
        )
        .await;
    let (import, _) = w
        .call(
            "POST",
            &w.hr("import"),
            Some(json!([employee("E2", "Grace", "Hopper", "Sales")])),
        )
        .await;
    armed.store(false, Ordering::SeqCst);
    assert_eq!(put, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(import, StatusCode::SERVICE_UNAVAILABLE);
    let (_, e1) = w.call("GET", &w.hr("employees/E1"), None).await;
    assert_eq!(
        e1["department"], "Engineering",
        "a change that cannot be recorded is not made"
    );
    assert_eq!(w.status_of("E2").await, StatusCode::NOT_FOUND);
    assert!(w.audit("hr.employee.update").await.is_empty());
}

#[tokio::test]
async fn a_graph_that_names_a_group_page_twice_fails_the_plan_instead_of_paging_forever() {
    let w = World::start().await;
    w.import(json!([employee("E1", "Ada", "Lovelace", "Engineering")]))
        .await;
    w.plan_and_apply().await;
    let id = w.fake.user(&w.tenant, "ada.lovelace@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..149 {
        let g = w.fake.add_group(
            &w.tenant,
            json!({"id": format!("00000000-0000-0000-0000-{i:012}"), "displayName": format!("Other {i}")}),
        );
        w.fake.add_member(&w.tenant, &g, &id);
    }
    // a mover, so the plan reads her groups fresh; their second page names itself as the
    // next one
    w.import(json!([employee("E1", "Ada", "Lovelace", "Sales")]))
        .await;
    w.fake.loop_member_of_pages();
    let (s, answer) = w.call("POST", &w.hr("plan"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"], "graph_rejected", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("twice"),
        "{answer}"
    );
}
