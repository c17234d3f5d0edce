//! Running without the Functions host: timers fire from their NCRONTAB schedules, and
//! queue-triggered functions listen to real Storage queues (see [`crate::storage_queues`]).
//! Queue outputs of every function are written to their Storage queue, so a timer in one
//! process fans out to queue listeners in any number of processes. Everything goes through
//! the same invocation payloads, and the same [`Invoker`], as a host invocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use crate::function_json::{Catalog, Trigger};
use crate::invocation::{InvocationRequest, InvocationResponse, TimerInfo, format_timestamp};
use crate::storage_queues::{QueueRuntime, QueueSettings};

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

/// Why the standalone runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A function triggers on or writes to a queue, and no queue service was given.
    #[error("function {function} uses queue {queue}, but no queue service is configured")]
    NoQueueService { function: String, queue: String },
    /// A queue name the catalog uses cannot be a Storage queue (a poison queue name too long).
    #[error("queue {queue}: {source}")]
    Queue {
        queue: String,
        #[source]
        source: queues::Error,
    },
}

/// The standalone runtime: owns the timer tasks and the queue listeners.
pub struct Standalone {
    catalog: Arc<Catalog>,
    invoker: Arc<dyn Invoker>,
    pub(crate) queues: Option<Arc<QueueRuntime>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Standalone {
    /// Starts timers for every timer function and a queue listener for every
    /// queue-triggered one, and creates the queues. Must run inside tokio. `queues` may be
    /// `None` only when no function uses a queue.
    pub fn start(
        catalog: Arc<Catalog>,
        invoker: Arc<dyn Invoker>,
        queues: Option<(queues::Queues, QueueSettings)>,
    ) -> Result<Arc<Standalone>, StartError> {
        let queues = match queues {
            Some((queues, settings)) => Some(Arc::new(
                QueueRuntime::new(&catalog, queues, settings).map_err(|source| {
                    let queue = match &source {
                        queues::Error::InvalidName(name) => name.clone(),
                        _ => String::new(),
                    };
                    StartError::Queue { queue, source }
                })?,
            )),
            None => {
                if let Some((function, queue)) = catalog.queue_use() {
                    return Err(StartError::NoQueueService {
                        function: function.to_string(),
                        queue: queue.to_string(),
                    });
                }
                None
            }
        };
        let runtime = Arc::new(Standalone {
            catalog,
            invoker,
            queues,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        if let Some(queues) = runtime.queues.clone() {
            let catalog = runtime.catalog.clone();
            tasks.push(
                tokio::spawn(async move { queues.create_queues(&catalog).await }).abort_handle(),
            );
        }
        for function in runtime.catalog.iter() {
            match &function.trigger {
                Trigger::Timer { .. } => {
                    let run_on_startup = function
                        .bindings
                        .iter()
                        .any(|b| b.kind == "timerTrigger" && b.run_on_startup == Some(true));
                    let task = runtime
                        .clone()
                        .run_timer(function.name.clone(), run_on_startup);
                    tasks.push(tokio::spawn(task).abort_handle());
                }
                Trigger::Queue { binding, queue } => {
                    let task = runtime.clone().listen(
                        function.name.clone(),
                        binding.clone(),
                        queue.clone(),
                    );
                    tasks.push(tokio::spawn(task).abort_handle());
                }
                Trigger::Http { .. } => {}
            }
        }
        *runtime.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(runtime)
    }

    /// Invokes a function and writes its queue outputs to their queues. An output that
    /// cannot be written fails the invocation, as it does under the host.
    pub async fn invoke(
        &self,
        function: &str,
        request: InvocationRequest,
    ) -> Result<InvocationResponse, InvokeError> {
        let response = self.invoker.invoke(function, request).await?;
        if let Some(queues) = &self.queues {
            queues
                .deliver_outputs(&self.catalog, function, &response)
                .await?;
        }
        Ok(response)
    }

    /// Stops every timer and queue listener at once, abandoning the messages in flight as a
    /// killed process would: they are neither deleted nor renewed, and reappear when their
    /// hold runs out.
    pub fn abort(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
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
}

/// `Metadata.sys` as the host sends it.
pub(crate) fn sys_metadata(function: &str) -> Value {
    json!({
        "MethodName": function,
        "UtcNow": format_timestamp(OffsetDateTime::now_utc()),
        "RandGuid": uuid_v4(),
    })
}

/// A random GUID string, without pulling a UUID crate into the protocol crate.
pub(crate) fn uuid_v4() -> String {
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

pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; these ids need uniqueness, not secrecy.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(OffsetDateTime::now_utc().unix_timestamp_nanos() as u128);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(String, InvocationRequest)>>,
    }

    impl Invoker for Recorder {
        fn invoke<'a>(&'a self, function: &'a str, request: InvocationRequest) -> InvokeFuture<'a> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .unwrap()
                    .push((function.to_string(), request));
                Ok(InvocationResponse::new())
            })
        }
    }

    #[tokio::test]
    async fn a_timer_fires_with_the_host_payload() {
        let catalog = Catalog::from_sources([(
            "Tick",
            r#"{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"* * * * * *"}]}"#,
        )])
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        let runtime = Standalone::start(Arc::new(catalog), recorder.clone(), None).unwrap();
        for _ in 0..300 {
            if !recorder.calls.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runtime.abort();
        let calls = recorder.calls.lock().unwrap();
        let (name, tick) = calls.first().expect("the timer fired within 3 s");
        assert_eq!(name, "Tick");
        let timer = tick.timer("timer").unwrap();
        assert!(timer.next.is_some());
        assert_eq!(tick.metadata["sys"]["MethodName"], "Tick");
        assert!(tick.utc_now().is_some());
    }

    #[test]
    fn a_catalog_that_uses_queues_needs_a_queue_service() {
        let catalog = Catalog::from_sources([(
            "Tick",
            r#"{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"0 0 * * * *"},
                {"type":"queue","direction":"out","name":"work","queueName":"tenant-work"}]}"#,
        )])
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async {
                Standalone::start(Arc::new(catalog), Arc::new(Recorder::default()), None)
            })
            .err()
            .expect("refused");
        assert!(err.to_string().contains("tenant-work"), "{err}");
    }

    #[test]
    fn generated_ids_look_like_guids_and_differ() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, uuid_v4());
    }
}
