//! The built `handler` binary as a process, spoken to exactly as the Functions host and
//! a user would, with a real Azurite behind it.

use std::time::Duration;

use serde_json::Value;
use system_tests::{
    Azurite, HOST_TIMER_BODY, HandlerProcess, free_port, run_to_exit, unique_table,
};

const BIN: &str = env!("CARGO_BIN_EXE_handler");

fn start(mode: &str, extra: &[(&str, String)]) -> HandlerProcess {
    let mut env = vec![
        ("AzureWebJobsStorage", Azurite::shared().connection_string()),
        ("STORAGE_TABLE_PREFIX", unique_table("t")),
        (
            "ENTRA_CLIENT_ID",
            "6e74172b-be56-4843-9ff4-e66a39bb12e3".to_string(),
        ),
        (
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47".to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    HandlerProcess::start(BIN, &[mode], &env)
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn raw_exchange(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the handler answers")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn health_then_a_host_timer_invocation_then_health_shows_the_run() {
    let handler = start("host", &[]);
    let base = handler.base_url();

    let (status, health) = get_json(&format!("{base}/api/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["storage"]["reachable"], true);
    assert_eq!(health["mode"], "host");
    assert!(health["housekeeping"].is_null(), "no run yet: {health}");

    let (status, answer) = post(
        &format!("{base}/Housekeeping"),
        HOST_TIMER_BODY,
        &[
            ("content-type", "application/json"),
            (
                "x-azure-functions-invocationid",
                "5e2ad1c4-0000-4000-8000-000000000001",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Outputs"].is_object(), "{answer}");
    assert!(answer["ReturnValue"].is_null());
    // its summary line (the certificate check logs its own line before it)
    assert!(
        answer["Logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with("housekeeping:"))),
        "{answer}"
    );

    let (status, health) = get_json(&format!("{base}/api/health")).await;
    assert_eq!(status, 200);
    let run = &health["housekeeping"];
    assert_eq!(run["outcome"], "succeeded", "{health}");
    assert_eq!(run["past_due"], false);
    assert!(run["last_run_at"].as_str().unwrap().starts_with("20"));
}

#[tokio::test]
async fn a_chunked_invocation_body_is_read_like_any_other() {
    let handler = start("host", &[]);
    let body = HOST_TIMER_BODY.as_bytes();
    let (first, rest) = body.split_at(40);
    let mut request = b"POST /Housekeeping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in [first, rest] {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(handler.port, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ReturnValue\":null"), "{answer}");
}

#[tokio::test]
async fn timer_payload_variants_from_other_hosts_are_accepted() {
    let handler = start("host", &[]);
    let url = format!("{}/Housekeeping", handler.base_url());
    for body in [
        r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#,
        r#"{"Data":{"timer":{"ScheduleStatus":{"Last":"11/24/2026 10:00:00","Next":"11/24/2026 10:15:00","LastUpdated":"11/24/2026 10:00:00"},"IsPastDue":true}},"Metadata":{"sys":{"UtcNow":"2026-11-24T10:15:00.0123456Z"}}}"#,
        r#"{"Data":{"timer":{"ScheduleStatus":{"Last":"0001-01-01T00:00:00","Next":"2026-11-24T10:15:00"},"IsPastDue":false}}}"#,
    ] {
        let (status, answer) = post(&url, body, &[]).await;
        assert_eq!(status, 200, "{body}: {answer}");
    }
    let (_, health) = get_json(&format!("{}/api/health", handler.base_url())).await;
    assert_eq!(
        health["housekeeping"]["past_due"], false,
        "latest run was on time: {health}"
    );
}

#[tokio::test]
async fn bad_invocations_get_clear_json_errors_and_the_handler_keeps_serving() {
    let handler = start("host", &[]);
    let base = handler.base_url();
    let cases: [(&str, &str, u16, &str); 6] = [
        ("/NoSuchFunction", "{}", 404, "unknown_function"),
        ("/Housekeeping", "not json", 400, "bad_payload"),
        ("/Housekeeping", "[]", 400, "bad_payload"),
        ("/Housekeeping", r#"{"Data":{}}"#, 400, "bad_payload"),
        (
            "/Housekeeping",
            r#"{"Data":{"timer":"yesterday"}}"#,
            400,
            "bad_payload",
        ),
        ("/Health", "{}", 400, "bad_payload"),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = post(&format!("{base}{path}"), body, &[]).await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert_eq!(answer["error"], code, "{path} {body}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Announce a body over the limit without sending it: the answer must come from the
    // Content-Length alone (a client still writing 5 MiB could see a reset instead).
    let head = format!(
        "POST /Housekeeping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        5 * 1024 * 1024
    );
    let answer = raw_exchange(handler.port, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let (got, answer) = get_json(&format!("{base}/api/nothing-here")).await;
    assert_eq!((got, answer["error"].as_str()), (404, Some("not_found")));
    let (got, _) = get_json(&format!("{base}/api/health")).await;
    assert_eq!(got, 200, "still serving");
}

#[tokio::test]
async fn health_is_503_when_storage_is_unreachable() {
    let nowhere = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
        system_tests::DEV_KEY,
        free_port()
    );
    let handler = HandlerProcess::start(
        BIN,
        &["host"],
        &[
            ("AzureWebJobsStorage", nowhere),
            (
                "ENTRA_CLIENT_ID",
                "6e74172b-be56-4843-9ff4-e66a39bb12e3".to_string(),
            ),
            (
                "ENTRA_ADMIN_TENANT_ID",
                "72f988bf-86f1-41af-91ab-2d7cd011db47".to_string(),
            ),
        ],
    );
    let (status, health) = get_json(&format!("{}/api/health", handler.base_url())).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["storage"]["reachable"], false);
    // a failed housekeeping run is a failed invocation for the host (non-2xx), with its logs
    let (status, answer) = post(
        &format!("{}/Housekeeping", handler.base_url()),
        HOST_TIMER_BODY,
        &[],
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"], "function_failed");
    assert!(answer["Logs"].as_array().is_some_and(|l| !l.is_empty()));
}

#[test]
fn missing_or_malformed_settings_stop_startup_with_one_line_naming_the_setting() {
    let dev = (
        "AzureWebJobsStorage",
        "UseDevelopmentStorage=true".to_string(),
    );
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "AzureWebJobsStorage"),
        (
            vec![("AzureWebJobsStorage", "AccountName=a;AccountKey=%%%".into())],
            "AzureWebJobsStorage",
        ),
        (
            vec![
                dev.clone(),
                ("FUNCTIONS_CUSTOMHANDLER_PORT", "seventy".into()),
            ],
            "FUNCTIONS_CUSTOMHANDLER_PORT",
        ),
        (
            vec![dev.clone(), ("LOG_FORMAT", "yaml".into())],
            "LOG_FORMAT",
        ),
    ];
    for (env, setting) in cases {
        let (code, output) = run_to_exit(BIN, &["serve"], &env);
        assert_eq!(code, Some(2), "{output}");
        assert_eq!(output.trim().lines().count(), 1, "one line: {output}");
        assert!(output.contains(&format!("setting {setting}:")), "{output}");
        assert!(!output.contains("%%%"), "the value is not echoed: {output}");
    }
    let (code, output) = run_to_exit(BIN, &["frobnicate"], &[]);
    assert_eq!(code, Some(2));
    assert!(output.contains("usage"));
    let (code, output) = run_to_exit(BIN, &["version"], &[]);
    assert_eq!(
        (code, output.trim()),
        (
            Some(0),
            format!("handler {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
}

#[tokio::test]
async fn json_logs_carry_the_invocation_id_and_never_secrets() {
    let secret_token = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
    let handler = start(
        "serve",
        &[("LOG_FORMAT", "json".into()), ("LOG_LEVEL", "trace".into())],
    );
    let base = handler.base_url();
    let auth = format!("Bearer {secret_token}");
    let invocation_id = "0b6a2a51-93bd-4f4a-9a7f-111111111111";
    post(
        &format!("{base}/Housekeeping"),
        HOST_TIMER_BODY,
        &[
            ("authorization", &auth),
            ("x-azure-functions-invocationid", invocation_id),
        ],
    )
    .await;
    let _ = reqwest::Client::new()
        .get(format!("{base}/api/health"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = handler.output();
    assert!(!output.is_empty());
    for line in output.lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            parsed["timestamp"].is_string() && parsed["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        output
            .lines()
            .any(|l| l.contains(invocation_id) && l.contains("invocation succeeded")),
        "the invocation's events carry its id:\n{output}"
    );
    assert!(
        !output.contains(secret_token),
        "a token leaked into the logs"
    );
    assert!(
        !output.contains(&system_tests::DEV_KEY[..20]),
        "the account key leaked into the logs"
    );
    assert!(
        !output
            .to_ascii_lowercase()
            .contains("sharedkey devstoreaccount1:"),
        "a storage signature leaked"
    );
}

#[tokio::test]
async fn identity_based_storage_uses_the_managed_identity_token() {
    use std::sync::{Arc, Mutex};
    use warp::Filter;

    // One loopback server plays App Service's managed identity endpoint and Table Storage.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let msi_seen = seen.clone();
    let msi = warp::path!("msi" / "token")
        .and(warp::query::raw())
        .and(warp::header::optional::<String>("x-identity-header"))
        .map(move |query: String, secret: Option<String>| {
            msi_seen
                .lock()
                .unwrap()
                .push(format!("msi {query} secret={}", secret.unwrap_or_default()));
            let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
            warp::reply::json(&serde_json::json!({
                "access_token": "storage-token-from-identity", "expires_on": expires.to_string(),
                "resource": "https://storage.azure.com", "token_type": "Bearer",
                "client_id": "11111111-2222-3333-4444-555555555555",
            }))
        });
    let table_seen = seen.clone();
    let table = warp::path("acct")
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .map(move |tail: warp::path::Tail, auth: Option<String>| {
            table_seen.lock().unwrap().push(format!("table {} auth={}", tail.as_str(), auth.unwrap_or_default()));
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"odata.error": {"code": "ResourceNotFound", "message": {"value": "not found"}}})),
                warp::http::StatusCode::NOT_FOUND,
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(msi.or(table)).incoming(listener).run());

    let handler = HandlerProcess::start(
        BIN,
        &["host"],
        &[
            (
                "AzureWebJobsStorage__tableServiceUri",
                format!("http://127.0.0.1:{port}/acct"),
            ),
            ("AzureWebJobsStorage__credential", "managedidentity".into()),
            (
                "AzureWebJobsStorage__clientId",
                "11111111-2222-3333-4444-555555555555".into(),
            ),
            (
                "IDENTITY_ENDPOINT",
                format!("http://127.0.0.1:{port}/msi/token"),
            ),
            ("IDENTITY_HEADER", "test-identity-secret".into()),
            (
                "ENTRA_CLIENT_ID",
                "6e74172b-be56-4843-9ff4-e66a39bb12e3".into(),
            ),
            (
                "ENTRA_ADMIN_TENANT_ID",
                "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            ),
        ],
    );
    let (status, health) = get_json(&format!("{}/api/health", handler.base_url())).await;
    assert_eq!(status, 200, "{health}; seen: {:?}", seen.lock().unwrap());
    let seen = seen.lock().unwrap().clone();
    let msi_call = seen
        .iter()
        .find(|s| s.starts_with("msi "))
        .expect("the identity endpoint was asked");
    assert!(
        msi_call.contains("resource=https%3A%2F%2Fstorage.azure.com"),
        "{msi_call}"
    );
    assert!(
        msi_call.contains("client_id=11111111-2222-3333-4444-555555555555"),
        "{msi_call}"
    );
    assert!(
        msi_call.ends_with("secret=test-identity-secret"),
        "{msi_call}"
    );
    let table_call = seen
        .iter()
        .find(|s| s.starts_with("table "))
        .expect("table storage was asked");
    assert!(
        table_call.ends_with("auth=Bearer storage-token-from-identity"),
        "{table_call}"
    );
    assert!(
        !handler.output().contains("storage-token-from-identity"),
        "the token is not logged"
    );
}
