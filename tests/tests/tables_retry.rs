//! The Table client's retry budget and timeouts, against a loopback server that misbehaves
//! on purpose (Azurite cannot be made to answer 503 or hang).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tables::{ClientOptions, Entity, Error, StorageAccount, TableServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the fake service answers every request.
#[derive(Clone, Copy)]
enum Behaviour {
    Status(u16),
    /// 503 for the first N requests, then 200 with an entity.
    UnavailableThenOk(usize),
    Hang,
}

async fn fake_service(behaviour: Behaviour) -> (u16, Arc<AtomicUsize>) {
    let (port, hits, _) = recording_service(behaviour).await;
    (port, hits)
}

/// Like `fake_service`, also keeping the head of every request.
async fn recording_service(
    behaviour: Behaviour,
) -> (u16, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = heads.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // one request per read is enough for these small requests
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let seen = counter.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    recorded.lock().unwrap().push(
                        head.split("\r\n\r\n")
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                    let (status, body) = match behaviour {
                        Behaviour::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Behaviour::Status(s) => (
                            s,
                            r#"{"odata.error":{"code":"ServerBusy","message":{"value":"busy"}}}"#,
                        ),
                        Behaviour::UnavailableThenOk(n) if seen < n => (503, "{}"),
                        Behaviour::UnavailableThenOk(_) => {
                            (200, r#"{"PartitionKey":"p","RowKey":"r","n":1}"#)
                        }
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nETag: W/\"1\"\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits, heads)
}

fn client(port: u16, attempt_timeout: Duration) -> TableServiceClient {
    let options = ClientOptions {
        attempt_timeout,
        max_attempts: 3,
        total_budget: Duration::from_secs(3),
        initial_backoff: Duration::from_millis(50),
    };
    TableServiceClient::with_options(
        StorageAccount::development("127.0.0.1", port, port),
        options,
    )
    .unwrap()
}

#[tokio::test]
async fn unavailable_is_retried_within_the_budget_then_reported() {
    let (port, hits) = fake_service(Behaviour::Status(503)).await;
    let started = Instant::now();
    let err = client(port, Duration::from_secs(2))
        .table("T1abc")
        .get("p", "r")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "three attempts in all");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_transient_503_is_invisible_to_the_caller() {
    let (port, hits) = fake_service(Behaviour::UnavailableThenOk(2)).await;
    let client = client(port, Duration::from_secs(2));
    let entity = client.table("T1abc").get("p", "r").await.unwrap();
    assert_eq!(entity.get_i64("n"), Some(1));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(client.request_count(), 3, "retries count as requests");
}

#[tokio::test]
async fn conflicts_and_bad_requests_are_not_retried() {
    for status in [400, 403, 404, 409, 412] {
        let (port, hits) = fake_service(Behaviour::Status(status)).await;
        let err = client(port, Duration::from_secs(2))
            .table("T1abc")
            .insert(&Entity::new("p", "r"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(status), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "status {status} sent once");
    }
}

#[tokio::test]
async fn a_hanging_service_times_out_and_inserts_are_not_resent() {
    let (port, hits) = fake_service(Behaviour::Hang).await;
    let started = Instant::now();
    let err = client(port, Duration::from_millis(200))
        .table("T1abc")
        .insert(&Entity::new("p", "r"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "an insert that may have landed is not sent twice"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let (port, hits) = fake_service(Behaviour::Hang).await;
    let err = client(port, Duration::from_millis(200))
        .table("T1abc")
        .get("p", "r")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "reads are retried after a timeout"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_transport_error_after_bounded_retries() {
    let port = system_tests::free_port();
    let started = Instant::now();
    let err = client(port, Duration::from_secs(1))
        .table("T1abc")
        .get("p", "r")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A stand-in for a managed identity: hands out a fixed token and counts the calls.
#[derive(Debug, Default)]
struct FixedToken {
    scopes: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| s.to_string()));
        Ok(azure_core::credentials::AccessToken::new(
            "test-access-token",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

#[tokio::test]
async fn identity_based_connections_send_a_storage_bearer_token() {
    let (port, _, heads) = recording_service(Behaviour::UnavailableThenOk(0)).await;
    let credential = Arc::new(FixedToken::default());
    let endpoint = url::Url::parse(&format!("http://127.0.0.1:{port}/acct")).unwrap();
    let account = StorageAccount::with_token(endpoint, None, credential.clone());
    let client = TableServiceClient::new(account).unwrap();
    client.table("T1abc").get("p", "r").await.unwrap();
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.contains("authorization: bearer test-access-token"),
        "{head}"
    );
    assert!(!head.contains("sharedkey"));
    assert_eq!(
        *credential.scopes.lock().unwrap(),
        ["https://storage.azure.com/.default"]
    );

    let remote = url::Url::parse("http://example.com/acct").unwrap();
    let refused = TableServiceClient::new(StorageAccount::with_token(remote, None, credential));
    assert!(
        matches!(refused, Err(Error::Invalid(_))),
        "bearer tokens never go over plain http to a remote host"
    );
}
