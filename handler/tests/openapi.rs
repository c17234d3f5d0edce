//! The OpenAPI document against the running handler: it is valid OpenAPI 3.1, served as
//! committed, and Schemathesis, generating requests for every operation from it, finds no
//! server error and no answer that breaks its own description.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::fake_graph::FakeMicrosoft;
use system_tests::{
    Azurite, HandlerProcess, env_or, openapi_tools, release_handler_built, run_to_exit,
    unique_table,
};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_handler");
const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const ADMIN_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "openapi-test-secret";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn generated_document_is_valid_openapi() {
    let (code, document) = run_to_exit(BIN, &["openapi"], &[]);
    assert_eq!(code, Some(0), "handler openapi failed: {document}");
    let file = std::env::temp_dir().join(format!("openapi-{}.json", Uuid::new_v4()));
    std::fs::write(&file, &document).unwrap();
    let output = Command::new(openapi_tools().join("openapi-spec-validator"))
        .arg(&file)
        .output()
        .expect("openapi-spec-validator runs");
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "the document is not valid OpenAPI: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap();
    assert_eq!(
        committed, document,
        "docs/openapi.json is stale: cargo run -p handler -- openapi > docs/openapi.json"
    );
}

/// Schemathesis sends the document's examples as they are, and readers copy them: each one
/// must be valid against the schema it illustrates (tests/openapi/check_examples.py).
#[test]
fn every_example_is_valid_against_its_own_schema() {
    let (code, document) = run_to_exit(BIN, &["openapi"], &[]);
    assert_eq!(code, Some(0), "handler openapi failed: {document}");
    let file = std::env::temp_dir().join(format!("openapi-{}.json", Uuid::new_v4()));
    std::fs::write(&file, &document).unwrap();
    let output = Command::new(openapi_tools().join("python"))
        .arg(repo().join("tests/openapi/check_examples.py"))
        .arg(&file)
        .output()
        .expect("the example check runs");
    std::fs::remove_file(&file).ok();
    assert!(
        output.status.success(),
        "examples that break their own schema:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The release handler on Azurite, with Microsoft faked, a registered tenant with users,
/// its SCIM token, and a Connector API principal with a grant.
struct World {
    handler: HandlerProcess,
    env: Vec<(&'static str, String)>,
    fake: FakeMicrosoft,
    data: std::path::PathBuf,
    admin: String,
}

impl Drop for World {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

impl World {
    async fn start(binary: &str) -> World {
        let fake = FakeMicrosoft::start().await;
        fake.register_secret_app(CLIENT_ID, SECRET);
        let data = std::env::temp_dir().join(format!("openapi-{}", Uuid::new_v4()));
        let env: Vec<(&'static str, String)> = vec![
            ("AzureWebJobsStorage", Azurite::shared().connection_string()),
            ("STORAGE_TABLE_PREFIX", unique_table("o")),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_ADMIN_TENANT_ID", ADMIN_TENANT.into()),
            ("ENTRA_LOGIN_ENDPOINT", fake.login_url.clone()),
            ("GRAPH_ENDPOINT", fake.graph_url.clone()),
            ("ENTRA_CLIENT_SECRET", SECRET.into()),
            ("ENTRA_DEV_AUTH", "true".into()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
            ("CONNECTOR_SCOPES", "records.read,records.write".into()),
            ("LOG_LEVEL", "warn".into()),
        ];
        // before the handler starts: the first dev token makes the signing key
        let (code, admin) = run_to_exit(BIN, &["dev-token", "admin"], &env);
        assert_eq!(code, Some(0), "{admin}");
        let handler = HandlerProcess::start(binary, &["serve"], &env);
        World {
            handler,
            env,
            fake,
            data,
            admin: admin.trim().to_string(),
        }
    }

    fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["dev-token"];
        all.extend_from_slice(args);
        let (code, token) = run_to_exit(BIN, &all, &self.env);
        assert_eq!(code, Some(0), "{token}");
        token.trim().to_string()
    }
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = http
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_in_any_operation() {
    let binary = release_handler_built();
    let world = World::start(binary.to_str().unwrap()).await;
    let base = world.handler.base_url();
    let http = reqwest::Client::new();
    let admin = world.admin.clone();

    // a tenant the run works in, with a directory user, SCIM token and a grant
    let tenant = Uuid::new_v4();
    world
        .fake
        .add_tenant(&tenant.to_string(), "Contoso", "contoso.com");
    world.fake.consent(&tenant.to_string(), CLIENT_ID, 0);
    world.fake.populate(&tenant.to_string(), 3, 1, 2);
    let (s, _) = call(
        &http,
        &base,
        &admin,
        "POST",
        "/api/v1/tenants",
        json!({"tenant_id": tenant, "display_name": "Contoso"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // and one for offboarding to offboard
    let spare = Uuid::new_v4();
    let (s, _) = call(
        &http,
        &base,
        &admin,
        "POST",
        "/api/v1/tenants",
        json!({"tenant_id": spare, "display_name": "Fabrikam"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let token_tenant = Uuid::new_v4();
    let (s, _) = call(
        &http,
        &base,
        &admin,
        "POST",
        "/api/v1/tenants",
        json!({"tenant_id": token_tenant, "display_name": "Northwind"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, scim) = call(
        &http,
        &base,
        &admin,
        "POST",
        &format!("/api/v1/tenants/{tenant}/scim/token"),
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{scim}");
    let app = Uuid::new_v4();
    let (s, grant) = call(
        &http,
        &base,
        &admin,
        "POST",
        "/api/v1/access/grants",
        json!({"tenant_id": tenant, "kind": "service_principal", "client_id": app, "scopes": ["records.read"]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{grant}");
    let connector = world.token(&[
        "service-principal",
        "--tenant",
        &tenant.to_string(),
        "--client-id",
        &app.to_string(),
    ]);
    // a first round, so the directory has users and sync state
    let (s, round) = call(
        &http,
        &base,
        &admin,
        "POST",
        &format!("/api/v1/tenants/{tenant}/sync"),
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{round}");

    // a SCIM user and group, for the product's side of provisioning
    let scim_token = scim["token"].as_str().unwrap().to_string();
    let scim_base = format!("/api/scim/{tenant}/v2");
    let (s, scim_user) = call(
        &http,
        &base,
        &scim_token,
        "POST",
        &format!("{scim_base}/Users"),
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "provisioned@contoso.com", "active": true,
               "emails": [{"value": "provisioned@contoso.com", "type": "work", "primary": true}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{scim_user}");
    let (s, scim_group) = call(
        &http,
        &base,
        &scim_token,
        "POST",
        &format!("{scim_base}/Groups"),
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Provisioned"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{scim_group}");
    // the round done, a user of the synced directory
    let mut directory_user = None;
    for _ in 0..100 {
        let (_, page) = call(
            &http,
            &base,
            &admin,
            "GET",
            &format!("/api/v1/entra-id/users?tenant_id={tenant}&search=user"),
            Value::Null,
        )
        .await;
        directory_user = page["users"][0]["id"].as_str().map(str::to_string);
        if directory_user.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let directory_user = directory_user.expect("the first round synced users");

    let examples = env_or("SCHEMATHESIS_EXAMPLES", 25);
    let tools = openapi_tools();
    // kept after the run: the JUnit report and the requests and answers (a VCR cassette)
    let reports = repo().join("target/schemathesis");
    std::fs::create_dir_all(&reports).ok();
    // its caches go beside the reports, not into the source tree
    let output = Command::new(tools.join("schemathesis"))
        .current_dir(&reports)
        .arg("--config-file")
        .arg(repo().join("tests/openapi/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/api/openapi.json"))
        .args(["--url", &base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &env_or("SCHEMATHESIS_SEED", 1).to_string()])
        .args(["--workers", "2", "--no-color", "--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit,vcr", "--report-dir"])
        .arg(&reports)
        .env("ST_ADMIN_TOKEN", &admin)
        .env("ST_SCIM_TOKEN", &scim_token)
        .env("ST_SCIM_USER_ID", scim_user["id"].as_str().unwrap())
        .env("ST_SCIM_GROUP_ID", scim_group["id"].as_str().unwrap())
        .env("ST_DIRECTORY_USER_ID", &directory_user)
        .env("ST_CONNECTOR_TOKEN", &connector)
        .env("ST_TENANT_ID", tenant.to_string())
        .env("ST_SPARE_TENANT_ID", spare.to_string())
        .env("ST_TOKEN_TENANT_ID", token_tenant.to_string())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log_path = reports.join("output.txt");
    std::fs::write(&log_path, stdout.as_bytes()).ok();
    assert!(
        output.status.success(),
        "Schemathesis found failures (full output in {}):\n{}\n{}\nhandler output:\n{}",
        log_path.display(),
        stdout,
        String::from_utf8_lossy(&output.stderr),
        world.handler.output()
    );
}
