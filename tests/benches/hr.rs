//! HR write-back at scale. First the plan alone (pure computation) for HR_EMPLOYEES
//! employees (default 10,000) against a directory of as many users, run several times to
//! show time and that memory stays flat; then an apply of HR_JOINERS joiners (default
//! 2,000: a create and a group add each) through `$batch` against the Graph stand-in, with
//! the step journal on Azurite, as the handler applies.
//!
//! cargo bench -p system-tests --bench hr   (HR_EMPLOYEES=10000 HR_JOINERS=2000)

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use entra::credentials::{AppCredential, AppRegistration, TokenProvider};
use entra::graph::{BatchRequest, GraphClient, GraphPolicy};
use entra::writes::{self, WriteAnswer};
use hr::plan::compute;
use hr::record::parse_date;
use hr::*;
use serde_json::json;
use system_tests::fake_graph::FakeMicrosoft;
use system_tests::{Azurite, env_or, unique_table};
use uuid::Uuid;

const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const SECRET: &str = "bench-secret";

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn record(i: usize, department: &str) -> HrRecord {
    HrRecord {
        employee_id: format!("E{i:06}"),
        given_name: format!("Given{i}"),
        surname: format!("Surname{i}"),
        display_name: None,
        personal_email: None,
        work_email: None,
        job_title: Some("Engineer".into()),
        department: Some(department.into()),
        manager_employee_id: (i > 0).then(|| format!("E{:06}", i / 10)),
        location: Some("London".into()),
        usage_location: Some("GB".into()),
        start_date: parse_date("2025-01-06").unwrap(),
        end_date: None,
        positions: vec![],
    }
}

fn rules(groups: &[Uuid]) -> CompiledRules {
    serde_json::from_value::<Rules>(json!({
        "upn": {"pattern": "lower(ascii(join(\".\", given_name, surname)))", "domain": "contoso.com"},
        "groups": (0..groups.len()).map(|d| json!({"field": "department", "equals": format!("Dept{d}"), "groups": [groups[d]]})).collect::<Vec<_>>(),
    }))
    .unwrap()
    .compile()
    .unwrap()
}

/// 10,000 employees: 2 % joiners, 5 % movers (another department), 1 % leavers, the rest
/// unchanged.
fn plan_at_scale(n: usize) {
    let groups: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let rules = rules(&groups);
    let today = parse_date("2026-12-01").unwrap();
    let mut records = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut applied = HashMap::new();
    for i in 0..n {
        let dept = format!("Dept{}", i % 20);
        let mut r = record(i, &dept);
        if i % 100 < 98 {
            let id = Uuid::new_v4();
            users.push(EntraUser {
                id,
                upn: format!("given{i}.surname{i}@contoso.com"),
                employee_id: Some(r.employee_id.clone()),
                enabled: true,
                properties: rules.properties(&r).into_iter().collect(),
                groups: BTreeSet::from([groups[i % 20]]),
            });
            applied.insert(
                r.employee_id.clone(),
                Applied {
                    entra_id: Some(id),
                    manager_employee_id: r.manager_employee_id.clone(),
                },
            );
        }
        match i % 100 {
            0..=4 => r.department = Some(format!("Dept{}", (i + 1) % 20)),
            5 => r.end_date = Some(parse_date("2026-11-30").unwrap()),
            _ => {}
        }
        records.push(r);
    }
    let view = DirectoryView {
        users,
        applied,
        total_users: n,
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut rss = Vec::new();
    let mut steps = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let plan = compute(PlanInput {
            tenant_id: Uuid::nil(),
            today,
            records: &records,
            rules: &rules,
            view: &view,
            max_disable_percent: 5.0,
        });
        times.push(started.elapsed());
        steps = plan.steps.len();
        drop(plan);
        rss.push(peak_rss_kib() / 1024);
    }
    times.sort();
    println!(
        "plan: {n} employees vs {n} users -> {steps} steps; min {:.0} ms, median {:.0} ms, max {:.0} ms; peak RSS after each run (MiB): {rss:?}",
        times[0].as_secs_f64() * 1000.0,
        times[2].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0,
    );
}

/// The handler's writer, reduced to what joiners need.
struct BenchWriter {
    graph: Arc<GraphClient>,
    registration: AppRegistration,
    tenant: String,
}

#[async_trait]
impl EntraWriter for BenchWriter {
    async fn run(&self, ops: &[Write]) -> Vec<Result<WriteOutcome, WriteError>> {
        let cloud = self.registration.cloud;
        let requests: Vec<BatchRequest> = ops
            .iter()
            .map(|w| match w {
                Write::FindUser { upn } => writes::read_user(upn),
                Write::CreateUser {
                    upn,
                    mail_nickname,
                    properties,
                } => writes::create_user(upn, mail_nickname, properties, "Bench-Pa55word!"),
                Write::AddMember { group, user } => self.graph.add_member(cloud, *group, *user),
                other => panic!("not used by the bench: {other:?}"),
            })
            .collect();
        let answers = self
            .graph
            .batch(&self.registration, &self.tenant, &requests)
            .await
            .expect("a batch");
        ops.iter()
            .zip(&requests)
            .zip(answers)
            .map(|((w, request), a)| match w {
                Write::FindUser { .. } => match writes::read_answer(a) {
                    Ok(None) => Ok(WriteOutcome::Missing),
                    Ok(Some(u)) => Ok(WriteOutcome::Found {
                        id: Uuid::try_parse(&u.id).unwrap(),
                        employee_id: u.employee_id.flatten(),
                    }),
                    Err(e) => Err(WriteError {
                        kind: WriteErrorKind::Unavailable,
                        message: e.to_string(),
                    }),
                },
                _ => match writes::write_answer(request, a) {
                    WriteAnswer::Done(body) => Ok(match body["id"].as_str() {
                        Some(id) => WriteOutcome::Created(Uuid::try_parse(id).unwrap()),
                        None => WriteOutcome::Done,
                    }),
                    other => Err(WriteError {
                        kind: WriteErrorKind::Rejected,
                        message: format!("{other:?}"),
                    }),
                },
            })
            .collect()
    }
}

async fn apply_at_scale(joiners: usize) {
    let fake = FakeMicrosoft::start().await;
    fake.register_secret_app(CLIENT_ID, SECRET);
    let tenant = Uuid::new_v4();
    fake.add_tenant(&tenant.to_string(), "Contoso", "contoso.com");
    fake.consent(&tenant.to_string(), CLIENT_ID, 0);
    let group: Uuid = fake
        .add_group(&tenant.to_string(), json!({"displayName": "Dept0"}))
        .parse()
        .unwrap();
    let endpoints = entra::Endpoints::new(Some(&fake.login_url), Some(&fake.graph_url)).unwrap();
    let tokens = Arc::new(TokenProvider::new(
        endpoints.clone(),
        Duration::from_secs(15),
    ));
    let graph = Arc::new(GraphClient::new(endpoints, tokens, GraphPolicy::default()));
    let registration = AppRegistration {
        cloud: entra::Cloud::Global,
        client_id: CLIENT_ID.parse().unwrap(),
        credential: AppCredential::Secret(SECRET.into()),
    };
    let table = Azurite::shared().client().table(unique_table("hrb"));
    table.create_if_not_exists().await.unwrap();
    let store = TableHrStore::new(table);
    let rules = rules(&[group]);
    let records: Vec<HrRecord> = (0..joiners)
        .map(|i| {
            let mut r = record(i, "Dept0");
            r.manager_employee_id = None;
            r
        })
        .collect();
    let plan = compute(PlanInput {
        tenant_id: tenant,
        today: parse_date("2026-12-01").unwrap(),
        records: &records,
        rules: &rules,
        view: &DirectoryView::default(),
        max_disable_percent: 5.0,
    });
    let writer = BenchWriter {
        graph: graph.clone(),
        registration,
        tenant: tenant.to_string(),
    };
    let applier = Applier {
        writer: &writer,
        journal: &store,
        applied: &store,
        events: &NoEvents,
    };
    let before = graph.request_count();
    let started = Instant::now();
    let report = applier.apply(&plan, &|_| true).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.failed, 0);
    let writes = report.done;
    println!(
        "apply: {joiners} joiners, {writes} writes (plus {joiners} fresh UPN reads) in {elapsed:.1} s = {:.0} writes/s; {} Graph requests ($batch of 20), journal on Azurite",
        writes as f64 / elapsed,
        graph.request_count() - before,
    );
    let before = graph.request_count();
    let started = Instant::now();
    let again = applier.apply(&plan, &|_| true).await.unwrap();
    println!(
        "apply again (all already done): {} steps in {:.1} s, {} Graph requests",
        again.already_done,
        started.elapsed().as_secs_f64(),
        graph.request_count() - before
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    plan_at_scale(env_or("HR_EMPLOYEES", 10_000));
    apply_at_scale(env_or("HR_JOINERS", 2_000)).await;
}
