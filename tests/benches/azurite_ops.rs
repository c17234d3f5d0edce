//! What each kind of entity operation costs Azurite's table service, in CPU, on a table
//! that already holds many rows (as a tenant's SCIM partition does): batches of 100
//! inserts of an audit-event-sized row and of a two-property row, merges, replaces and
//! deletes of those rows, and one-operation batches (the cost of a request itself).
//! The CPU is read from /proc around each phase, so the figure holds however fast or
//! loaded the machine is at the time.
//!
//! AZURITE_OPS_ROWS=20000 cargo bench -p system-tests --bench azurite_ops

use system_tests::{Azurite, unique_table};
use tables::{Entity, IfMatch, Operation, Table};

const BATCH: usize = 100;
/// The operation of a phase on one row key.
type MakeOp<'a> = dyn Fn(String) -> Operation + 'a;
/// Batches per phase.
const BATCHES: usize = 20;

fn fat(partition: &str, row: String) -> Entity {
    // the properties and sizes of an audit event row
    Entity::new(partition, row)
        .with("Id", uuid::Uuid::new_v4().to_string())
        .with(
            "Time",
            tables::Value::DateTime(time::OffsetDateTime::now_utc()),
        )
        .with("Action", "scim.user.create")
        .with("ActorKind", "entra-provisioning")
        .with("ActorId", "entra-provisioning")
        .with("TargetType", "user")
        .with("TargetId", uuid::Uuid::new_v4().to_string())
        .with("Outcome", "success")
        .with(
            "Changes",
            format!(
                "[{}]",
                r#"{"attribute":"userName","new":"someone@contoso.com"},"#
                    .repeat(8)
                    .trim_end_matches(',')
            ),
        )
        .with("TargetDisplay", "someone@contoso.com")
        .with("InvocationId", uuid::Uuid::new_v4().to_string())
        .with("Correlation", uuid::Uuid::new_v4().to_string())
}

fn slim(partition: &str, row: String) -> Entity {
    Entity::new(partition, row)
        .with("Id", uuid::Uuid::new_v4().to_string())
        .with(
            "Time",
            tables::Value::DateTime(time::OffsetDateTime::now_utc()),
        )
}

async fn phase(azurite: &Azurite, name: &str, table: &Table, batches: Vec<Vec<Operation>>) {
    let ops: usize = batches.iter().map(Vec::len).sum();
    let before = azurite
        .table_cpu_seconds()
        .expect("Azurite's table process");
    let started = std::time::Instant::now();
    for batch in &batches {
        table.transact(batch).await.expect("batch");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = azurite.table_cpu_seconds().unwrap() - before;
    println!(
        "{name:<32} {:>8.3} ms CPU per operation, {:>8.3} ms per batch, {:>7.0} ops/s",
        cpu * 1e3 / ops as f64,
        cpu * 1e3 / batches.len() as f64,
        ops as f64 / elapsed
    );
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("AZURITE_OPS_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let azurite = Azurite::fresh();
    let table = azurite.client().table(unique_table("ops"));
    table.create_if_not_exists().await.unwrap();
    let p = "tenant";
    // the table's existing rows, in the same partition
    for chunk in (0..rows).collect::<Vec<_>>().chunks(BATCH) {
        let ops = chunk
            .iter()
            .map(|i| Operation::Insert(slim(p, format!("u{i:08}"))))
            .collect::<Vec<_>>();
        table.transact(&ops).await.unwrap();
    }
    println!("table of {rows} rows in one partition; {BATCHES} batches of {BATCH} per phase");
    let keys = |tag: &str| -> Vec<Vec<String>> {
        (0..BATCHES)
            .map(|b| (0..BATCH).map(|i| format!("{tag}{b:04}{i:04}")).collect())
            .collect()
    };
    let each = |tag: &str, f: &MakeOp| -> Vec<Vec<Operation>> {
        keys(tag)
            .into_iter()
            .map(|b| b.into_iter().map(f).collect())
            .collect()
    };
    let delete = |k: String| Operation::Delete {
        partition_key: p.to_string(),
        row_key: k,
        if_match: IfMatch::Any,
    };
    // in this order: each phase works on the rows the earlier ones left
    let phases: [(&str, &str, &MakeOp); 7] = [
        ("insert, event-sized", "audit-a", &|k| {
            Operation::Insert(fat(p, k))
        }),
        ("insert, 2 properties", "audit-b", &|k| {
            Operation::Insert(slim(p, k))
        }),
        ("merge, event-sized", "audit-a", &|k| {
            Operation::Merge(fat(p, k), IfMatch::Any)
        }),
        ("replace, event-sized", "audit-a", &|k| {
            Operation::Replace(fat(p, k), IfMatch::Any)
        }),
        ("upsert-replace, existing", "audit-a", &|k| {
            Operation::UpsertReplace(fat(p, k))
        }),
        ("delete, event-sized", "audit-a", &delete),
        ("delete, 2 properties", "audit-b", &delete),
    ];
    for (name, tag, op) in phases {
        phase(&azurite, name, &table, each(tag, op)).await;
    }
    let singles: Vec<Vec<Operation>> = (0..BATCHES * 20)
        .map(|i| vec![Operation::Insert(slim(p, format!("single{i:06}")))])
        .collect();
    phase(&azurite, "one-insert batches", &table, singles).await;
    // the same on an empty table: what the table's size adds
    let empty = azurite.client().table(unique_table("ops"));
    empty.create_if_not_exists().await.unwrap();
    let on_empty: [(&str, &MakeOp); 2] = [
        ("insert, event-sized, empty table", &|k| {
            Operation::Insert(fat(p, k))
        }),
        ("delete, event-sized, empty table", &delete),
    ];
    for (name, op) in on_empty {
        phase(&azurite, name, &empty, each("audit-a", op)).await;
    }
}
