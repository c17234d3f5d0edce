//! Concurrent event writes share transactions on Azurite, and one bad event fails only
//! its own write.

use std::sync::Arc;

use audit::{Actor, AuditQuery, AuditStore, Event, TableAuditStore, Target};
use system_tests::{Azurite, unique_table};
use uuid::Uuid;

fn event(tenant: Uuid, i: usize) -> Event {
    Event::new(
        tenant,
        Actor::entra_provisioning(),
        "scim.user.update",
        Target::new("user", format!("user-{i}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_every_event_is_stored() {
    let client = Azurite::shared().client();
    let store = Arc::new(TableAuditStore::new(client.table(unique_table("gc"))));
    let tenant = Uuid::new_v4();
    // the day rows and the day's table exist before the burst
    store.append(&[event(tenant, 999)]).await.unwrap();
    let before = client.request_count();
    let writes = (0..40).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append(&[event(tenant, i)]).await })
    });
    for written in futures::future::join_all(writes).await {
        written.unwrap().unwrap();
    }
    let requests = client.request_count() - before;
    assert!(
        requests < 40,
        "40 concurrent writes took {requests} requests"
    );
    let page = store
        .page(tenant, &AuditQuery::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 41);
}

// A display name (or reason) past a Table string property's 32K characters made the
// event's row, and so its request, fail; in a shared transaction, every request with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_an_overlong_display_is_stored_shortened_beside_the_others() {
    let client = Azurite::shared().client();
    let store = Arc::new(TableAuditStore::new(client.table(unique_table("gc"))));
    let tenant = Uuid::new_v4();
    store.append(&[event(tenant, 999)]).await.unwrap();
    let writes = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut e = event(tenant, i);
            if i == 7 {
                e.target = Target::new("user", "user-7").display("x".repeat(40_000));
                e.outcome = audit::Outcome::failure(400, "y".repeat(40_000));
            }
            store.append(&[e]).await
        })
    });
    for written in futures::future::join_all(writes).await {
        written.unwrap().unwrap();
    }
    let page = store
        .page(tenant, &AuditQuery::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 21);
    let long = page
        .events
        .iter()
        .find(|e| e.target.id == "user-7")
        .unwrap();
    let display = long.target.display.as_deref().unwrap();
    assert!(
        display.len() < 2_000 && display.starts_with("xxx"),
        "{}",
        display.len()
    );
}

// Found in review: a job of many events whose changes are long (quotes, escaped twice over
// in the batch body) was split by operation count only, and a transaction of 100 such rows
// passed Table Storage's 4 MiB; an outbox backlog of them could then never be moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_events_with_long_changes_are_stored_in_transactions_under_the_size_limit() {
    let client = Azurite::shared().client();
    let store = TableAuditStore::new(client.table(unique_table("gcbig")));
    let tenant = Uuid::new_v4();
    let quotes = "\"".repeat(14_000);
    let events: Vec<Event> = (0..120)
        .map(|i| {
            event(tenant, i).change(audit::Change::new(
                "description",
                None,
                Some(serde_json::json!(quotes)),
            ))
        })
        .collect();
    store.append(&events).await.unwrap();
    let mut seen = 0;
    let mut cursor = None;
    loop {
        let page = store
            .page(tenant, &AuditQuery::default(), cursor.as_deref(), 100)
            .await
            .unwrap();
        seen += page.events.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 120);
}
