//! Running without the Functions host: timers fire from their NCRONTAB schedules and
//! queue outputs reach their queue-triggered functions in process. Both go through the
//! same invocation payloads, and the same [`Invoker`], as a host invocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument as _;

use crate::function_json::{Catalog, Trigger};
use crate::invocation::{InvocationRequest, InvocationResponse, TimerInfo, format_timestamp};

/// The future an [`Invoker`] returns.
pub type InvokeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<InvocationResponse, InvokeError>> + Send + 'a>>;

/// Runs one function for one invocation; the handler implements it once for both paths.
pub trait Invoker: Send + Sync + 'static {
    /// Invokes `function` with the host-shaped request.
    fn invoke<'a>(&'a self, function: &'a str, request: InvocationRequest) -> InvokeFuture<'a>;
}

/// Why an invocation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No such function, or not one the host invokes this way.
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    /// The payload did not have the shape the function's trigger needs.
    #[error("bad invocation payload: {0}")]
    BadPayload(String),
    /// The function ran and failed; the log lines are kept for the host.
    #[error("{message}")]
    Failed { message: String, logs: Vec<String> },
}

/// Most attempts for a queue message before it is given up as poison (the host's default).
pub const MAX_DEQUEUE_COUNT: u32 = 5;
/// Queue messages processed at once (the host's default batch size).
const QUEUE_CONCURRENCY: usize = 16;

struct QueuedMessage {
    queue: String,
    body: Value,
    id: String,
    inserted: OffsetDateTime,
}

/// The standalone runtime: owns the timer tasks and the in-process queue.
pub struct Standalone {
    catalog: Arc<Catalog>,
    invoker: Arc<dyn Invoker>,
    queue: mpsc::UnboundedSender<QueuedMessage>,
}

impl Standalone {
    /// Starts timers for every timer function and the queue worker. Must run inside tokio.
    pub fn start(catalog: Arc<Catalog>, invoker: Arc<dyn Invoker>) -> Arc<Standalone> {
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = Arc::new(Standalone {
            catalog,
            invoker,
            queue: tx,
        });
        for function in runtime.catalog.iter() {
            if let Trigger::Timer { .. } = function.trigger {
                let run_on_startup = function
                    .bindings
                    .iter()
                    .any(|b| b.kind == "timerTrigger" && b.run_on_startup == Some(true));
                tokio::spawn(
                    runtime
                        .clone()
                        .run_timer(function.name.clone(), run_on_startup),
                );
            }
        }
        tokio::spawn(runtime.clone().run_queue(rx));
        runtime
    }

    /// Invokes a function and delivers its queue outputs in process.
    pub async fn invoke(
        &self,
        function: &str,
        request: InvocationRequest,
    ) -> Result<InvocationResponse, InvokeError> {
        let response = self.invoker.invoke(function, request).await?;
        self.deliver_outputs(function, &response);
        Ok(response)
    }

    /// Sends each queue output binding's messages to the functions triggered by that queue.
    pub fn deliver_outputs(&self, function: &str, response: &InvocationResponse) {
        let Some(definition) = self.catalog.get(function) else {
            return;
        };
        for (binding, queue) in &definition.queue_outputs {
            for body in response.queued(binding) {
                let message = QueuedMessage {
                    queue: queue.clone(),
                    body,
                    id: uuid_v4(),
                    inserted: OffsetDateTime::now_utc(),
                };
                // the receiver lives as long as the runtime
                self.queue.send(message).ok();
            }
        }
    }

    async fn run_timer(self: Arc<Self>, name: String, run_on_startup: bool) {
        let Some(Trigger::Timer { binding, schedule }) =
            self.catalog.get(&name).map(|f| f.trigger.clone())
        else {
            return;
        };
        let mut last: Option<OffsetDateTime> = None;
        if run_on_startup {
            self.fire_timer(
                &name,
                &binding,
                None,
                schedule.next_after(OffsetDateTime::now_utc()),
                false,
            )
            .await;
        }
        loop {
            let Some(due) = schedule.next_after(OffsetDateTime::now_utc()) else {
                tracing::warn!(function = %name, %schedule, "schedule never fires again; timer stopped");
                return;
            };
            let wait = due - OffsetDateTime::now_utc();
            tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
            // a timer that wakes more than a minute late (suspended machine) is past due
            let late = OffsetDateTime::now_utc() - due > time::Duration::minutes(1);
            self.fire_timer(&name, &binding, last, schedule.next_after(due), late)
                .await;
            last = Some(due);
        }
    }

    async fn fire_timer(
        &self,
        name: &str,
        binding: &str,
        last: Option<OffsetDateTime>,
        next: Option<OffsetDateTime>,
        is_past_due: bool,
    ) {
        let timer = TimerInfo {
            is_past_due,
            last,
            next,
        };
        let body = json!({
            "Data": { binding: timer.to_value() },
            "Metadata": { "sys": sys_metadata(name) },
        });
        let span = tracing::info_span!("invocation", function = %name, invocation_id = %uuid_v4());
        let outcome = match InvocationRequest::from_value(body) {
            Ok(request) => self.invoke(name, request).instrument(span).await,
            Err(e) => Err(InvokeError::BadPayload(e.0)),
        };
        match outcome {
            Ok(_) => tracing::info!(function = %name, "timer run finished"),
            Err(e) => tracing::error!(function = %name, error = %e, "timer run failed"),
        }
    }

    async fn run_queue(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<QueuedMessage>) {
        let slots = Arc::new(Semaphore::new(QUEUE_CONCURRENCY));
        while let Some(message) = rx.recv().await {
            let consumers: Vec<(String, String)> = self
                .catalog
                .queue_consumers(&message.queue)
                .filter_map(|f| match &f.trigger {
                    Trigger::Queue { binding, .. } => Some((f.name.clone(), binding.clone())),
                    _ => None,
                })
                .collect();
            if consumers.is_empty() {
                tracing::warn!(queue = %message.queue, "no function consumes this queue; message dropped");
                continue;
            }
            let message = Arc::new(message);
            for (function, binding) in consumers {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let runtime = self.clone();
                let message = message.clone();
                tokio::spawn(async move {
                    runtime.consume(&function, &binding, &message).await;
                    drop(permit);
                });
            }
        }
    }

    async fn consume(&self, function: &str, binding: &str, message: &QueuedMessage) {
        for dequeue_count in 1..=MAX_DEQUEUE_COUNT {
            let now = OffsetDateTime::now_utc();
            let mut metadata = Map::new();
            metadata.insert("DequeueCount".into(), json!(dequeue_count));
            metadata.insert("Id".into(), json!(message.id));
            metadata.insert(
                "InsertionTime".into(),
                json!(format_timestamp(message.inserted)),
            );
            metadata.insert(
                "ExpirationTime".into(),
                json!(format_timestamp(message.inserted + time::Duration::days(7))),
            );
            metadata.insert(
                "NextVisibleTime".into(),
                json!(format_timestamp(now + time::Duration::minutes(10))),
            );
            metadata.insert("PopReceipt".into(), json!(uuid_v4()));
            metadata.insert("sys".into(), sys_metadata(function));
            let body = json!({ "Data": { binding: message.body }, "Metadata": metadata });
            let span = tracing::info_span!("invocation", function, invocation_id = %uuid_v4(), dequeue_count);
            let outcome = match InvocationRequest::from_value(body) {
                Ok(request) => self.invoke(function, request).instrument(span).await,
                Err(e) => Err(InvokeError::BadPayload(e.0)),
            };
            match outcome {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(function, queue = %message.queue, dequeue_count, error = %e, "queue message failed");
                    if dequeue_count < MAX_DEQUEUE_COUNT {
                        tokio::time::sleep(Duration::from_millis(250 << dequeue_count)).await;
                    }
                }
            }
        }
        tracing::error!(function, queue = %message.queue, id = %message.id, "queue message given up after {MAX_DEQUEUE_COUNT} attempts (poison)");
    }
}

/// `Metadata.sys` as the host sends it.
fn sys_metadata(function: &str) -> Value {
    json!({
        "MethodName": function,
        "UtcNow": format_timestamp(OffsetDateTime::now_utc()),
        "RandGuid": uuid_v4(),
    })
}

/// A random GUID string, without pulling a UUID crate into the protocol crate.
fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&random_u64().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; these ids need uniqueness, not secrecy.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(String, InvocationRequest)>>,
        fail_times: Mutex<u32>,
    }

    impl Invoker for Recorder {
        fn invoke<'a>(&'a self, function: &'a str, request: InvocationRequest) -> InvokeFuture<'a> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .unwrap()
                    .push((function.to_string(), request));
                match function {
                    "Tick" => {
                        let mut res = InvocationResponse::new();
                        let mut m = Map::new();
                        m.insert("tenant".into(), json!("t1"));
                        res.queue("work", m);
                        Ok(res)
                    }
                    "Work" => {
                        let mut fails = self.fail_times.lock().unwrap();
                        if *fails > 0 {
                            *fails -= 1;
                            return Err(InvokeError::Failed {
                                message: "flaky".into(),
                                logs: vec![],
                            });
                        }
                        Ok(InvocationResponse::new())
                    }
                    other => Err(InvokeError::UnknownFunction(other.into())),
                }
            })
        }
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(
            Catalog::from_sources([
                (
                    "Tick",
                    r#"{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"* * * * * *"},
                        {"type":"queue","direction":"out","name":"work","queueName":"tenant-work"}]}"#,
                ),
                (
                    "Work",
                    r#"{"bindings":[{"name":"msg","type":"queueTrigger","direction":"in","queueName":"tenant-work"}]}"#,
                ),
            ])
            .unwrap(),
        )
    }

    async fn wait_for(recorder: &Recorder, what: impl Fn(&[(String, InvocationRequest)]) -> bool) {
        for _ in 0..400 {
            if what(&recorder.calls.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out; calls: {:?}",
            recorder
                .calls
                .lock()
                .unwrap()
                .iter()
                .map(|c| &c.0)
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn timer_fires_with_the_host_payload_and_its_queue_output_reaches_the_consumer() {
        let recorder = Arc::new(Recorder::default());
        let _runtime = Standalone::start(catalog(), recorder.clone());
        wait_for(&recorder, |calls| calls.iter().any(|c| c.0 == "Work")).await;
        let calls = recorder.calls.lock().unwrap();
        let (_, tick) = calls.iter().find(|c| c.0 == "Tick").unwrap();
        let timer = tick.timer("timer").unwrap();
        assert!(timer.next.is_some());
        assert_eq!(tick.metadata["sys"]["MethodName"], "Tick");
        assert!(tick.utc_now().is_some());
        let (_, work) = calls.iter().find(|c| c.0 == "Work").unwrap();
        assert_eq!(work.data["msg"], json!({"tenant": "t1"}));
        assert_eq!(work.metadata["DequeueCount"], 1);
        assert_eq!(work.metadata["sys"]["MethodName"], "Work");
    }

    #[tokio::test]
    async fn a_failing_queue_message_is_retried_with_a_growing_dequeue_count() {
        let recorder = Arc::new(Recorder::default());
        *recorder.fail_times.lock().unwrap() = 2;
        let runtime = Standalone {
            catalog: catalog(),
            invoker: recorder.clone(),
            queue: mpsc::unbounded_channel().0,
        };
        let message = QueuedMessage {
            queue: "tenant-work".into(),
            body: json!({"n": 1}),
            id: uuid_v4(),
            inserted: OffsetDateTime::now_utc(),
        };
        runtime.consume("Work", "msg", &message).await;
        let counts: Vec<Value> = recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.metadata["DequeueCount"].clone())
            .collect();
        assert_eq!(counts, [json!(1), json!(2), json!(3)]);
    }

    #[test]
    fn generated_ids_look_like_guids_and_differ() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, uuid_v4());
    }
}
