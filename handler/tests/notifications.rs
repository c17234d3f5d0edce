//! Notifications against a real local SMTP server (aiosmtpd with STARTTLS and AUTH,
//! started by the test tooling) and a local webhook receiver that checks the signature:
//! a thousand SCIM failures make one incident, one mail and one webhook call, and the
//! successes that bring the rate back under its threshold one recovery notice of each.
//!
//! Each test's handler polls its queues (`notifications`, `sync-tenants` and their poison
//! queues) on an Azurite queue service of its own, its tables being its own too (by
//! prefix, on the shared table service): no other test's handler takes its messages, so
//! the tests run side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Azurite, free_port, smtp_python, smtp_server_script, wait_for_port};
use uuid::Uuid;

/// The local SMTP server; its mails land in `out`.
struct Smtp {
    child: Child,
    port: u16,
    out: PathBuf,
    ca: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SMTP_USER: &str = "notifier";
const SMTP_PASSWORD: &str = "test-only-password";

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
fn throwaway_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "notification test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

fn start_smtp() -> Smtp {
    let dir = std::env::temp_dir().join(format!("smtp-{}", Uuid::new_v4()));
    let out = dir.join("mail");
    std::fs::create_dir_all(&out).unwrap();
    let (ca, cert, key) = throwaway_tls(&dir);
    let port = free_port();
    let child = Command::new(smtp_python())
        .arg(smtp_server_script())
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .args([SMTP_USER, SMTP_PASSWORD])
        .arg(&out)
        .stdout(Stdio::null())
        .spawn()
        .expect("the SMTP test server starts");
    wait_for_port(port, Duration::from_secs(20)).expect("the SMTP test server listens");
    Smtp {
        child,
        port,
        out,
        ca,
    }
}

impl Smtp {
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

/// Webhook calls received: (signature header, body).
type Calls = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn webhook_receiver() -> (u16, Calls) {
    use warp::Filter;
    let calls: Calls = Arc::default();
    let port = free_port();
    let kept = calls.clone();
    let route = warp::post()
        .and(warp::header::optional::<String>(
            "x-entra-connector-signature",
        ))
        .and(warp::body::bytes())
        .map(move |signature: Option<String>, body: bytes::Bytes| {
            kept.lock()
                .unwrap()
                .push((signature.unwrap_or_default(), body.to_vec()));
            warp::reply()
        });
    tokio::spawn(warp::serve(route).run(([127, 0, 0, 1], port)));
    (port, calls)
}

fn signed_by(secret: &str, body: &[u8], header: &str) -> bool {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    aws_lc_rs::hmac::verify(&key, body, &tag).is_ok()
}

async fn start_handler(smtp: &Smtp) -> Scim {
    let data = std::env::temp_dir().join(format!("notify-{}", Uuid::new_v4()));
    start_handler_in(smtp, &data).await
}

/// [`start_handler`] with its local data (the vault) in `data`.
async fn start_handler_in(smtp: &Smtp, data: &Path) -> Scim {
    // the SMTP password is read from the vault, as in Azure
    let vault = vault::LocalVault::new(data.join("vault"));
    use vault::Vault as _;
    vault
        .set_secret("smtp-password", SMTP_PASSWORD)
        .await
        .unwrap();
    Scim::start_on(
        Azurite::with_own_queues(),
        vec![
            ("LOCAL_DATA_DIR", data.display().to_string()),
            ("SMTP_HOST", "127.0.0.1".into()),
            ("SMTP_PORT", smtp.port.to_string()),
            ("SMTP_USERNAME", SMTP_USER.into()),
            ("SMTP_PASSWORD_SECRET_NAME", "smtp-password".into()),
            (
                "SMTP_FROM",
                "Entra connector <connector@example.com>".into(),
            ),
            ("SMTP_CA_FILE", smtp.ca.display().to_string()),
            // a failed message is retried when its hold runs out: the poison tests wait for
            // five attempts
            ("QUEUE_VISIBILITY_SECONDS", "3".into()),
            ("QUEUE_MAX_POLLING_SECONDS", "1".into()),
        ],
    )
    .await
}

async fn put_settings(s: &Scim, body: Value) -> Value {
    let r = s
        .http
        .put(format!(
            "{}/api/v1/tenants/{}/notifications",
            s.handler.base_url(),
            s.tenant
        ))
        .bearer_auth(&s.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..120 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_scim_failures_send_one_mail_and_one_webhook_then_one_recovery_of_each() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    let answer = put_settings(
        &s,
        json!({
            "emails": ["ops@contoso.com"],
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["scim_failing"],
            // so that a few dozen successes bring the rate back under it
            "scim_failure_rate_percent": 95,
        }),
    )
    .await;
    let secret = answer["webhook_secret"].as_str().unwrap().to_string();
    let (_, user) = s
        .call("POST", "/Users", Some(entra_user("eve@contoso.com", "eve")))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    // a PATCH Entra could send that this service refuses: 400 each time
    let bad = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Frobnicate", "path": "active", "value": false}],
    });
    for _ in 0..1000 {
        let (status, _) = s
            .call("PATCH", &format!("/Users/{id}"), Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    if tokio::time::timeout(
        Duration::from_secs(60),
        wait_for("the incident's mail", || !smtp.mails().is_empty()),
    )
    .await
    .is_err()
    {
        panic!("no mail; handler said:\n{}", s.handler.output());
    }
    wait_for("the incident's webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    // the repeats went into the incident, not into more notices
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(calls.lock().unwrap().len(), 1);
    let mail = &smtp.mails()[0];
    assert!(mail.contains("scim_failing: failing"), "{mail}");
    assert!(mail.contains("ops@contoso.com"));

    let good = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": false}],
    });
    let succeed = |n: usize| {
        let (s, id, good) = (&s, &id, &good);
        async move {
            for _ in 0..n {
                let (status, _) = s
                    .call("PATCH", &format!("/Users/{id}"), Some(good.clone()))
                    .await;
                assert_eq!(status, StatusCode::OK);
            }
        }
    };
    // 1,000 failures of 1,011 requests are still over 95 %: no recovery yet
    succeed(10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smtp.mails().len(),
        1,
        "a success alone does not end the incident"
    );
    // 1,000 of 1,061: under 95 %
    succeed(50).await;
    wait_for("the recovery mail", || smtp.mails().len() == 2).await;
    wait_for("the recovery webhook", || calls.lock().unwrap().len() == 2).await;
    let mails = smtp.mails();
    assert!(mails[1].contains("recovered"), "{}", mails[1]);
    assert!(mails[1].contains("1000 failures"), "{}", mails[1]);

    let calls = calls.lock().unwrap().clone();
    for (signature, body) in &calls {
        assert!(signed_by(&secret, body, signature), "the signature checks");
        assert!(!signed_by("another secret", body, signature));
    }
    let opened: Value = serde_json::from_slice(&calls[0].1).unwrap();
    assert_eq!(opened["notice"], "opened");
    assert_eq!(opened["kind"], "scim_failing");
    let recovered: Value = serde_json::from_slice(&calls[1].1).unwrap();
    assert_eq!(recovered["notice"], "recovered");
    assert_eq!(recovered["incident"]["failures"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_scim_failure_rate_above_the_threshold_opens_one_incident_and_never_recovers() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    put_settings(
        &s,
        json!({
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["scim_failing"],
        }),
    )
    .await;
    let (_, user) = s
        .call("POST", "/Users", Some(entra_user("eve@contoso.com", "eve")))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let patch = |op: &str| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": op, "path": "active", "value": true}],
        })
    };
    // one request in five fails: 20 %, over the default 10 %, with successes in between
    for i in 0..200 {
        let (op, expected) = match i % 5 {
            0 => ("Frobnicate", StatusCode::BAD_REQUEST),
            _ => ("Replace", StatusCode::OK),
        };
        let (status, _) = s
            .call("PATCH", &format!("/Users/{id}"), Some(patch(op)))
            .await;
        assert_eq!(status, expected);
    }
    wait_for("the incident's webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let notices: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            format!(
                "{} {}",
                v["notice"].as_str().unwrap(),
                v["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(notices, vec!["opened scim_failing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_button_mails_and_calls_the_webhook_and_settings_refuse_plain_http() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    let url = format!(
        "{}/api/v1/tenants/{}/notifications",
        s.handler.base_url(),
        s.tenant
    );
    let r = s
        .http
        .put(&url)
        .bearer_auth(&s.admin)
        .json(&json!({"webhook_url": "http://hooks.example.com/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer = put_settings(
        &s,
        json!({
            "emails": ["ops@contoso.com"],
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
        }),
    )
    .await;
    let secret = answer["webhook_secret"].as_str().unwrap().to_string();
    let shown: Value = s
        .http
        .get(&url)
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["webhook_secret_set"], true);
    assert!(shown.get("webhook_secret").is_none(), "shown once only");
    let r = s
        .http
        .post(format!("{url}/test"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(smtp.mails().len(), 1);
    assert!(smtp.mails()[0].contains("test notification"));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert!(signed_by(&secret, &calls[0].1, &calls[0].0));
    // the settings change is in the audit trail, the secret only as changed
    let r = s
        .http
        .get(format!(
            "{}/api/v1/tenants/{}/audit?action=notifications.",
            s.handler.base_url(),
            s.tenant
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("webhook_secret"));
    assert!(!text.contains(&secret));
}

/// The tenant's audit events of `action` (a prefix), newest first.
async fn audit_of(s: &Scim, tenant: Uuid, action: &str) -> Vec<Value> {
    let page: Value = s
        .http
        .get(format!(
            "{}/api/v1/tenants/{tenant}/audit?action={action}",
            s.handler.base_url()
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Waits (up to 90 s) until `tenant` has `count` `queue.poison` events.
async fn poison_events(s: &Scim, tenant: Uuid, count: usize) -> Vec<Value> {
    for _ in 0..180 {
        let events = audit_of(s, tenant, "queue.poison").await;
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "no {count} queue.poison events for {tenant}; handler said:\n{}",
        s.handler.output()
    );
}

/// The queue `name` of `s`'s own queue service, created if missing.
async fn queue(s: &Scim, name: &str) -> queues::Queue {
    let q = s.storage.queues().queue(name).unwrap();
    q.create_if_missing().await.unwrap();
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_sync_message_is_recorded_and_notified_once_and_a_poisoned_notice_only_recorded()
{
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    put_settings(
        &s,
        json!({
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["poison_message"],
        }),
    )
    .await;
    // no app credential is configured: the tenant's sync fails on every attempt
    queue(&s, "sync-tenants")
        .await
        .send_json(&json!({"tenant_id": s.tenant, "reason": "due"}))
        .await
        .unwrap();
    // a notice NotificationDelivery cannot read fails on every attempt too
    queue(&s, "notifications")
        .await
        .send_json(&json!({"tenant": s.tenant, "what": "not a notice"}))
        .await
        .unwrap();
    let events = poison_events(&s, s.tenant, 2).await;
    let by_queue = |q: &str| {
        events
            .iter()
            .find(|e| e["outcome"]["code"] == q)
            .unwrap_or_else(|| panic!("no queue.poison of {q}: {events:?}"))
            .clone()
    };
    let sync = by_queue("sync-tenants");
    assert_eq!(sync["outcome"]["status"], "failure", "{sync}");
    assert_eq!(sync["target"]["type"], "tenant");
    assert_eq!(sync["target"]["id"], s.tenant.to_string());
    assert_eq!(sync["actor"]["id"], "SyncTenantPoison");
    let reason = sync["outcome"]["reason"].as_str().unwrap();
    assert!(reason.contains("sync-tenants-poison"), "{reason}");
    assert!(reason.contains("dequeue count"), "{reason}");
    by_queue("notifications");

    wait_for("the poison_message webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    // the poisoned notice opened nothing: one call, about the sync message
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let opened: Value = serde_json::from_slice(&calls[0].1).unwrap();
    assert_eq!(opened["notice"], "opened");
    assert_eq!(opened["kind"], "poison_message");
    assert_eq!(opened["tenant"], s.tenant.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_that_is_not_json_is_recorded_for_the_deployment_and_taken_off_the_queue()
{
    let smtp = start_smtp();
    let s = start_handler(&smtp).await;
    let admin_tenant: Uuid = "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap();
    let marker = Uuid::new_v4().to_string();
    queue(&s, "sync-tenants-poison")
        .await
        .send_text(
            &queues::encoding::encode_text(&format!("not json {marker}")),
            None,
        )
        .await
        .unwrap();
    let events = poison_events(&s, admin_tenant, 1).await;
    let event = &events[0];
    assert_eq!(event["outcome"]["status"], "failure", "{event}");
    assert_eq!(event["outcome"]["code"], "sync-tenants");
    assert_eq!(event["target"]["type"], "queue");
    assert!(
        event["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("names no tenant"),
        "{event}"
    );
    // it succeeded on its first attempt: nothing left to poison the poison queue with
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["sync-tenants-poison", "sync-tenants-poison-poison"] {
        let left = queue(&s, name).await.peek(32).await.unwrap();
        assert!(
            !left.iter().any(|m| m.text.contains(&marker)
                || queues::encoding::decode_text(&m.text).is_ok_and(|t| t.contains(&marker))),
            "{name} still holds it"
        );
    }
}

/// A self-signed certificate that expires `days` from now, DER.
fn expiring_in_days(days: i64) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "about to expire");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    params.self_signed(&key).unwrap().der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_expiring_within_30_days_notifies_once_and_its_renewal_recovers() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    put_settings(
        &s,
        json!({
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["certificate_expiring"],
        }),
    )
    .await;
    let t = s.tenant;
    let r = s
        .http
        .post(format!(
            "{}/api/v1/tenants/{t}/pki/ca",
            s.handler.base_url()
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // a valid CA: nothing to say
    s.housekeeping().await;
    assert!(audit_of(&s, t, "certificate.").await.is_empty());

    // the CA's certificate in storage now expires in 10 days
    let table = s
        .storage
        .client()
        .table(format!("{}Certificates", s.prefix));
    let row = table.get(&t.to_string(), "ca").await.unwrap();
    let renewed = match row.get("Der") {
        Some(tables::Value::Binary(b)) => b.clone(),
        other => panic!("no CA DER: {other:?}"),
    };
    let set_der = |der: Vec<u8>| {
        let table = table.clone();
        async move {
            table
                .merge(
                    &tables::Entity::new(t.to_string(), "ca")
                        .with("Der", tables::Value::Binary(der)),
                    tables::IfMatch::Any,
                )
                .await
                .unwrap();
        }
    };
    set_der(expiring_in_days(10)).await;
    // checked a moment ago and found nothing: not checked again before a day has passed
    s.housekeeping().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(calls.lock().unwrap().is_empty());
    assert!(audit_of(&s, t, "certificate.").await.is_empty());

    // a day later (the check's last run moved back a day)
    let runs = s.storage.client().table(format!("{}Runs", s.prefix));
    // (upserted: a handler that never checked has no such row, and must still fail below)
    runs.upsert_merge(&tables::Entity::new("CertificateExpiry", "latest").with(
        "StartedAt",
        time::OffsetDateTime::now_utc() - time::Duration::hours(25),
    ))
    .await
    .unwrap();
    s.housekeeping().await;
    wait_for("the certificate_expiring webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    let events = audit_of(&s, t, "certificate.expiring").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"]["status"], "failure");
    assert_eq!(events[0]["target"]["type"], "certificate");
    let reason = events[0]["outcome"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("issuing CA") && reason.contains("(9 days left)"),
        "{reason}"
    );
    // while it is expiring every run checks, counted into the incident: no second notice
    s.housekeeping().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(
        audit_of(&s, t, "certificate.expiring").await.len(),
        1,
        "one event a day"
    );

    // renewed: the next run closes the incident
    set_der(renewed).await;
    s.housekeeping().await;
    wait_for("the recovery webhook", || calls.lock().unwrap().len() == 2).await;
    let calls = calls.lock().unwrap().clone();
    let opened: Value = serde_json::from_slice(&calls[0].1).unwrap();
    assert_eq!(opened["notice"], "opened");
    assert_eq!(opened["kind"], "certificate_expiring");
    let recovered: Value = serde_json::from_slice(&calls[1].1).unwrap();
    assert_eq!(recovered["notice"], "recovered");
    assert_eq!(recovered["kind"], "certificate_expiring");
    assert_eq!(recovered["incident"]["failures"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_scim_failures_among_many_successes_open_no_incident_until_the_rate_is_crossed() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let s = start_handler(&smtp).await;
    let answer = put_settings(
        &s,
        json!({
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["scim_failing"],
        }),
    )
    .await;
    assert_eq!(answer["scim_failure_rate_percent"], 10, "the default");
    assert_eq!(answer["scim_min_requests"], 10);
    let (_, user) = s
        .call("POST", "/Users", Some(entra_user("eve@contoso.com", "eve")))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let patch = |op: &str, value: bool| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": op, "path": "active", "value": value}],
        })
    };
    // 5 failures in 100 requests: 5 %, under the default 10 %
    for i in 0..99 {
        let (op, expected) = match i % 20 {
            10 => ("Frobnicate", StatusCode::BAD_REQUEST),
            _ => ("Replace", StatusCode::OK),
        };
        let (status, _) = s
            .call(
                "PATCH",
                &format!("/Users/{id}"),
                Some(patch(op, i % 2 == 0)),
            )
            .await;
        assert_eq!(status, expected);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        calls.lock().unwrap().is_empty(),
        "a few failures are no incident"
    );
    // 11 more failures: over 10 % from the 6th on
    for _ in 0..11 {
        let (status, _) = s
            .call(
                "PATCH",
                &format!("/Users/{id}"),
                Some(patch("Frobnicate", true)),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    wait_for("the incident's webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let opened: Value = serde_json::from_slice(&calls[0].1).unwrap();
    assert_eq!(opened["notice"], "opened");
    assert_eq!(opened["kind"], "scim_failing");
    // it opened at the 6th more failure (11 of 106, over 10 %) with every failure of the
    // window in it, not only the one that crossed the rate
    assert_eq!(opened["incident"]["failures"], 11, "{opened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_app_credential_expiring_notifies_the_tenants_whose_graph_calls_use_it() {
    let smtp = start_smtp();
    let (hook_port, calls) = webhook_receiver().await;
    let data = std::env::temp_dir().join(format!("notify-{}", Uuid::new_v4()));
    // the deployment's app credential (as POST /api/v1/app-credential/certificate stores
    // it in the local vault) expires in 20 days
    let certificates = data.join("vault").join("certificates");
    std::fs::create_dir_all(&certificates).unwrap();
    std::fs::write(
        certificates.join("app-credential-global"),
        expiring_in_days(20),
    )
    .unwrap();
    let s = start_handler_in(&smtp, &data).await;
    put_settings(
        &s,
        json!({
            "webhook_url": format!("http://127.0.0.1:{hook_port}/hook"),
            "notify_on": ["certificate_expiring"],
        }),
    )
    .await;
    s.housekeeping().await;
    wait_for("the certificate_expiring webhook", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    let opened: Value = serde_json::from_slice(&calls.lock().unwrap()[0].1).unwrap();
    assert_eq!(opened["notice"], "opened");
    assert_eq!(opened["kind"], "certificate_expiring");
    let events = audit_of(&s, s.tenant, "certificate.expiring").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["target"]["display"],
        "service's app credential (global)"
    );
    let reason = events[0]["outcome"]["reason"].as_str().unwrap();
    assert!(reason.contains("(19 days left)"), "{reason}");
}

// Found in review: one tenant whose certificates could not be read ended the check, so the
// tenants after it were never checked (and, no run being recorded, every run stopped there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_ca_cannot_be_read_does_not_keep_the_next_tenant_from_being_checked() {
    let smtp = start_smtp();
    let s = start_handler(&smtp).await;
    let other = Uuid::new_v4();
    let r = s
        .http
        .post(format!("{}/api/v1/tenants", s.handler.base_url()))
        .bearer_auth(&s.admin)
        .json(&json!({"tenant_id": other, "display_name": "Fabrikam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for t in [s.tenant, other] {
        let r = s
            .http
            .post(format!(
                "{}/api/v1/tenants/{t}/pki/ca",
                s.handler.base_url()
            ))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // tenants are checked in the order of their ids: the first one's CA is unreadable,
    // the second one's expires in 10 days
    let (first, second) = match s.tenant.to_string() < other.to_string() {
        true => (s.tenant, other),
        false => (other, s.tenant),
    };
    let table = s
        .storage
        .client()
        .table(format!("{}Certificates", s.prefix));
    for (t, der) in [
        (first, b"not a certificate".to_vec()),
        (second, expiring_in_days(10)),
    ] {
        table
            .merge(
                &tables::Entity::new(t.to_string(), "ca").with("Der", tables::Value::Binary(der)),
                tables::IfMatch::Any,
            )
            .await
            .unwrap();
    }
    // the run fails (a tenant was not checked), but only after checking the rest
    let body = r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
    let r = s
        .http
        .post(format!("{}/Housekeeping", s.handler.base_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let answer = r.text().await.unwrap();
    assert!(answer.contains(&first.to_string()), "{answer}");
    let events = audit_of(&s, second, "certificate.expiring").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"]["status"], "failure");
    assert!(audit_of(&s, first, "certificate.expiring").await.is_empty());
}

// Found in review: without an InsertionTime the event's time was the attempt's, so each
// retry of the poison function stored the poison message once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_without_an_insertion_time_is_recorded_once_however_often_it_is_retried() {
    let smtp = start_smtp();
    let s = start_handler(&smtp).await;
    let message = json!({"tenant_id": s.tenant, "reason": "due"}).to_string();
    let id = Uuid::new_v4();
    for attempt in 1..=2 {
        // as the host sends it, but with no InsertionTime in the metadata
        let invocation = json!({
            "Data": {"msg": message},
            "Metadata": {"Id": id.to_string(), "DequeueCount": attempt.to_string()},
        });
        let r = s
            .http
            .post(format!("{}/SyncTenantPoison", s.handler.base_url()))
            .json(&invocation)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, StatusCode::OK, "{}", r.text().await.unwrap());
        // a later attempt is a later time
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = audit_of(&s, s.tenant, "queue.poison").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains(&id.to_string())
    );
}
