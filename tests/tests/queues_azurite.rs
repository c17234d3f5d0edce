//! The queue layer against a real Azurite queue service: Shared Key signing, the host's
//! base64 JSON encoding, holds, renewals and deletes.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use system_tests::Azurite;

/// A queue name no other test uses.
fn unique_queue(prefix: &str) -> String {
    system_tests::unique_table(prefix).to_ascii_lowercase()
}

async fn fresh_queue(prefix: &str) -> queues::Queue {
    let queue = Azurite::shared()
        .queues()
        .queue(&unique_queue(prefix))
        .unwrap();
    queue.create_if_missing().await.unwrap();
    queue
}

#[tokio::test]
async fn a_message_written_by_our_client_is_base64_json_and_reads_back() {
    let queue = fresh_queue("roundtrip").await;
    queue
        .create_if_missing()
        .await
        .expect("creating twice is fine");
    let message = json!({"tenant_id": "t1", "full": true, "name": "Zoë"});
    let sent = queue.send_json(&message).await.unwrap();

    let peeked = queue.peek(32).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].id, sent.id);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&peeked[0].text)
        .expect("stored text is base64, as the Functions host expects");
    let text = String::from_utf8(raw).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        message
    );

    let received = queue.receive(16, Duration::from_secs(30)).await.unwrap();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.json().unwrap(), message);
    assert_eq!(got.dequeue_count, 1);
    assert!(got.next_visible > got.inserted);
    assert!(got.expires > got.inserted);
    assert!(
        queue
            .receive(16, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "a held message is invisible"
    );
    queue.delete(got).await.unwrap();
    assert!(queue.peek(32).await.unwrap().is_empty());
    assert!(matches!(
        queue.delete(got).await,
        Err(queues::Error::MessageGone(_))
    ));
}

#[tokio::test]
async fn extending_a_hold_changes_the_pop_receipt_and_the_old_one_stops_working() {
    let queue = fresh_queue("extend").await;
    queue.send_json(&json!({"n": 1})).await.unwrap();
    let mut held = queue
        .receive(1, Duration::from_secs(2))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let before = held.clone();
    queue
        .extend(&mut held, Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(held.pop_receipt, before.pop_receipt);
    assert!(held.next_visible > before.next_visible);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        queue
            .receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "still held after the first hold would have run out"
    );
    assert!(matches!(
        queue.delete(&before).await,
        Err(queues::Error::MessageGone(_))
    ));
    queue.delete(&held).await.unwrap();
}

#[tokio::test]
async fn a_released_message_is_received_again_with_a_higher_dequeue_count() {
    let queue = fresh_queue("release").await;
    queue.send_json(&json!({"n": 2})).await.unwrap();
    let mut held = queue
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    queue.release(&mut held, Duration::ZERO).await.unwrap();
    let again = queue
        .receive(1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .expect("visible again at once");
    assert_eq!(again.id, held.id);
    assert_eq!(again.dequeue_count, 2);
    assert_eq!(queue.approximate_count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_wrong_account_key_is_refused() {
    let mut account = Azurite::shared().account();
    account.credential = tables::Credential::SharedKey {
        account: tables::account::DEV_ACCOUNT.into(),
        key: b"not the key".to_vec().into(),
    };
    let queue = queues::Queues::new(&account)
        .unwrap()
        .queue(&unique_queue("wrongkey"))
        .unwrap();
    let err = queue.create_if_missing().await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
}
