//! Plans for joiners, movers, leavers and rehires, the guard rails, and an apply that is
//! interrupted and retried, against an in-memory Entra.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use hr::plan::compute;
use hr::record::parse_date;
use hr::*;
use uuid::Uuid;

fn record(id: &str, given: &str, surname: &str) -> HrRecord {
    HrRecord {
        employee_id: id.into(),
        given_name: given.into(),
        surname: surname.into(),
        display_name: None,
        personal_email: None,
        work_email: None,
        job_title: Some("Engineer".into()),
        department: Some("R&D".into()),
        manager_employee_id: None,
        location: None,
        usage_location: None,
        start_date: parse_date("2026-01-05").unwrap(),
        end_date: None,
        positions: vec![],
    }
}

fn rules(group: Uuid) -> CompiledRules {
    serde_json::from_value::<Rules>(serde_json::json!({
        "upn": {"pattern": "lower(ascii(join(\".\", given_name, surname)))", "domain": "contoso.com"},
        "groups": [{"field": "department", "equals": "r&d", "groups": [group]}],
    }))
    .unwrap()
    .compile()
    .unwrap()
}

fn today() -> time::Date {
    parse_date("2026-03-01").unwrap()
}

fn plan(records: &[HrRecord], rules: &CompiledRules, view: &DirectoryView) -> Plan {
    compute(PlanInput {
        tenant_id: Uuid::nil(),
        today: today(),
        records,
        rules,
        view,
        max_disable_percent: 5.0,
    })
}

fn entra_user(r: &HrRecord, rules: &CompiledRules, group: Option<Uuid>) -> EntraUser {
    EntraUser {
        id: Uuid::new_v4(),
        upn: format!("{}@contoso.com", r.given_name.to_lowercase()),
        employee_id: Some(r.employee_id.clone()),
        enabled: true,
        properties: rules.properties(r).into_iter().collect(),
        groups: group.into_iter().collect(),
    }
}

fn actions(p: &Plan) -> Vec<&'static str> {
    p.steps.iter().map(|s| s.action.name()).collect()
}

#[test]
fn a_joiner_gets_an_account_groups_and_a_manager_with_a_free_upn() {
    let g = Uuid::new_v4();
    let rules = rules(g);
    let boss = record("E0", "Grace", "Hopper");
    let mut ada = record("E1", "Ada", "Lovelace");
    ada.manager_employee_id = Some("E0".into());
    let boss_user = entra_user(&boss, &rules, Some(g));
    let view = DirectoryView {
        users: vec![boss_user.clone()],
        taken_upns: ["ada.lovelace@contoso.com".to_string()].into(),
        ..Default::default()
    };
    let p = plan(&[boss, ada], &rules, &view);
    assert_eq!(actions(&p), ["create_user", "add_member", "set_manager"]);
    let Action::CreateUser { upn, .. } = &p.steps[0].action else {
        panic!()
    };
    assert_eq!(upn, "ada.lovelace2@contoso.com", "the taken UPN is skipped");
    assert!(
        matches!(p.steps[2].action, Action::SetManager { user: UserRef::Created, manager: Some(m), .. } if m == boss_user.id)
    );
    assert_eq!(p.steps[0].employee_id, "E1");
}

#[test]
fn a_mover_changes_only_what_changed_and_switches_groups() {
    let g = Uuid::new_v4();
    let rules = rules(g);
    let ada = record("E1", "Ada", "Lovelace");
    let user = entra_user(&ada, &rules, Some(g));
    let mut moved = ada.clone();
    moved.department = Some("Sales".into());
    let view = DirectoryView {
        users: vec![user.clone()],
        ..Default::default()
    };
    let p = plan(&[moved], &rules, &view);
    assert_eq!(actions(&p), ["update_user", "remove_member"]);
    let Action::UpdateUser { changes, .. } = &p.steps[0].action else {
        panic!()
    };
    assert_eq!(
        changes,
        &BTreeMap::from([("department".to_string(), Some("Sales".to_string()))])
    );
    assert!(
        plan(&[ada], &rules, &view).steps.is_empty(),
        "nothing changed, nothing planned"
    );
}

#[test]
fn a_position_begun_since_the_start_date_moves_title_department_and_groups_and_the_update_keeps_old_values()
 {
    let g = Uuid::new_v4();
    let rules = rules(g);
    let ada = record("E1", "Ada", "Lovelace");
    let user = entra_user(&ada, &rules, Some(g));
    let mut promoted = ada.clone();
    promoted.positions = vec![
        HrPosition {
            title: "Engineer".into(),
            department: Some("R&D".into()),
            start: parse_date("2026-01-05").unwrap(),
            end: Some(parse_date("2026-01-31").unwrap()),
        },
        HrPosition {
            title: "Account Lead".into(),
            department: Some("Sales".into()),
            start: parse_date("2026-02-01").unwrap(),
            end: None,
        },
        // not begun yet on the plan's day
        HrPosition {
            title: "Director".into(),
            department: None,
            start: parse_date("2026-06-01").unwrap(),
            end: None,
        },
    ];
    let view = DirectoryView {
        users: vec![user.clone()],
        ..Default::default()
    };
    let p = plan(&[promoted], &rules, &view);
    assert_eq!(actions(&p), ["update_user", "remove_member"]);
    let Action::UpdateUser { changes, old, .. } = &p.steps[0].action else {
        panic!()
    };
    assert_eq!(
        changes,
        &BTreeMap::from([
            ("department".to_string(), Some("Sales".to_string())),
            ("jobTitle".to_string(), Some("Account Lead".to_string())),
        ])
    );
    assert_eq!(
        old,
        &BTreeMap::from([
            ("department".to_string(), "R&D".to_string()),
            ("jobTitle".to_string(), "Engineer".to_string()),
        ])
    );
}

#[test]
fn a_leaver_is_disabled_leaves_groups_and_sessions_but_a_privileged_one_is_not() {
    let g = Uuid::new_v4();
    let rules = rules(g);
    let mut ada = record("E1", "Ada", "Lovelace");
    ada.end_date = Some(parse_date("2026-02-28").unwrap());
    let user = entra_user(&ada, &rules, Some(g));
    let others: Vec<EntraUser> = (0..40)
        .map(|i| entra_user(&record(&format!("X{i}"), "X", "Y"), &rules, None))
        .collect();
    let mut users = others.clone();
    users.push(user.clone());
    let view = DirectoryView {
        users: users.clone(),
        ..Default::default()
    };
    let p = plan(std::slice::from_ref(&ada), &rules, &view);
    assert_eq!(
        actions(&p),
        ["disable_user", "revoke_sessions", "remove_member"]
    );
    assert_eq!(p.steps[0].due_on, ada.end_date);
    assert!(!p.needs_confirmation, "1 of 41 users is under 5 %");
    let view = DirectoryView {
        users,
        privileged: [user.id].into(),
        ..Default::default()
    };
    let p = plan(&[ada], &rules, &view);
    assert!(p.steps.is_empty());
    assert!(p.skipped[0].reason.contains("privileged"));
}

#[test]
fn a_plan_disabling_more_than_the_threshold_needs_confirmation() {
    let rules = rules(Uuid::new_v4());
    let leavers: Vec<HrRecord> = (0..3)
        .map(|i| {
            let mut r = record(&format!("E{i}"), "A", &format!("B{i}"));
            r.end_date = Some(parse_date("2026-02-01").unwrap());
            r
        })
        .collect();
    let users: Vec<EntraUser> = leavers
        .iter()
        .map(|r| entra_user(r, &rules, None))
        .collect();
    let view = DirectoryView {
        users,
        total_users: 20,
        ..Default::default()
    };
    let p = plan(&leavers, &rules, &view);
    assert_eq!(p.disables, 3);
    assert!(p.needs_confirmation, "3 of 20 is 15 %");
}

#[test]
fn a_rehire_is_enabled_with_a_new_password_and_a_future_hire_waits() {
    let rules = rules(Uuid::new_v4());
    let ada = record("E1", "Ada", "Lovelace");
    let mut user = entra_user(&ada, &rules, None);
    user.enabled = false;
    let mut future = record("E2", "Alan", "Turing");
    future.start_date = parse_date("2026-03-09").unwrap();
    future.department = None;
    let view = DirectoryView {
        users: vec![user],
        ..Default::default()
    };
    let p = plan(&[ada, future], &rules, &view);
    assert_eq!(actions(&p), ["enable_user", "reset_password", "add_member"]);
    assert_eq!(p.waiting.len(), 1);
    assert_eq!(
        p.waiting[0].due_on,
        parse_date("2026-03-08").unwrap(),
        "one day before the start"
    );
}

/// Entra in memory; can be told to fail after a number of creates (a crash mid-apply).
#[derive(Default)]
struct MemoryEntra {
    users: Mutex<HashMap<String, (Uuid, String)>>,
    creates: Mutex<usize>,
    crash_after: Mutex<Option<usize>>,
    writes: Mutex<Vec<Write>>,
}

#[async_trait]
impl EntraWriter for MemoryEntra {
    async fn run(&self, writes: &[Write]) -> Vec<Result<WriteOutcome, WriteError>> {
        let mut out = Vec::new();
        for w in writes {
            self.writes.lock().unwrap().push(w.clone());
            out.push(match w {
                Write::FindUser { upn } => Ok(match self.users.lock().unwrap().get(upn) {
                    Some((id, e)) => WriteOutcome::Found {
                        id: *id,
                        employee_id: Some(e.clone()),
                    },
                    None => WriteOutcome::Missing,
                }),
                Write::CreateUser {
                    upn, properties, ..
                } => {
                    let id = Uuid::new_v4();
                    self.users
                        .lock()
                        .unwrap()
                        .insert(upn.clone(), (id, properties["employeeId"].clone()));
                    let mut n = self.creates.lock().unwrap();
                    *n += 1;
                    // the write happened, but its answer is lost
                    if self.crash_after.lock().unwrap().is_some_and(|c| *n > c) {
                        Err(WriteError {
                            kind: WriteErrorKind::Unavailable,
                            message: "connection reset".into(),
                        })
                    } else {
                        Ok(WriteOutcome::Created(id))
                    }
                }
                _ => Ok(WriteOutcome::Done),
            });
        }
        out
    }
}

#[derive(Default)]
struct MemoryJournal {
    states: Mutex<HashMap<usize, StepState>>,
    applied: Mutex<HashMap<String, Applied>>,
}

#[async_trait]
impl StepJournal for MemoryJournal {
    async fn states(&self, _: Uuid, _: Uuid) -> Result<HashMap<usize, StepState>, HrStoreError> {
        Ok(self.states.lock().unwrap().clone())
    }
    async fn record_states(
        &self,
        _: Uuid,
        _: Uuid,
        s: &[(usize, StepState)],
    ) -> Result<(), HrStoreError> {
        self.states.lock().unwrap().extend(s.iter().cloned());
        Ok(())
    }
}

#[async_trait]
impl AppliedStore for MemoryJournal {
    async fn applied(&self, _: Uuid) -> Result<HashMap<String, Applied>, HrStoreError> {
        Ok(self.applied.lock().unwrap().clone())
    }
    async fn record_applied(&self, _: Uuid, e: &[(String, Applied)]) -> Result<(), HrStoreError> {
        self.applied.lock().unwrap().extend(e.iter().cloned());
        Ok(())
    }
}

#[tokio::test]
async fn an_interrupted_apply_retried_creates_no_second_user() {
    let g = Uuid::new_v4();
    let rules = rules(g);
    let records: Vec<HrRecord> = (0..3)
        .map(|i| record(&format!("E{i}"), "Ada", &format!("L{i}")))
        .collect();
    let p = plan(&records, &rules, &DirectoryView::default());
    let entra = MemoryEntra::default();
    *entra.crash_after.lock().unwrap() = Some(1);
    let journal = MemoryJournal::default();
    let applier = Applier {
        writer: &entra,
        journal: &journal,
        applied: &journal,
        events: &NoEvents,
    };
    let first = applier.apply(&p, &|_| true).await.unwrap();
    assert_eq!(
        first.failed, 4,
        "two creates lost their answer, their add_member waits: {first:?}"
    );
    *entra.crash_after.lock().unwrap() = None;
    let second = applier.apply(&p, &|_| true).await.unwrap();
    assert_eq!(second.failed, 0, "{second:?}");
    assert_eq!(
        second.already_done, 2,
        "the first create and its add_member"
    );
    assert_eq!(entra.users.lock().unwrap().len(), 3);
    assert_eq!(
        *entra.creates.lock().unwrap(),
        3,
        "no user was created twice"
    );
    let third = applier.apply(&p, &|_| true).await.unwrap();
    assert_eq!(third.already_done, p.steps.len());
    let members: BTreeSet<Uuid> = entra
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter_map(|w| match w {
            Write::AddMember { user, .. } => Some(*user),
            _ => None,
        })
        .collect();
    assert_eq!(members.len(), 3);
}
