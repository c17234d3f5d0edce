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

// ---- the standalone runtime against the real queue service ----

mod runtime {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures::future::BoxFuture;
    use host::{
        Catalog, InvocationRequest, InvocationResponse, InvokeError, InvokeFuture, Invoker,
        QueueSettings, Standalone,
    };
    use serde_json::{Value, json};
    use system_tests::Azurite;

    type Behaviour = dyn Fn(&str, usize) -> BoxFuture<'static, Result<InvocationResponse, InvokeError>>
        + Send
        + Sync;

    /// A test Invoker: records every call and answers as `behaviour` says (given the
    /// function and the call's index, from 0).
    struct TestInvoker {
        calls: Mutex<Vec<(String, InvocationRequest, Instant)>>,
        behaviour: Box<Behaviour>,
    }

    impl TestInvoker {
        fn new(
            behaviour: impl Fn(
                &str,
                usize,
            )
                -> BoxFuture<'static, Result<InvocationResponse, InvokeError>>
            + Send
            + Sync
            + 'static,
        ) -> Arc<TestInvoker> {
            Arc::new(TestInvoker {
                calls: Mutex::new(Vec::new()),
                behaviour: Box::new(behaviour),
            })
        }

        fn succeeding() -> Arc<TestInvoker> {
            TestInvoker::new(|_, _| Box::pin(async { Ok(InvocationResponse::new()) }))
        }

        fn calls(&self) -> Vec<(String, InvocationRequest, Instant)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Invoker for TestInvoker {
        fn invoke<'a>(&'a self, function: &'a str, request: InvocationRequest) -> InvokeFuture<'a> {
            let index = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((function.to_string(), request, Instant::now()));
                calls.len() - 1
            };
            (self.behaviour)(function, index)
        }
    }

    fn failure() -> InvokeError {
        InvokeError::Failed {
            message: "the test function failed".into(),
            logs: vec![],
        }
    }

    /// Short holds and fast polling, so retries happen within seconds.
    fn quick(visibility_secs: u64) -> QueueSettings {
        QueueSettings {
            visibility: Duration::from_secs(visibility_secs),
            min_polling_interval: Duration::from_millis(50),
            max_polling_interval: Duration::from_millis(250),
            ..QueueSettings::default()
        }
    }

    fn queue_name(prefix: &str) -> String {
        super::unique_queue(prefix)
    }

    /// A catalog with `Work`, triggered by `queue` (binding `msg`), plus `extra` functions.
    fn catalog(queue: &str, extra: &[(&str, String)]) -> Arc<Catalog> {
        let work = format!(
            r#"{{"bindings":[{{"name":"msg","type":"queueTrigger","direction":"in","queueName":"{queue}","connection":"AzureWebJobsStorage"}}]}}"#
        );
        let mut sources: Vec<(&str, &str)> = vec![("Work", work.as_str())];
        sources.extend(extra.iter().map(|(n, j)| (*n, j.as_str())));
        Arc::new(Catalog::from_sources(sources).unwrap())
    }

    fn start(
        catalog: Arc<Catalog>,
        invoker: Arc<TestInvoker>,
        settings: QueueSettings,
    ) -> Arc<Standalone> {
        Standalone::start(
            catalog,
            invoker,
            Some((Azurite::shared().queues(), settings)),
        )
        .unwrap()
    }

    async fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(started.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn queue_empty(queue: &queues::Queue, limit: Duration) {
        let started = Instant::now();
        while queue.approximate_count().await.unwrap() > 0 {
            assert!(
                started.elapsed() < limit,
                "{} still has messages after {limit:?}",
                queue.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_queue_triggered_function_gets_the_host_payload_and_the_message_is_deleted_on_success()
     {
        let name = queue_name("payload");
        let queue = Azurite::shared().queues().queue(&name).unwrap();
        queue.create_if_missing().await.unwrap();
        let message = json!({"tenant_id": "t1", "full": false});
        let sent = queue.send_json(&message).await.unwrap();

        let invoker = TestInvoker::succeeding();
        let runtime = start(catalog(&name, &[]), invoker.clone(), quick(30));
        let (function, request, _) = eventually(Duration::from_secs(10), || {
            invoker.calls().into_iter().next()
        })
        .await;
        queue_empty(&queue, Duration::from_secs(10)).await;
        runtime.abort();

        assert_eq!(function, "Work");
        // what the host's HTTP worker sends: the message text JSON-quoted inside a string
        assert_eq!(
            request.data["msg"],
            Value::String(Value::String(message.to_string()).to_string())
        );
        assert_eq!(request.metadata["DequeueCount"], "1");
        assert_eq!(request.metadata["sys"]["MethodName"], "Work");
        for name in [
            "Id",
            "InsertionTime",
            "ExpirationTime",
            "NextVisibleTime",
            "PopReceipt",
        ] {
            assert!(
                request.metadata[name].is_string(),
                "{name} in {:?}",
                request.metadata
            );
        }
        let trigger = request.queue_trigger("msg").unwrap();
        assert_eq!(trigger.message, message);
        assert_eq!(trigger.id, sent.id);
        assert_eq!(trigger.dequeue_count, 1);
        assert!(!trigger.pop_receipt.is_empty());
        let inserted = trigger.insertion_time.unwrap();
        assert!((inserted - sent.inserted).abs() < time::Duration::seconds(1));
        assert!(trigger.next_visible_time.unwrap() > inserted + time::Duration::seconds(20));
        assert!(trigger.expiration_time.unwrap() > inserted + time::Duration::days(6));
        assert_eq!(
            invoker.calls().len(),
            1,
            "a deleted message is not run again"
        );
    }

    #[tokio::test]
    async fn a_failing_message_is_retried_with_a_growing_dequeue_count_then_moved_to_the_poison_queue()
     {
        let name = queue_name("poison");
        let queues = Azurite::shared().queues();
        let queue = queues.queue(&name).unwrap();
        queue.create_if_missing().await.unwrap();
        let sent = queue.send_json(&json!({"n": 1})).await.unwrap();

        let invoker = TestInvoker::new(|_, _| Box::pin(async { Err(failure()) }));
        let runtime = start(catalog(&name, &[]), invoker.clone(), quick(1));
        let poison = queues.queue(&host::poison_queue_name(&name)).unwrap();
        let started = Instant::now();
        loop {
            if let Ok(found) = poison.peek(32).await
                && !found.is_empty()
            {
                assert_eq!(found.len(), 1);
                assert_eq!(
                    found[0].json().unwrap(),
                    json!({"n": 1}),
                    "the original text"
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no poison message"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        queue_empty(&queue, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        runtime.abort();

        let counts: Vec<u32> = invoker
            .calls()
            .iter()
            .map(|(_, r, _)| {
                let t = r.queue_trigger("msg").unwrap();
                assert_eq!(t.id, sent.id);
                t.dequeue_count
            })
            .collect();
        assert_eq!(counts, [1, 2, 3, 4, 5], "five attempts, then poison");
        let calls = invoker.calls();
        for pair in calls.windows(2) {
            assert!(
                pair[1].2 - pair[0].2 >= Duration::from_millis(500),
                "a failed message waits out its hold before it is retried"
            );
        }
    }

    #[tokio::test]
    async fn the_hold_is_renewed_while_a_slow_function_runs() {
        let name = queue_name("renew");
        let queue = Azurite::shared().queues().queue(&name).unwrap();
        queue.create_if_missing().await.unwrap();
        queue.send_json(&json!({"slow": true})).await.unwrap();

        let invoker = TestInvoker::new(|_, _| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(7)).await;
                Ok(InvocationResponse::new())
            })
        });
        let runtime = start(catalog(&name, &[]), invoker.clone(), quick(3));
        let (_, _, began) = eventually(Duration::from_secs(10), || {
            invoker.calls().into_iter().next()
        })
        .await;
        // a second reader polls through more than twice the hold while the function runs
        while began.elapsed() < Duration::from_millis(6500) {
            let stolen = queue.receive(1, Duration::from_secs(30)).await.unwrap();
            assert!(
                stolen.is_empty(),
                "the message became visible {:?} into a run with a 3 s hold",
                began.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        queue_empty(&queue, Duration::from_secs(5)).await;
        runtime.abort();
        assert_eq!(invoker.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_message_of_a_runtime_killed_mid_run_is_processed_by_another_runtime_after_its_hold()
    {
        let name = queue_name("killed");
        let queue = Azurite::shared().queues().queue(&name).unwrap();
        queue.create_if_missing().await.unwrap();
        let sent = queue.send_json(&json!({"tenant_id": "t9"})).await.unwrap();

        let hanging = TestInvoker::new(|_, _| Box::pin(std::future::pending()));
        let first = start(catalog(&name, &[]), hanging.clone(), quick(3));
        eventually(Duration::from_secs(10), || {
            hanging.calls().into_iter().next()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        first.abort(); // as kill -9: no delete, no more renewals
        let killed_at = Instant::now();

        let survivor = TestInvoker::succeeding();
        let second = start(catalog(&name, &[]), survivor.clone(), quick(3));
        let (_, request, at) = eventually(Duration::from_secs(15), || {
            survivor.calls().into_iter().next()
        })
        .await;
        queue_empty(&queue, Duration::from_secs(5)).await;
        second.abort();

        let trigger = request.queue_trigger("msg").unwrap();
        assert_eq!(trigger.id, sent.id);
        assert_eq!(trigger.dequeue_count, 2);
        assert_eq!(trigger.message, json!({"tenant_id": "t9"}));
        let waited = at - killed_at;
        assert!(
            waited <= Duration::from_secs(5),
            "retried {waited:?} after the kill; the hold is 3 s"
        );
        assert_eq!(hanging.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_timer_fans_out_through_the_queue_to_listeners_in_other_runtimes() {
        let name = queue_name("fanout");
        let tick = format!(
            r#"{{"bindings":[{{"name":"timer","type":"timerTrigger","direction":"in","schedule":"* * * * * *"}},
                {{"type":"queue","direction":"out","name":"work","queueName":"{name}"}}]}}"#
        );
        // the timer process: one tick queues twenty tenants, later ticks nothing
        let timer = TestInvoker::new(|function, index| {
            let function = function.to_string();
            Box::pin(async move {
                let mut res = InvocationResponse::new();
                if function == "Tick" && index == 0 {
                    for n in 0..20 {
                        let mut m = serde_json::Map::new();
                        m.insert("tenant".into(), json!(format!("t{n}")));
                        res.queue("work", m);
                    }
                }
                Ok(res)
            })
        });
        let tick_only = Arc::new(Catalog::from_sources([("Tick", tick.as_str())]).unwrap());
        let workers: Vec<Arc<TestInvoker>> = (0..2)
            .map(|_| {
                TestInvoker::new(|_, _| {
                    Box::pin(async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(InvocationResponse::new())
                    })
                })
            })
            .collect();
        let runtimes: Vec<Arc<Standalone>> = workers
            .iter()
            .map(|w| start(catalog(&name, &[]), w.clone(), quick(30)))
            .chain([start(tick_only, timer.clone(), quick(30))])
            .collect();
        let seen = eventually(Duration::from_secs(20), || {
            let all: Vec<String> = workers
                .iter()
                .flat_map(|w| w.calls())
                .map(|(_, r, _)| {
                    r.queue_trigger("msg").unwrap().message["tenant"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            (all.len() >= 20).then_some(all)
        })
        .await;
        let queue = Azurite::shared().queues().queue(&name).unwrap();
        queue_empty(&queue, Duration::from_secs(5)).await;
        for r in &runtimes {
            r.abort();
        }
        let mut tenants = seen.clone();
        tenants.sort();
        tenants.dedup();
        assert_eq!(tenants.len(), 20, "every tenant once: {seen:?}");
        assert_eq!(seen.len(), 20, "no tenant twice");
        let per_worker: Vec<usize> = workers.iter().map(|w| w.calls().len()).collect();
        eprintln!("messages per listening runtime: {per_worker:?}");
    }

    #[tokio::test]
    async fn a_message_the_host_could_not_decode_goes_to_the_poison_queue_without_a_run() {
        let name = queue_name("garbled");
        let queues = Azurite::shared().queues();
        let queue = queues.queue(&name).unwrap();
        queue.create_if_missing().await.unwrap();
        queue.send_text("{not base64}", None).await.unwrap();

        let invoker = TestInvoker::succeeding();
        let runtime = start(catalog(&name, &[]), invoker.clone(), quick(30));
        let poison = queues.queue(&host::poison_queue_name(&name)).unwrap();
        let started = Instant::now();
        let found = loop {
            if let Ok(found) = poison.peek(32).await
                && !found.is_empty()
            {
                break found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no poison message"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        runtime.abort();
        assert_eq!(found[0].text, "{not base64}", "kept byte for byte");
        queue_empty(&queue, Duration::from_secs(5)).await;
        assert!(invoker.calls().is_empty());
    }
}
