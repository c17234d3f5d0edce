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

/// Waits until `tenant` has a committed import (its commit row exists).
async fn until_committed(table: &tables::Table, tenant: Uuid) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while table
        .try_get(&tenant.to_string(), "import-commit")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_written_while_an_import_is_copied_in_keep_their_newer_values() {
    let table = Azurite::shared().client().table(unique_table("hrc"));
    table.create_if_not_exists().await.unwrap();
    // this finisher pauses between claiming the commit and copying
    let slow = std::sync::Arc::new(
        TableHrStore::new(table.clone()).with_copy_pause(std::time::Duration::from_secs(2)),
    );
    let other = TableHrStore::new(table.clone());
    let tenant = Uuid::new_v4();
    let records: Vec<HrRecord> = (0..250).map(record).collect();
    let importing = {
        let (slow, records) = (slow.clone(), records.clone());
        tokio::spawn(async move { slow.import_records(tenant, Uuid::new_v4(), &records).await })
    };
    until_committed(&table, tenant).await;
    // a write that looked for a commit just before the import's was stored: it lands
    // after the commit, so it is the newer value
    let mut raw = record(5);
    raw.surname = "Raw".into();
    table
        .upsert_replace(
            &tables::Entity::new(
                tenant.to_string(),
                format!("record-{}", tables::key::encode("E/5")),
            )
            .with("Json", serde_json::to_string(&raw).unwrap()),
        )
        .await
        .unwrap();
    // a PUT while the import is being copied in: it waits for the copy, then writes
    let mut put = record(240);
    put.surname = "Put".into();
    other.put_records(tenant, &[put]).await.unwrap();
    importing.await.unwrap().unwrap();
    let now = other.records(tenant).await.unwrap();
    assert_eq!(now.len(), 250);
    let surname = |id: &str| {
        now.iter()
            .find(|r| r.employee_id == id)
            .map(|r| r.surname.clone())
            .unwrap()
    };
    assert_eq!(surname("E/240"), "Put", "the PUT is not overwritten");
    assert_eq!(surname("E/5"), "Raw", "a write after the commit is kept");
    assert_eq!(surname("E/6"), "L6");
    assert!(
        table
            .try_get(&tenant.to_string(), "import-commit")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_records_with_positions_and_non_ascii_names_import_whole() {
    let s = store().await;
    let tenant = Uuid::new_v4();
    let title = "Ingénieure principale — Qualité et fiabilité, Île-de-France (Zürich, Kraków)";
    let records: Vec<HrRecord> = (0..10_000)
        .map(|i| {
            let mut r = record(i);
            r.given_name = "Zoë-Łucja".into();
            r.surname = format!("Ørsted-Ünal 李{i}");
            r.display_name = Some(format!("Zoë-Łucja Ørsted-Ünal 李{i} (Ελληνικά)"));
            r.positions = (0..4)
                .map(|p| HrPosition {
                    title: format!("{title} {p}"),
                    department: Some("Recherche & Développement".into()),
                    start: parse_date(&format!("202{p}-01-01")).unwrap(),
                    end: None,
                })
                .collect();
            r
        })
        .collect();
    s.import_records(tenant, Uuid::new_v4(), &records)
        .await
        .unwrap();
    let back = s.records(tenant).await.unwrap();
    assert_eq!(back.len(), 10_000);
    let one = back.iter().find(|r| r.employee_id == "E/9999").unwrap();
    assert_eq!(one, &records[9999]);

    // one record past what a row holds is refused as too large, not as unavailable
    let mut huge = record(1);
    huge.job_title = Some("é".repeat(40_000));
    match s.import_records(tenant, Uuid::new_v4(), &[huge]).await {
        Err(HrStoreError::TooLarge(m)) => assert!(m.contains("E/1"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_waiting_on_thousands_of_future_hires_is_saved_and_read_back() {
    let s = store().await;
    let tenant = Uuid::new_v4();
    let records: Vec<HrRecord> = (0..3000)
        .map(|i| {
            let mut r = record(i);
            r.start_date = parse_date("2030-01-07").unwrap();
            r
        })
        .collect();
    let rules: Rules = serde_json::from_value(serde_json::json!({
        "upn": {"pattern": "lower(join(\".\", given_name, surname))", "domain": "contoso.com"},
    }))
    .unwrap();
    let rules = rules.compile().unwrap();
    let plan = hr::plan::compute(PlanInput {
        tenant_id: tenant,
        today: parse_date("2026-03-01").unwrap(),
        records: &records,
        rules: &rules,
        view: &DirectoryView::default(),
        max_disable_percent: 5.0,
    });
    // far more than one row holds as JSON (32K characters)
    assert_eq!(plan.waiting.len(), 3000, "{:?}", plan.waiting.first());
    s.save_plan(&plan).await.unwrap();
    assert_eq!(s.plan(tenant, plan.id).await.unwrap().unwrap(), plan);
}
