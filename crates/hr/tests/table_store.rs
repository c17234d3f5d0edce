//! The Table Storage stores on a real Azurite: records, plans split over chunk rows, the
//! step journal, per-employee records, connections and single-use delegated links.

use hr::record::parse_date;
use hr::*;
use system_tests::{Azurite, unique_table};
use uuid::Uuid;

async fn store() -> TableHrStore {
    let table = Azurite::shared().client().table(unique_table("hrs"));
    table.create_if_not_exists().await.unwrap();
    TableHrStore::new(table)
}

fn record(i: usize) -> HrRecord {
    HrRecord {
        employee_id: format!("E/{i}"),
        given_name: "Ada".into(),
        surname: format!("L{i}"),
        display_name: None,
        personal_email: None,
        work_email: None,
        job_title: None,
        department: Some("R&D".into()),
        manager_employee_id: None,
        location: None,
        usage_location: None,
        start_date: parse_date("2026-01-05").unwrap(),
        end_date: None,
        positions: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_plan_and_its_journal_come_back_whole() {
    let s = store().await;
    let tenant = Uuid::new_v4();
    let records: Vec<HrRecord> = (0..250).map(record).collect();
    s.put_records(tenant, &records).await.unwrap();
    assert_eq!(s.records(tenant).await.unwrap().len(), 250);
    assert_eq!(
        s.record(tenant, "E/7").await.unwrap().unwrap().surname,
        "L7"
    );
    let rules: Rules = serde_json::from_value(serde_json::json!({
        "upn": {"pattern": "lower(join(\".\", given_name, surname))", "domain": "contoso.com"},
        "groups": [{"field": "department", "equals": "r&d", "groups": [Uuid::new_v4()]}],
    }))
    .unwrap();
    s.put_rules(tenant, &rules).await.unwrap();
    let rules = s.rules(tenant).await.unwrap().unwrap().compile().unwrap();
    let plan = hr::plan::compute(PlanInput {
        tenant_id: tenant,
        today: parse_date("2026-03-01").unwrap(),
        records: &records,
        rules: &rules,
        view: &DirectoryView::default(),
        max_disable_percent: 5.0,
    });
    assert_eq!(plan.steps.len(), 500);
    s.save_plan(&plan).await.unwrap();
    let back = s.plan(tenant, plan.id).await.unwrap().unwrap();
    assert_eq!(back, plan, "every chunk row read back in order");
    assert!(
        s.plan(Uuid::new_v4(), plan.id).await.unwrap().is_none(),
        "another tenant's plan is not found"
    );

    let states: Vec<(usize, StepState)> = (0..150)
        .map(|i| {
            (
                i,
                StepState::Done {
                    user_id: Some(Uuid::new_v4()),
                },
            )
        })
        .collect();
    s.record_states(tenant, plan.id, &states).await.unwrap();
    s.record_states(
        tenant,
        plan.id,
        &[(3, StepState::Failed { reason: "x".into() })],
    )
    .await
    .unwrap();
    let got = s.states(tenant, plan.id).await.unwrap();
    assert_eq!(got.len(), 150);
    assert_eq!(got[&3], StepState::Failed { reason: "x".into() });

    let a = Applied {
        entra_id: Some(Uuid::new_v4()),
        manager_employee_id: Some("E/1".into()),
    };
    s.record_applied(tenant, &[("E/2".into(), a.clone())])
        .await
        .unwrap();
    assert_eq!(s.applied(tenant).await.unwrap()["E/2"], a);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_link_is_taken_once_and_connections_note_outcomes() {
    let s = store().await;
    let tenant = Uuid::new_v4();
    let link = DelegatedLink {
        tenant_id: tenant,
        cloud: "global".into(),
        verifier: "v".into(),
        expires_at: time::OffsetDateTime::now_utc(),
    };
    s.put_link("h1", &link).await.unwrap();
    assert_eq!(s.take_link("h1").await.unwrap(), Some(link));
    assert_eq!(s.take_link("h1").await.unwrap(), None);

    let c = Connection {
        tenant_id: tenant,
        kind: ConnectionType::CustomerOwned,
        cloud: "china".into(),
        client_id: Some(Uuid::new_v4()),
        credential: Some(CredentialKind::Certificate),
        linked_by: "admin".into(),
        linked_at: time::OffsetDateTime::now_utc(),
        last_success: None,
        last_error: None,
    };
    s.put_connection(&c).await.unwrap();
    s.note_outcome(tenant, Some("403".into())).await.unwrap();
    s.note_outcome(tenant, None).await.unwrap();
    let got = s.connection(tenant).await.unwrap().unwrap();
    assert_eq!(got.last_error.as_deref(), Some("403"));
    assert!(got.last_success.is_some());
    assert!(s.connected_tenants().await.unwrap().contains(&tenant));
    assert!(s.delete_connection(tenant).await.unwrap());
    assert!(!s.delete_connection(tenant).await.unwrap());
    s.note_outcome(tenant, None).await.unwrap();
    assert!(
        s.connection(tenant).await.unwrap().is_none(),
        "a note never recreates a connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_comes_in_whole_and_leaves_no_staging_behind() {
    let table = Azurite::shared().client().table(unique_table("hri"));
    table.create_if_not_exists().await.unwrap();
    let s = TableHrStore::new(table.clone());
    let tenant = Uuid::new_v4();
    let records: Vec<HrRecord> = (0..250).map(record).collect();
    s.import_records(tenant, Uuid::new_v4(), &records)
        .await
        .unwrap();
    assert_eq!(s.records(tenant).await.unwrap().len(), 250);
    // a second import replaces the records it names and keeps the others
    let mut changed: Vec<HrRecord> = (0..120).map(record).collect();
    for r in &mut changed {
        r.department = Some("Sales".into());
    }
    s.import_records(tenant, Uuid::new_v4(), &changed)
        .await
        .unwrap();
    let now = s.records(tenant).await.unwrap();
    assert_eq!(now.len(), 250);
    let sales = now
        .iter()
        .filter(|r| r.department.as_deref() == Some("Sales"))
        .count();
    assert_eq!(sales, 120);
    // nothing but the tenant's own rows is left: no commit, no staged rows
    let rows = table.query_all(tables::Query::default()).await.unwrap();
    assert!(
        rows.iter()
            .all(|e| e.partition_key == tenant.to_string() && e.row_key.starts_with("record-")),
        "{:?}",
        rows.iter()
            .map(|e| (&e.partition_key, &e.row_key))
            .find(|(_, k)| !k.starts_with("record-"))
    );
}
