//! The standalone runtime's Storage queue side, behaving as the Functions host's queue
//! listener does: poll each queue-triggered function's queue, hold what it receives
//! invisible (renewed while the function runs), delete on success, leave on failure so
//! the message reappears when its hold runs out, and move a message to `<queue>-poison`
//! after the maximum dequeue count. Any number of runtimes may listen to one queue; the
//! service gives each message to one of them at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queues::{Queue, Queues, Received};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::function_json::{Catalog, Trigger};
use crate::invocation::{InvocationRequest, InvocationResponse, QueueTrigger};
use crate::standalone::{InvokeError, Standalone, random_u64, sys_metadata, uuid_v4};

/// Most attempts for a queue message before it is given up as poison (the host's default).
pub const MAX_DEQUEUE_COUNT: u32 = 5;

/// How the standalone runtime listens to queues (the host's `extensions.queues` knobs).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// How long a received message stays invisible; renewed every third of it while its
    /// function runs, so a killed process's message is retried within about this long.
    pub visibility: Duration,
    /// Attempts before a message moves to `<queue>-poison`.
    pub max_dequeue_count: u32,
    /// Messages of one function run at once (and received in one request, at most 32).
    pub batch_size: u32,
    /// First wait after an empty poll; doubled per empty poll up to `max_polling_interval`,
    /// back to this after a message.
    pub min_polling_interval: Duration,
    /// Longest wait between polls of an empty queue.
    pub max_polling_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            visibility: Duration::from_secs(60),
            max_dequeue_count: MAX_DEQUEUE_COUNT,
            batch_size: 16,
            min_polling_interval: Duration::from_millis(100),
            max_polling_interval: Duration::from_secs(2),
        }
    }
}

/// The name of the queue a queue's poison messages go to.
pub fn poison_queue_name(queue: &str) -> String {
    format!("{queue}-poison")
}

/// The runtime's queues: a client per queue name the catalog uses (triggers, outputs and
/// the poison queues of the triggers).
pub(crate) struct QueueRuntime {
    pub(crate) settings: QueueSettings,
    clients: BTreeMap<String, Queue>,
    queues: Queues,
}

impl QueueRuntime {
    pub(crate) fn new(
        catalog: &Catalog,
        queues: Queues,
        settings: QueueSettings,
    ) -> Result<QueueRuntime, queues::Error> {
        let mut clients = BTreeMap::new();
        for function in catalog.iter() {
            let mut names: Vec<String> = function.queue_outputs.values().cloned().collect();
            if let Trigger::Queue { queue, .. } = &function.trigger {
                names.push(queue.clone());
                names.push(poison_queue_name(queue));
            }
            for name in names {
                if let std::collections::btree_map::Entry::Vacant(slot) = clients.entry(name) {
                    let client = queues.queue(slot.key())?;
                    slot.insert(client);
                }
            }
        }
        Ok(QueueRuntime {
            settings,
            clients,
            queues,
        })
    }

    fn queue(&self, name: &str) -> Result<Queue, queues::Error> {
        match self.clients.get(name) {
            Some(q) => Ok(q.clone()),
            None => self.queues.queue(name),
        }
    }

    /// Creates every trigger and output queue (poison queues wait until needed). Failures
    /// are logged: listeners and senders create a missing queue when they meet it.
    pub(crate) async fn create_queues(&self, catalog: &Catalog) {
        for function in catalog.iter() {
            let mut names: Vec<&String> = function.queue_outputs.values().collect();
            if let Trigger::Queue { queue, .. } = &function.trigger {
                names.push(queue);
            }
            for name in names {
                if let Some(queue) = self.clients.get(name)
                    && let Err(e) = queue.create_if_missing().await
                {
                    tracing::warn!(queue = %name, error = %e, "queue not created at start-up; retried when used");
                }
            }
        }
    }

    /// Writes each queue output binding's messages of `function`'s answer to its queue.
    pub(crate) async fn deliver_outputs(
        &self,
        catalog: &Catalog,
        function: &str,
        response: &InvocationResponse,
    ) -> Result<(), InvokeError> {
        let Some(definition) = catalog.get(function) else {
            return Ok(());
        };
        for (binding, queue_name) in &definition.queue_outputs {
            let messages = response.queued(binding);
            if messages.is_empty() {
                continue;
            }
            let queue = self
                .queue(queue_name)
                .map_err(|e| output_error(binding, &e))?;
            for message in &messages {
                send_output(&queue, message)
                    .await
                    .map_err(|e| output_error(binding, &e))?;
            }
            tracing::info!(function, queue = %queue_name, count = messages.len(), "queue output written");
        }
        Ok(())
    }
}

fn output_error(binding: &str, e: &queues::Error) -> InvokeError {
    InvokeError::Failed {
        message: format!("queue output binding {binding}: {e}"),
        logs: Vec::new(),
    }
}

/// One output message: JSON values as the host writes them; a string is its own text.
async fn send_output(queue: &Queue, message: &Value) -> Result<(), queues::Error> {
    let text = match message {
        Value::String(s) => queues::encoding::encode_text(s),
        other => queues::encoding::encode_json(other),
    };
    match queue.send_text(&text, None).await {
        Err(queues::Error::QueueNotFound) => {
            queue.create_if_missing().await?;
            queue.send_text(&text, None).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

impl Standalone {
    /// Polls the queue of one queue-triggered function for as long as the runtime runs.
    pub(crate) async fn listen(self: Arc<Self>, function: String, binding: String, queue: String) {
        let Some(runtime) = self.queues.clone() else {
            return;
        };
        let settings = runtime.settings.clone();
        let (Ok(source), Ok(poison)) = (
            runtime.queue(&queue),
            runtime.queue(&poison_queue_name(&queue)),
        ) else {
            tracing::error!(
                function,
                queue,
                "queue listener not started: bad queue name"
            );
            return;
        };
        let batch = settings.batch_size.clamp(1, queues::MAX_BATCH) as usize;
        let slots = Arc::new(Semaphore::new(batch));
        // dropping the set (the runtime aborted) aborts the messages in flight, as a kill would
        let mut running = JoinSet::new();
        let mut idle = settings.min_polling_interval;
        let mut failing = false;
        tracing::info!(function, queue, "queue listener started");
        loop {
            while running.try_join_next().is_some() {}
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(more) = slots.clone().try_acquire_owned() {
                permits.push(more);
            }
            match source
                .receive(permits.len() as u32, settings.visibility)
                .await
            {
                Ok(messages) if messages.is_empty() => {
                    if failing {
                        tracing::info!(function, queue, "queue reachable again");
                        failing = false;
                    }
                    drop(permits);
                    tokio::time::sleep(jittered(idle)).await;
                    idle = (idle * 2).min(settings.max_polling_interval);
                }
                Ok(messages) => {
                    failing = false;
                    idle = settings.min_polling_interval;
                    for (message, permit) in messages.into_iter().zip(permits) {
                        let work = Work {
                            runtime: self.clone(),
                            function: function.clone(),
                            binding: binding.clone(),
                            source: source.clone(),
                            poison: poison.clone(),
                            settings: settings.clone(),
                        };
                        let span = tracing::info_span!(
                            "invocation",
                            function = %work.function,
                            invocation_id = %uuid_v4(),
                            queue = %work.source.name(),
                            message_id = %message.id,
                            dequeue_count = message.dequeue_count,
                        );
                        running.spawn(
                            async move {
                                work.process(message).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(queues::Error::QueueNotFound) => {
                    drop(permits);
                    if let Err(e) = source.create_if_missing().await {
                        tracing::warn!(function, queue, error = %e, "cannot create the queue");
                        tokio::time::sleep(settings.max_polling_interval).await;
                    }
                }
                Err(e) => {
                    drop(permits);
                    if failing {
                        tracing::debug!(function, queue, error = %e, "queue still unreachable");
                    } else {
                        tracing::warn!(function, queue, error = %e, "cannot receive from the queue; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(jittered(settings.max_polling_interval)).await;
                }
            }
        }
    }
}

/// Everything one message's processing needs.
struct Work {
    runtime: Arc<Standalone>,
    function: String,
    binding: String,
    source: Queue,
    poison: Queue,
    settings: QueueSettings,
}

impl Work {
    async fn process(&self, message: Received) {
        let function = self.function.as_str();
        if message.dequeue_count > self.settings.max_dequeue_count {
            // an earlier holder died on its last attempt
            self.to_poison(&message, "dequeue count over the maximum")
                .await;
            return;
        }
        let text = match queues::encoding::decode_text(&message.text) {
            Ok(text) => text,
            Err(e) => {
                self.to_poison(&message, &e.to_string()).await;
                return;
            }
        };
        let trigger = QueueTrigger {
            message: Value::Null,
            id: message.id.clone(),
            dequeue_count: message.dequeue_count,
            insertion_time: Some(message.inserted),
            expiration_time: Some(message.expires),
            next_visible_time: Some(message.next_visible),
            pop_receipt: message.pop_receipt.clone(),
        };
        let body = trigger.host_body(&self.binding, &text, sys_metadata(function));
        let dequeue_count = message.dequeue_count;
        let held = Mutex::new(message);
        let invocation = async {
            match InvocationRequest::from_value(body) {
                Ok(request) => self.runtime.invoke(function, request).await,
                Err(e) => Err(InvokeError::BadPayload(e.0)),
            }
        };
        tokio::pin!(invocation);
        let outcome = tokio::select! {
            outcome = &mut invocation => outcome,
            () = self.keep_holding(&held) => invocation.await,
        };
        let message = held.into_inner().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(_) => {
                if let Err(e) = self.source.delete(&message).await {
                    tracing::warn!(error = %e, "processed, but the message could not be deleted; it may run again");
                }
            }
            Err(e) if dequeue_count >= self.settings.max_dequeue_count => {
                self.to_poison(&message, &e.to_string()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue message failed; it is retried when its hold runs out");
            }
        }
    }

    /// Renews the hold every third of the visibility timeout; returns only when the hold
    /// is lost (another consumer may have the message now).
    async fn keep_holding(&self, held: &Mutex<Received>) {
        let every = (self.settings.visibility / 3).max(Duration::from_millis(500));
        loop {
            tokio::time::sleep(every).await;
            let mut message = held.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match self
                .source
                .extend(&mut message, self.settings.visibility)
                .await
            {
                Ok(()) => *held.lock().unwrap_or_else(|p| p.into_inner()) = message,
                Err(e @ queues::Error::MessageGone(_)) => {
                    tracing::warn!(function = %self.function, message_id = %message.id, error = %e, "lost the hold on a queue message while its function runs");
                    return;
                }
                Err(e) => {
                    tracing::warn!(function = %self.function, message_id = %message.id, error = %e, "could not renew the hold; trying again");
                }
            }
        }
    }

    /// Copies the message's stored text to the poison queue, then deletes it.
    async fn to_poison(&self, message: &Received, reason: &str) {
        let poison = &self.poison;
        let copied = match poison.send_text(&message.text, None).await {
            Err(queues::Error::QueueNotFound) => match poison.create_if_missing().await {
                Ok(()) => poison.send_text(&message.text, None).await,
                Err(e) => Err(e),
            },
            other => other,
        };
        if let Err(e) = copied {
            tracing::error!(function = %self.function, message_id = %message.id, error = %e, "could not move a message to the poison queue; it is retried");
            return;
        }
        if let Err(e) = self.source.delete(message).await {
            tracing::warn!(function = %self.function, message_id = %message.id, error = %e, "copied to the poison queue, but the original could not be deleted");
        }
        tracing::error!(
            function = %self.function,
            queue = %self.source.name(),
            poison_queue = %poison.name(),
            message_id = %message.id,
            dequeue_count = message.dequeue_count,
            reason,
            "queue message moved to the poison queue"
        );
    }
}

/// `d` give or take a fifth, so runtimes polling one queue drift apart.
fn jittered(d: Duration) -> Duration {
    let fifth = d.as_millis() as u64 / 5;
    if fifth == 0 {
        return d;
    }
    let offset = random_u64() % (2 * fifth + 1);
    (d + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(fifth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..200 {
            let j = jittered(Duration::from_millis(1000));
            assert!((800..=1200).contains(&(j.as_millis() as u64)), "{j:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn poison_queues_are_named_as_the_host_names_them() {
        assert_eq!(poison_queue_name("sync-tenants"), "sync-tenants-poison");
    }
}
