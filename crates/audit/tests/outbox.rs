//! Outbox rows on Azurite: an event committed with its change reaches the trail whether
//! its own process moves it or another process sweeps it up after a crash, once each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit::outbox::{self, Outbox};
use audit::{
    Actor, Audit, AuditQuery, AuditStore, Change, Event, EventObserver, TableAuditStore, Target,
};
use system_tests::{Azurite, unique_table};
use tables::{Entity, Operation, Query, Table};
use uuid::Uuid;

fn event(tenant: Uuid, i: usize) -> Event {
    Event::new(
        tenant,
        Actor::entra_provisioning(),
        "scim.user.update",
        Target::new("user", format!("user-{i}")).display(format!("user{i}@contoso.com")),
    )
    .change(Change::new(
        "name.familyName",
        Some(serde_json::json!("Old")),
        Some(serde_json::json!(format!("New {i}"))),
    ))
    .correlation(format!("request-{i}"))
}

/// A change's table (the SCIM table's stand-in) and the trail, each new.
async fn stores() -> (Table, Arc<TableAuditStore>, Audit) {
    let client = Azurite::shared().client();
    let changes = client.table(unique_table("ob"));
    changes.create_if_not_exists().await.unwrap();
    let store = Arc::new(TableAuditStore::new(client.table(unique_table("obtrail"))));
    let audit = Audit::new(store.clone());
    (changes, store, audit)
}

/// Commits a change row and its event's outbox row in one transaction, as a writer does.
async fn commit(changes: &Table, partition: &str, event: &Event) {
    changes
        .transact(&[
            Operation::UpsertReplace(
                Entity::new(partition, format!("user-{}", event.target.id)).with("V", 1i64),
            ),
            Operation::Insert(outbox::entity(event, partition)),
        ])
        .await
        .unwrap();
}

async fn outbox_rows(changes: &Table, partition: &str) -> usize {
    changes
        .query_all(Query::partition(partition))
        .await
        .unwrap()
        .iter()
        .filter(|e| outbox::is_outbox_row(&e.row_key))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_move_to_the_trail_whole_and_their_rows_go() {
    let (changes, store, audit) = stores().await;
    let tenant = Uuid::new_v4();
    let partition = tenant.to_string();
    let mover = Outbox::new(audit);
    let events: Vec<Event> = (0..30).map(|i| event(tenant, i)).collect();
    for e in &events {
        commit(&changes, &partition, e).await;
        mover.moved(&changes, &partition, e.clone());
    }
    mover.flush().await;
    let page = store
        .page(tenant, &AuditQuery::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 30);
    // the trail holds each event as it was committed
    let mut stored = page.events.clone();
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    let mut sent = events.clone();
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    for (a, b) in stored.iter().zip(&sent) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.target, b.target);
        assert_eq!(a.changes, b.changes);
        assert_eq!(a.correlation, b.correlation);
        assert_eq!(a.time, b.time);
    }
    assert_eq!(outbox_rows(&changes, &partition).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_dead_writer_left_are_swept_once_even_by_two_sweepers_at_once() {
    let (changes, store, audit) = stores().await;
    let tenant = Uuid::new_v4();
    let partition = tenant.to_string();
    // 250 committed events whose writer died before moving any (more than one sweep page)
    for i in 0..250 {
        commit(&changes, &partition, &event(tenant, i)).await;
    }
    // a neighbouring tenant's rows are not this sweep's
    let other = Uuid::new_v4();
    commit(&changes, &other.to_string(), &event(other, 0)).await;
    let (a, b) = (Outbox::new(audit.clone()), Outbox::new(audit));
    let (x, y) = tokio::join!(a.sweep(&changes, &partition), b.sweep(&changes, &partition));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x + y >= 250, "swept {x} + {y}");
    assert_eq!(outbox_rows(&changes, &partition).await, 0);
    assert_eq!(outbox_rows(&changes, &other.to_string()).await, 1);
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .page(tenant, &AuditQuery::default(), cursor.as_deref(), 100)
            .await
            .unwrap();
        for e in &page.events {
            assert!(seen.insert(e.id.clone()), "event {} twice", e.id);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    // nothing left: a sweep now moves nothing
    assert_eq!(a.sweep(&changes, &partition).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_moves_a_committed_row_and_reports_a_missing_one() {
    let (changes, store, audit) = stores().await;
    let tenant = Uuid::new_v4();
    let partition = tenant.to_string();
    let mover = Outbox::new(audit);
    let committed = event(tenant, 1);
    commit(&changes, &partition, &committed).await;
    assert!(
        mover
            .settle(&changes, &partition, &committed)
            .await
            .unwrap()
    );
    // the transaction of this one failed: it has no row and nothing is recorded
    let lost = event(tenant, 2);
    assert!(!mover.settle(&changes, &partition, &lost).await.unwrap());
    let page = store
        .page(tenant, &AuditQuery::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![committed.id.as_str()]);
    assert_eq!(outbox_rows(&changes, &partition).await, 0);
}

/// Counts the events observers are told of.
#[derive(Default)]
struct Counted(AtomicUsize);

impl EventObserver for Counted {
    fn recorded(&self, _event: &Event) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A change table and a mover whose recorder counts what its observers are told, with a
/// tenant and its partition.
async fn counted_mover() -> (Table, Arc<Counted>, Outbox, Uuid, String) {
    let (changes, _store, audit) = stores().await;
    let counted = Arc::new(Counted::default());
    let mover = Outbox::new(audit.with_observer(counted.clone()));
    let tenant = Uuid::new_v4();
    (changes, counted, mover, tenant, tenant.to_string())
}

// Found in review: a sweep (another instance's, a query's) and a settle told the observers
// again of requests their own process had counted, so a failing tenant's failure rate
// halved and an open incident could close while every request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_writers_own_move_tells_the_observers() {
    let (changes, counted, mover, tenant, partition) = counted_mover().await;
    let own = event(tenant, 1);
    commit(&changes, &partition, &own).await;
    mover.moved(&changes, &partition, own);
    mover.flush().await;
    assert_eq!(counted.0.load(Ordering::SeqCst), 1);
    let left = event(tenant, 2);
    commit(&changes, &partition, &left).await;
    assert_eq!(mover.sweep(&changes, &partition).await.unwrap(), 1);
    let settled = event(tenant, 3);
    commit(&changes, &partition, &settled).await;
    assert!(mover.settle(&changes, &partition, &settled).await.unwrap());
    assert_eq!(counted.0.load(Ordering::SeqCst), 1);
}

// Seen as a flaky notification test under load: a SCIM success reached the observers
// only when the mover stored it (up to a lingering turn later), a failure at once, so the
// failure rate was judged before the successes that preceded the failure were counted and
// 5 failures in 100 requests opened an incident over a 10% threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_hear_of_a_committed_event_when_it_is_handed_in_not_when_it_is_moved() {
    let (changes, counted, mover, tenant, partition) = counted_mover().await;
    let committed = event(tenant, 1);
    commit(&changes, &partition, &committed).await;
    mover.moved(&changes, &partition, committed);
    assert_eq!(
        counted.0.load(Ordering::SeqCst),
        1,
        "told as the request answers, before the turn moves it"
    );
    mover.flush().await;
    assert_eq!(counted.0.load(Ordering::SeqCst), 1, "and never again");
    assert_eq!(outbox_rows(&changes, &partition).await, 0);
}

/// The trail's store, counting the appends made to it.
struct CountingStore {
    inner: Arc<TableAuditStore>,
    appends: AtomicUsize,
}

#[async_trait::async_trait]
impl AuditStore for CountingStore {
    async fn append(&self, events: &[Event]) -> Result<(), audit::AuditError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(events).await
    }
    async fn complete(&self, pending: &Event, done: &Event) -> Result<(), audit::AuditError> {
        self.inner.complete(pending, done).await
    }
    async fn page(
        &self,
        tenant: Uuid,
        query: &AuditQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<audit::AuditPage, audit::AuditError> {
        self.inner.page(tenant, query, cursor, limit).await
    }
    async fn trim(
        &self,
        keep_from: time::Date,
        tenants: &[Uuid],
    ) -> Result<audit::Trimmed, audit::AuditError> {
        self.inner.trim(keep_from, tenants).await
    }
}

// Each turn of the mover costs two transactions however few events it moves: at a steady
// trickle of requests it took one event per turn, so auditing cost SCIM creates about a
// fifth of their throughput. A turn that is not full now waits briefly for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_events_is_moved_in_few_turns_and_flush_still_sees_them_all() {
    let (changes, store, _audit) = stores().await;
    let counting = Arc::new(CountingStore {
        inner: store.clone(),
        appends: AtomicUsize::new(0),
    });
    let mover = Outbox::new(Audit::new(counting.clone()));
    let tenant = Uuid::new_v4();
    let partition = tenant.to_string();
    let events: Vec<Event> = (0..40).map(|i| event(tenant, i)).collect();
    for e in &events {
        commit(&changes, &partition, e).await;
    }
    // handed in one at a time, a couple of milliseconds apart, as requests finish
    for e in &events {
        mover.moved(&changes, &partition, e.clone());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    mover.flush().await;
    let appends = counting.appends.load(Ordering::SeqCst);
    assert!(appends <= 6, "40 events took {appends} turns");
    let page = store
        .page(tenant, &AuditQuery::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 40);
    assert_eq!(outbox_rows(&changes, &partition).await, 0);
}
