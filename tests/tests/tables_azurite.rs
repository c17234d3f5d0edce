//! The Table Storage client against a real Azurite.

use futures::TryStreamExt as _;
use system_tests::{Azurite, unique_table};
use tables::{Entity, Error, IfMatch, Operation, Query, Value, key};
use time::macros::datetime;

fn table(prefix: &str) -> tables::Table {
    Azurite::shared().client().table(unique_table(prefix))
}

#[tokio::test]
async fn first_write_creates_the_table_and_reads_of_a_missing_table_are_empty() {
    let t = table("lazy");
    assert!(t.try_get("p", "r").await.unwrap().is_none());
    assert!(t.query_all(Query::default()).await.unwrap().is_empty());
    t.upsert_merge(&Entity::new("p", "r").with("v", 1))
        .await
        .unwrap();
    assert_eq!(t.get("p", "r").await.unwrap().get_i64("v"), Some(1));
    // creating again is a no-op
    t.create_if_not_exists().await.unwrap();
    Azurite::shared()
        .client()
        .create_table_if_not_exists(t.name())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_deleted_under_a_running_client_is_created_again_by_the_next_write() {
    let client = Azurite::shared().client();
    let t = client.table(unique_table("gone"));
    t.create_if_not_exists().await.unwrap();
    t.upsert_merge(&Entity::new("p", "a").with("v", 1))
        .await
        .unwrap();
    // someone else deletes the table: this client still believes it exists
    Azurite::shared()
        .client()
        .delete_table(t.name())
        .await
        .unwrap();
    for (row, op) in [("b", "upsert"), ("c", "insert"), ("d", "transaction")] {
        let entity = Entity::new("p", row).with("v", 2);
        let written = match op {
            "upsert" => t.upsert_replace(&entity).await.map(|_| ()),
            "insert" => t.insert(&entity).await.map(|_| ()),
            _ => t.transact(&[Operation::Insert(entity)]).await.map(|_| ()),
        };
        written.unwrap_or_else(|e| panic!("{op} after the table was deleted: {e}"));
        assert_eq!(t.get("p", row).await.unwrap().get_i64("v"), Some(2));
        Azurite::shared()
            .client()
            .delete_table(t.name())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn etag_concurrency_gives_typed_conflict_and_precondition_errors() {
    let t = table("etag");
    let first = t.insert(&Entity::new("p", "r").with("n", 1)).await.unwrap();
    let dup = t.insert(&Entity::new("p", "r")).await.unwrap_err();
    assert!(
        matches!(dup, Error::Conflict { ref code, .. } if code == "EntityAlreadyExists"),
        "{dup:?}"
    );

    let read = t.get("p", "r").await.unwrap();
    assert_eq!(read.etag.as_ref(), Some(&first));
    let second = t
        .replace(&read.clone().with("n", 2), first.clone().into())
        .await
        .unwrap();
    assert_ne!(second, first);

    let stale = t
        .replace(&read.clone().with("n", 3), first.clone().into())
        .await
        .unwrap_err();
    assert!(stale.is_precondition_failed(), "{stale:?}");
    let stale_merge = t
        .merge(&Entity::new("p", "r").with("m", 1), first.clone().into())
        .await
        .unwrap_err();
    assert!(stale_merge.is_precondition_failed());
    let stale_delete = t.delete("p", "r", first.into()).await.unwrap_err();
    assert!(stale_delete.is_precondition_failed());

    let merged = t
        .merge(&Entity::new("p", "r").with("m", "x"), IfMatch::Any)
        .await
        .unwrap();
    let now = t.get("p", "r").await.unwrap();
    assert_eq!(now.get_i64("n"), Some(2), "merge keeps other properties");
    assert_eq!(now.get_str("m"), Some("x"));
    t.delete("p", "r", merged.into()).await.unwrap();
    assert!(t.get("p", "r").await.unwrap_err().is_not_found());
    assert!(
        t.delete("p", "r", IfMatch::Any)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let missing = t
        .replace(&Entity::new("p", "gone"), IfMatch::Any)
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
}

#[tokio::test]
async fn every_edm_type_round_trips_through_azurite() {
    let t = table("types");
    let entity = Entity::new("p", "r")
        .with("s", "text ✓")
        .with("b", true)
        .with("i32", -7)
        .with("i64", 9_007_199_254_740_993_i64)
        .with("small64", Value::Int64(3))
        .with("d", 0.25)
        .with("whole", 2.0)
        .with("t", datetime!(2026-11-24 10:00:00.123 UTC))
        .with(
            "g",
            uuid::Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
        )
        .with("bin", vec![0u8, 1, 2, 254, 255]);
    t.insert(&entity).await.unwrap();
    let back = t.get("p", "r").await.unwrap();
    assert_eq!(back.properties, entity.properties);
    assert!(back.timestamp.is_some());

    // typed filters, including the Int64 `L` literal that crashed Azurite when untagged
    for (filter, hits) in [
        (
            format!("small64 eq {}", Value::Int64(3).filter_literal()),
            1,
        ),
        (
            format!(
                "i64 gt {}",
                Value::Int64(9_007_199_254_740_992).filter_literal()
            ),
            1,
        ),
        (
            format!(
                "t eq {}",
                Value::from(datetime!(2026-11-24 10:00:00.123 UTC)).filter_literal()
            ),
            1,
        ),
        (
            format!("g eq {}", entity.get("g").unwrap().filter_literal()),
            1,
        ),
        (
            format!("bin eq {}", entity.get("bin").unwrap().filter_literal()),
            1,
        ),
        (format!("b eq {}", Value::Bool(false).filter_literal()), 0),
    ] {
        let found = t.query_all(Query::filter(filter.clone())).await.unwrap();
        assert_eq!(found.len(), hits, "{filter}");
    }
}

#[tokio::test]
async fn awkward_keys_and_filter_literals_work_end_to_end() {
    let t = table("keys");
    let raws = [
        "O'Brien",
        "a/b\\c",
        "#hash?query",
        "50% ~off~",
        "ünïcødé 日本 🎉",
        "''",
        "tab\there",
    ];
    for (i, raw) in raws.iter().enumerate() {
        let pk = key::encode(raw);
        let rk = key::encode(&format!("{raw}-{i}"));
        t.insert(&Entity::new(&pk, &rk).with("raw", *raw))
            .await
            .unwrap();
        let got = t.get(&pk, &rk).await.unwrap();
        assert_eq!(got.get_str("raw"), Some(*raw));
        assert_eq!(key::decode(&got.partition_key).unwrap(), *raw);
        let by_filter = t
            .query_all(Query::filter(format!(
                "raw eq {}",
                Value::from(*raw).filter_literal()
            )))
            .await
            .unwrap();
        assert_eq!(by_filter.len(), 1, "filter on {raw:?}");
        let by_partition = t.query_all(Query::partition(&pk)).await.unwrap();
        assert_eq!(by_partition.len(), 1, "partition {raw:?}");
        t.merge(&Entity::new(&pk, &rk).with("seen", true), IfMatch::Any)
            .await
            .unwrap();
        t.delete(&pk, &rk, IfMatch::Any).await.unwrap();
    }
    // unencoded forbidden characters are refused locally with a clear message
    let err = t.insert(&Entity::new("a/b", "r")).await.unwrap_err();
    assert!(
        matches!(err, Error::Invalid(ref m) if m.contains("key::encode")),
        "{err:?}"
    );
}

#[tokio::test]
async fn queries_stream_across_continuation_tokens_with_select_and_limit() {
    let t = table("paging");
    let ops: Vec<Operation> = (0..2300)
        .map(|i| {
            Operation::Insert(
                Entity::new(format!("p{}", i % 2), format!("{i:05}"))
                    .with("n", i)
                    .with("pad", "x"),
            )
        })
        .collect();
    assert_eq!(t.transact_chunked(ops).await.unwrap(), 2300);

    let query = Query {
        select: Some(vec!["n".into()]),
        ..Query::default()
    };
    let pages: Vec<_> = t.query(query).try_collect().await.unwrap();
    assert!(
        pages.len() >= 3,
        "1000 per page at most: {} pages",
        pages.len()
    );
    let all: Vec<Entity> = pages.into_iter().flat_map(|p| p.entities).collect();
    assert_eq!(all.len(), 2300);
    assert!(
        all.iter()
            .all(|e| e.get("pad").is_none() && e.get("n").is_some() && e.etag.is_some())
    );

    let limited = t
        .query_all(Query {
            filter: Some("PartitionKey eq 'p1'".into()),
            page_size: Some(100),
            limit: Some(250),
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 250);
    assert!(limited.iter().all(|e| e.partition_key == "p1"));
}

#[tokio::test]
async fn a_transaction_is_atomic_and_names_the_failing_operation() {
    let t = table("batch");
    t.insert(&Entity::new("p", "taken")).await.unwrap();
    let ops = vec![
        Operation::Insert(Entity::new("p", "a")),
        Operation::UpsertMerge(Entity::new("p", "b").with("x", 1)),
        Operation::Insert(Entity::new("p", "taken")),
    ];
    let err = t.transact(&ops).await.unwrap_err();
    match &err {
        Error::Batch { index, source } => {
            assert_eq!(*index, 2, "{err:?}");
            assert!(source.is_conflict(), "{err:?}");
        }
        other => panic!("expected a batch error, got {other:?}"),
    }
    assert!(
        t.try_get("p", "a").await.unwrap().is_none(),
        "nothing of a failed batch is applied"
    );
    assert!(t.try_get("p", "b").await.unwrap().is_none());

    let etags = t
        .transact(&[
            Operation::Insert(Entity::new("p", "a").with("v", 1)),
            Operation::UpsertReplace(Entity::new("p", "b")),
            Operation::Delete {
                partition_key: "p".into(),
                row_key: "taken".into(),
                if_match: IfMatch::Any,
            },
        ])
        .await
        .unwrap();
    assert_eq!(etags.len(), 3);
    assert!(etags[0].is_some() && etags[2].is_none());
    let a = t.get("p", "a").await.unwrap();
    assert_eq!(
        a.etag, etags[0],
        "the ETag a transaction returns is the stored one"
    );
    assert!(t.try_get("p", "taken").await.unwrap().is_none());

    let too_many: Vec<Operation> = (0..101)
        .map(|i| Operation::Insert(Entity::new("p", format!("{i}"))))
        .collect();
    assert!(matches!(
        t.transact(&too_many).await,
        Err(Error::Invalid(_))
    ));
    let mixed = [
        Operation::Insert(Entity::new("p", "1")),
        Operation::Insert(Entity::new("q", "1")),
    ];
    assert!(matches!(t.transact(&mixed).await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn a_transaction_creates_its_table_on_first_use() {
    let t = table("batchnew");
    t.transact(&[Operation::Insert(Entity::new("p", "r"))])
        .await
        .unwrap();
    assert!(t.try_get("p", "r").await.unwrap().is_some());
}

#[tokio::test]
async fn the_request_counter_counts_one_request_per_point_read() {
    let client = Azurite::shared().client();
    let t = client.table(unique_table("count"));
    t.insert(&Entity::new("p", "r"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = client.request_count();
    for _ in 0..10 {
        t.get("p", "r").await.unwrap();
    }
    assert_eq!(client.request_count() - before, 10);
}
