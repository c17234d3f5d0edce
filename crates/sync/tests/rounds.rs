//! Rounds against a real Azurite with a scripted source: checkpoints, resume after a
//! failure, one round for two racing instances, throttling, resync with mark and sweep,
//! and a refused tenant.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use directory::{
    Directory, Field, GroupChange, MemberChange, TableDirectory, UserChange, UserFields,
};
use sync::{
    DirectorySource, Next, Outcome, Phase, RoundOptions, Schedule, SourceError, SourcePage,
    SyncStateStore, TableSyncStates, run_round,
};
use system_tests::{Azurite, unique_table};
use uuid::Uuid;

/// What the scripted source answers for a link (None: the start of a full round).
type Script = Vec<(Option<&'static str>, Result<(Vec<Uuid>, Next), SourceError>)>;
/// A page of users: the ids, or the error.
type UserAnswer = Result<(Vec<Uuid>, Next), SourceError>;
/// A page of groups, or the error.
type GroupAnswer = Result<(Groups, Next), SourceError>;
/// Groups with their members.
type Groups = Vec<(Uuid, Vec<Uuid>)>;
/// A scripted groups page: the link it expects, the groups, where it goes next.
type GroupScript = Vec<(Option<&'static str>, Groups, Next)>;

struct Scripted {
    users: Mutex<VecDeque<(Option<String>, UserAnswer)>>,
    groups: Mutex<VecDeque<(Option<String>, GroupAnswer)>>,
    asked: Mutex<Vec<Option<String>>>,
    delay: Duration,
}

impl Scripted {
    fn new(users: Script, groups: GroupScript) -> Scripted {
        Scripted {
            users: Mutex::new(
                users
                    .into_iter()
                    .map(|(l, r)| (l.map(str::to_string), r))
                    .collect(),
            ),
            groups: Mutex::new(
                groups
                    .into_iter()
                    .map(|(l, g, n)| (l.map(str::to_string), Ok((g, n))))
                    .collect(),
            ),
            asked: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
        }
    }
}

fn user(id: Uuid, round: i64) -> UserChange {
    UserChange::Graph {
        entra_id: id,
        fields: UserFields {
            upn: Field::Set(format!("{id}@contoso.com")),
            name: Field::Set(format!("User {id}")),
            enabled: Some(true),
            ..UserFields::default()
        },
        round,
    }
}

#[async_trait]
impl DirectorySource for Scripted {
    async fn users(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<UserChange>, SourceError> {
        tokio::time::sleep(self.delay).await;
        self.asked.lock().unwrap().push(link.map(str::to_string));
        let (expected, answer) = self
            .users
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted users page");
        assert_eq!(
            expected.as_deref(),
            link,
            "the round asked for the wrong link"
        );
        let (ids, next) = answer?;
        Ok(SourcePage {
            items: ids.into_iter().map(|id| user(id, round)).collect(),
            next,
        })
    }

    async fn groups(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<GroupChange>, SourceError> {
        let (expected, answer) = self
            .groups
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted groups page");
        assert_eq!(
            expected.as_deref(),
            link,
            "the round asked for the wrong groups link"
        );
        let (groups, next) = answer?;
        Ok(SourcePage {
            items: groups
                .into_iter()
                .map(|(g, members)| GroupChange::Graph {
                    entra_id: g,
                    name: Field::Set("Team".into()),
                    members: members
                        .into_iter()
                        .map(|m| MemberChange {
                            entra_id: m,
                            removed: false,
                        })
                        .collect(),
                    round,
                })
                .collect(),
            next,
        })
    }
}

/// Records the users a round reports inactive.
#[derive(Default)]
struct Recorder(Mutex<Vec<Uuid>>);

#[async_trait]
impl sync::RoundObserver for Recorder {
    async fn users_inactive(&self, _tenant: Uuid, users: &[Uuid]) -> Result<(), String> {
        self.0.lock().unwrap().extend_from_slice(users);
        Ok(())
    }
}

struct World {
    directory: TableDirectory,
    states: Arc<TableSyncStates>,
    /// The states' table, to write to it as another instance would.
    states_table: tables::Table,
}

async fn world() -> World {
    let client = Azurite::shared().client();
    let dir = client.table(unique_table("dir"));
    let states = client.table(unique_table("sync"));
    dir.create_if_not_exists().await.unwrap();
    states.create_if_not_exists().await.unwrap();
    World {
        directory: TableDirectory::new(dir),
        states: Arc::new(TableSyncStates::new(states.clone())),
        states_table: states,
    }
}

fn options(owner: &str) -> RoundOptions {
    RoundOptions {
        owner: owner.into(),
        lease_ttl: Duration::from_secs(3),
        lease_wait: Duration::from_secs(4),
        force: false,
        full: false,
        schedule: Schedule {
            interval: Duration::from_secs(45 * 60),
            requeue_after: Duration::from_secs(600),
        },
        refused_backoff: Duration::from_secs(45 * 60),
        throttled_backoff: Duration::from_secs(60),
    }
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

#[tokio::test]
async fn a_failed_round_resumes_at_its_checkpoint_and_loses_nothing() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let (a, b, c) = (ids(3), ids(3), ids(3));
    let source = Scripted::new(
        vec![
            (None, Ok((a.clone(), Next::More("p2".into())))),
            (Some("p2"), Ok((b.clone(), Next::More("p3".into())))),
            (
                Some("p3"),
                Err(SourceError::Transient("503 after retries".into())),
            ),
            // the second run starts where the first stopped, not at the start
            (Some("p3"), Ok((c.clone(), Next::Done("d1".into())))),
        ],
        vec![(
            None,
            vec![(Uuid::new_v4(), a.clone())],
            Next::Done("gd1".into()),
        )],
    );
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    let first = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("one"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    assert!(
        matches!(first.outcome, Outcome::Failed { .. }),
        "{:?}",
        first.outcome
    );
    let (state, _) = states.get(tenant).await.unwrap();
    assert_eq!(
        (state.phase, state.users_link.as_deref()),
        (Phase::Users, Some("p3"))
    );
    assert!(!state.is_running(time::OffsetDateTime::now_utc()));
    let second = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("two"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    assert_eq!(second.outcome, Outcome::Completed);
    let c_ = w.directory.counters(tenant).await.unwrap();
    assert_eq!((c_.users, c_.groups, c_.memberships), (9, 1, 3));
    let (state, _) = states.get(tenant).await.unwrap();
    assert_eq!(state.phase, Phase::Idle);
    assert_eq!(state.users_delta.as_deref(), Some("d1"));
    assert_eq!(state.groups_delta.as_deref(), Some("gd1"));
    assert_eq!(state.last.as_ref().unwrap().outcome, "success");
    // not due again in this slot: a repeated message does nothing
    let again = run_round(
        tenant,
        &source,
        &w.directory,
        states,
        &options("three"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    assert_eq!(again.outcome, Outcome::NotDue);
}

#[tokio::test]
async fn two_instances_racing_for_one_tenant_run_one_round() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let users = ids(2);
    let mut source = Scripted::new(
        vec![(None, Ok((users.clone(), Next::Done("d1".into()))))],
        vec![(None, vec![], Next::Done("gd1".into()))],
    );
    source.delay = Duration::from_millis(300);
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    let (o1, o2) = (options("one"), options("two"));
    let (one, two) = tokio::join!(
        run_round(
            tenant,
            &source,
            &w.directory,
            states.clone(),
            &o1,
            &sync::NoObserver
        ),
        run_round(
            tenant,
            &source,
            &w.directory,
            states.clone(),
            &o2,
            &sync::NoObserver
        ),
    );
    let outcomes = [one.unwrap().outcome, two.unwrap().outcome];
    assert!(outcomes.contains(&Outcome::Completed), "{outcomes:?}");
    assert!(
        outcomes.contains(&Outcome::NotDue) || outcomes.contains(&Outcome::Busy),
        "{outcomes:?}"
    );
    // the source's script had one page: a second round would have panicked on it
    assert_eq!(source.asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn throttling_keeps_the_checkpoint_and_waits_for_retry_after() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let source = Scripted::new(
        vec![
            (None, Ok((ids(2), Next::More("p2".into())))),
            (
                Some("p2"),
                Err(SourceError::Throttled(Some(Duration::from_secs(120)))),
            ),
        ],
        vec![],
    );
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    let before = time::OffsetDateTime::now_utc();
    let r = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("one"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    let Outcome::Throttled { retry_at } = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(retry_at >= before + time::Duration::seconds(120));
    let (state, requests) = states.get(tenant).await.unwrap();
    assert_eq!(state.users_link.as_deref(), Some("p2"));
    let sched = options("x").schedule;
    assert_eq!(
        sched.due(&state, &requests, time::OffsetDateTime::now_utc()),
        None
    );
    assert!(
        sched
            .due(&state, &requests, retry_at + time::Duration::SECOND)
            .is_some()
    );
}

#[tokio::test]
async fn a_resync_runs_a_full_round_and_sweeps_what_it_did_not_see() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let (kept, gone) = (ids(2), ids(2));
    let all: Vec<Uuid> = kept.iter().chain(&gone).copied().collect();
    let source = Scripted::new(
        vec![
            (None, Ok((all, Next::Done("d1".into())))),
            (
                Some("d1"),
                Err(SourceError::ResyncRequired("410 Gone".into())),
            ),
            (None, Ok((kept.clone(), Next::Done("d2".into())))),
        ],
        vec![
            (None, vec![], Next::Done("gd1".into())),
            (None, vec![], Next::Done("gd2".into())),
        ],
    );
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("one"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    let mut forced = options("one");
    forced.force = true;
    let observer = Recorder::default();
    let r = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &forced,
        &observer,
    )
    .await
    .unwrap();
    assert_eq!((r.outcome, r.full), (Outcome::Completed, true));
    for id in &gone {
        let u = w.directory.user(tenant, *id).await.unwrap().unwrap();
        assert!(u.deleted_in_entra_at.is_some() && !u.is_active());
    }
    for id in &kept {
        assert!(
            w.directory
                .user(tenant, *id)
                .await
                .unwrap()
                .unwrap()
                .is_active()
        );
    }
    assert_eq!(w.directory.counters(tenant).await.unwrap().active_users, 2);
    // the users the sweep deactivated were reported, for what must follow (certificates)
    let mut told = observer.0.lock().unwrap().clone();
    told.sort();
    let mut expected = gone.clone();
    expected.sort();
    assert_eq!(told, expected);
}

#[tokio::test]
async fn a_refused_tenant_is_marked_and_skipped_until_its_next_slot() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let source = Scripted::new(
        vec![(
            None,
            Err(SourceError::AccessRevoked(
                "AADSTS7000112: application is disabled".into(),
            )),
        )],
        vec![],
    );
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    let r = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("one"),
        &sync::NoObserver,
    )
    .await
    .unwrap();
    assert!(matches!(r.outcome, Outcome::AccessRevoked { .. }));
    let (state, requests) = states.get(tenant).await.unwrap();
    assert!(state.error.as_deref().unwrap().contains("7000112"));
    assert_eq!(state.phase, Phase::Idle);
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(options("x").schedule.due(&state, &requests, now), None);
    assert!(state.next_attempt_at.unwrap() > now + time::Duration::minutes(44));
}

#[tokio::test]
async fn a_lease_left_by_a_dead_instance_expires() {
    let w = world().await;
    let tenant = Uuid::new_v4();
    // a holder that never renews: it "died" right after taking the lease
    let held = w
        .states
        .acquire(tenant, "dead", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(held.is_some());
    assert!(
        w.states
            .acquire(tenant, "alive", Duration::from_secs(2))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        w.states
            .acquire(tenant, "alive", Duration::from_secs(2))
            .await
            .unwrap()
            .is_some()
    );
    // the dead instance cannot write over the new holder
    let mut stale = held.unwrap();
    assert!(matches!(
        w.states.save(&mut stale).await,
        Err(sync::SyncError::LeaseLost)
    ));
}

/// Has another instance make a page's change to `raced` while the page is announced (once,
/// in round 2), so that the page's transaction loses the race; keeps what it hears was
/// not made.
struct RaceOnce {
    other: TableDirectory,
    /// When set, the race also takes the round's lease (its state row changes under it,
    /// as when another instance took a lease this one let lapse).
    steal_lease: Option<tables::Table>,
    raced: Uuid,
    raced_yet: std::sync::atomic::AtomicBool,
    /// When set, the racing write is the same page run by another instance (it names its
    /// write as the page does), as when an instance that stalled past its lease commits.
    same_page: bool,
    not_made: Mutex<Vec<(i64, Vec<Uuid>)>>,
}

/// A hook that only names its write.
struct Named(String);

#[async_trait]
impl directory::BeforeCommit for Named {
    async fn changing(&self, _objects: &[directory::ObjectChange]) -> Result<(), String> {
        Ok(())
    }

    fn write_tag(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

#[async_trait]
impl sync::RoundObserver for RaceOnce {
    async fn users_inactive(&self, _tenant: Uuid, _users: &[Uuid]) -> Result<(), String> {
        Ok(())
    }

    async fn page_changing(
        &self,
        tenant: Uuid,
        round: i64,
        page: Option<i64>,
        started: time::OffsetDateTime,
        _objects: &[directory::ObjectChange],
    ) -> Result<(), String> {
        if round == 2
            && !self
                .raced_yet
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // the same change the page makes, as an on-demand sync of the user would (or,
            // with `same_page`, the same page on another instance)
            let named = Named(sync::write_tag(round, started, page));
            self.other
                .apply_users_noting(
                    tenant,
                    directory::Writer::Graph,
                    vec![user(self.raced, round)],
                    directory::ApplyMode::Read,
                    self.same_page
                        .then_some(&named as &dyn directory::BeforeCommit),
                )
                .await
                .map_err(|e| e.to_string())?;
            if let Some(states) = &self.steal_lease {
                states
                    .transact(&[tables::Operation::Merge(
                        tables::Entity::new("tenants", format!("s-{tenant}"))
                            .with("LeaseOwner", "another instance"),
                        tables::IfMatch::Any,
                    )])
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    async fn page_not_made(
        &self,
        _tenant: Uuid,
        round: i64,
        _page: Option<i64>,
        _started: time::OffsetDateTime,
        objects: &[directory::ObjectChange],
    ) -> Result<(), String> {
        let ids = objects.iter().map(|o| o.id).collect();
        self.not_made.lock().unwrap().push((round, ids));
        Ok(())
    }
}

/// Two rounds of a tenant whose second races another writer on one user (and, with
/// `steal_lease`, also loses its lease): what the second round answered, and the
/// corrections the observer heard of.
async fn race_in_the_second_round(
    steal_lease: bool,
    same_page: bool,
) -> (
    Result<sync::RoundReport, sync::SyncError>,
    Vec<(i64, Vec<Uuid>)>,
    Uuid,
) {
    let w = world().await;
    let tenant = Uuid::new_v4();
    let (raced, other) = (Uuid::new_v4(), Uuid::new_v4());
    let source = Scripted::new(
        vec![
            (None, Ok((vec![raced, other], Next::Done("d1".into())))),
            (
                Some("d1"),
                Ok((vec![raced, other], Next::Done("d2".into()))),
            ),
        ],
        vec![
            (None, vec![], Next::Done("gd1".into())),
            (Some("gd1"), vec![], Next::Done("gd2".into())),
        ],
    );
    let states: Arc<dyn SyncStateStore> = w.states.clone();
    let observer = RaceOnce {
        other: TableDirectory::new(w.directory.table().clone()),
        steal_lease: steal_lease.then(|| w.states_table.clone()),
        raced,
        raced_yet: Default::default(),
        same_page,
        not_made: Mutex::new(Vec::new()),
    };
    let first = run_round(
        tenant,
        &source,
        &w.directory,
        states.clone(),
        &options("one"),
        &observer,
    )
    .await
    .unwrap();
    assert_eq!(first.outcome, Outcome::Completed);
    let mut forced = options("one");
    forced.force = true;
    let second = run_round(tenant, &source, &w.directory, states, &forced, &observer).await;
    let heard = observer.not_made.lock().unwrap().clone();
    (second, heard, raced)
}

// Issue 12: a page's changes that a retry after a lost race no longer made kept their
// announcement (the audit trail said the round made them); the round's observer now hears
// of them.
#[tokio::test]
async fn a_change_a_rounds_retry_no_longer_made_reaches_the_observer_as_not_made() {
    let (second, heard, raced) = race_in_the_second_round(false, false).await;
    let second = second.unwrap();
    assert_eq!((second.outcome, second.full), (Outcome::Completed, false));
    assert_eq!(heard, vec![(2, vec![raced])]);
}

// Issue 12: when an instance that stalled past its lease committed the page's change
// after the lease's holder read the user, the holder's retry found the change made and
// rewrote the page's event (the other instance's record of making it) as not made. The
// record now names the page that wrote it, so the holder leaves that event alone.
#[tokio::test]
async fn a_change_the_same_page_made_on_another_instance_is_not_corrected() {
    let (second, heard, _) = race_in_the_second_round(false, true).await;
    let second = second.unwrap();
    assert_eq!((second.outcome, second.full), (Outcome::Completed, false));
    assert!(
        heard.is_empty(),
        "the change was made, by the page: {heard:?}"
    );
}

// Issue 12: an instance that stalled past its lease runs the same page as the one that
// took the lease over, under the same event ids; its correction of a change it did not
// make (the other did) rewrote the other's record of making it. Only the lease's holder
// corrects now.
#[tokio::test]
async fn an_instance_that_lost_the_lease_does_not_correct_the_pages_events() {
    let (second, heard, _) = race_in_the_second_round(true, false).await;
    assert!(
        matches!(second, Err(sync::SyncError::LeaseLost)),
        "the round stops: {second:?}"
    );
    assert!(
        heard.is_empty(),
        "no correction by an instance without the lease"
    );
}
