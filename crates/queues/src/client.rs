//! The account's queues: one official `QueueClient` per queue, sharing one HTTP client.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_core::http::{
    ClientOptions, ExponentialRetryOptions, RequestContent, RetryOptions, Transport,
};
use azure_storage_queue::models::{
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueMessage, ReceivedMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use serde_json::Value;
use tables::{Credential, StorageAccount};
use time::OffsetDateTime;
use url::Url;

use crate::encoding::{self, DecodeError, MAX_MESSAGE_TEXT};
use crate::error::Error;
use crate::shared_key::SharedKeyPolicy;

/// Most messages one receive may return (the service's limit).
pub const MAX_BATCH: u32 = 32;

const POP_RECEIPT: HeaderName = HeaderName::from_static("x-ms-popreceipt");
const TIME_NEXT_VISIBLE: HeaderName = HeaderName::from_static("x-ms-time-next-visible");

/// Timeouts and the retry budget of every queue request.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Retries after the first attempt (the official client retries 408, 429, 5xx and
    /// connection errors, honouring `Retry-After`).
    pub max_retries: u32,
    /// Total time an operation may spend retrying.
    pub total_budget: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempt_timeout: Duration::from_secs(10),
            max_retries: 3,
            total_budget: Duration::from_secs(15),
        }
    }
}

/// The queues of one storage account. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Queues {
    endpoint: Url,
    auth: Auth,
    options: Options,
    transport: Transport,
}

#[derive(Clone)]
enum Auth {
    SharedKey(Arc<SharedKeyPolicy>),
    Token(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::SharedKey(_) => "shared key",
            Auth::Token(_) => "token",
        };
        write!(f, "Queues({}, {auth})", self.endpoint)
    }
}

impl Queues {
    /// The account's queue service with default options: Shared Key when the account
    /// came from a connection string, bearer tokens for an identity-based connection.
    pub fn new(account: &StorageAccount) -> Result<Queues, Error> {
        Queues::with_options(account, Options::default())
    }

    /// The queue service with explicit timeouts and retry budget.
    pub fn with_options(account: &StorageAccount, options: Options) -> Result<Queues, Error> {
        let endpoint = account.queue_endpoint.clone().ok_or_else(|| {
            Error::Config(
                "the storage account has no queue endpoint (add QueueEndpoint to the connection \
                 string, or set AzureWebJobsStorage__queueServiceUri or __accountName)"
                    .into(),
            )
        })?;
        let auth = match &account.credential {
            Credential::SharedKey { account, key } => {
                Auth::SharedKey(Arc::new(SharedKeyPolicy::new(account, key)))
            }
            Credential::Token(credential) => {
                if endpoint.scheme() != "https" {
                    return Err(Error::Config(
                        "bearer tokens are only sent over https".into(),
                    ));
                }
                Auth::Token(credential.clone())
            }
        };
        let http = reqwest::Client::builder()
            .timeout(options.attempt_timeout)
            .connect_timeout(options.attempt_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Queues {
            endpoint,
            auth,
            options,
            transport: Transport::new(Arc::new(http)),
        })
    }

    /// One queue of the account, by name (not created here: see [`Queue::create_if_missing`]).
    pub fn queue(&self, name: &str) -> Result<Queue, Error> {
        validate_queue_name(name)?;
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| Error::Config("the queue endpoint cannot be a base URL".into()))?
            .pop_if_empty()
            .push(name);
        let mut client_options = ClientOptions {
            transport: Some(self.transport.clone()),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: self.options.max_retries,
                max_total_elapsed: azure_core::time::Duration::try_from(self.options.total_budget)
                    .unwrap_or(azure_core::time::Duration::seconds(15)),
                max_delay: azure_core::time::Duration::seconds(5),
            }),
            ..ClientOptions::default()
        };
        let credential = match &self.auth {
            Auth::SharedKey(policy) => {
                client_options.per_try_policies.push(policy.clone());
                None
            }
            Auth::Token(credential) => Some(credential.clone()),
        };
        let options = QueueClientOptions {
            client_options,
            ..QueueClientOptions::default()
        };
        let client = QueueClient::new(url, credential, Some(options))
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Queue {
            name: name.to_string(),
            client: Arc::new(client),
        })
    }
}

/// Checks a queue name as the service does: 3-63 lowercase letters, digits and single
/// dashes, starting and ending with a letter or digit.
pub fn validate_queue_name(name: &str) -> Result<(), Error> {
    let valid = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// One queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    name: String,
    client: Arc<QueueClient>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({})", self.name)
    }
}

/// A message this consumer received and holds invisible until `next_visible`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    /// Proves the hold; changes with every visibility update.
    pub pop_receipt: String,
    /// How many times the message has been received, this time included.
    pub dequeue_count: u32,
    pub inserted: OffsetDateTime,
    pub expires: OffsetDateTime,
    pub next_visible: OffsetDateTime,
    /// The stored text (base64 for messages written as the host writes them).
    pub text: String,
}

impl Received {
    /// The message's JSON, decoded as the host decodes it.
    pub fn json(&self) -> Result<Value, DecodeError> {
        encoding::decode_json(&self.text)
    }
}

/// A message seen without being received (no hold, no pop receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub id: String,
    pub dequeue_count: u32,
    pub inserted: OffsetDateTime,
    pub expires: OffsetDateTime,
    pub text: String,
}

impl Peeked {
    /// The message's JSON, decoded as the host decodes it.
    pub fn json(&self) -> Result<Value, DecodeError> {
        encoding::decode_json(&self.text)
    }
}

/// What the service answered to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub id: String,
    pub inserted: OffsetDateTime,
    pub next_visible: OffsetDateTime,
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the queue unless it exists (safe to call from every instance at start).
    pub async fn create_if_missing(&self) -> Result<(), Error> {
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            // exists with other metadata: still the queue we need
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(Error::from_azure(e, false)),
        }
    }

    /// Sends a JSON message, encoded as the Functions host encodes them (base64 of the JSON).
    pub async fn send_json(&self, message: &Value) -> Result<Sent, Error> {
        self.send_text(&encoding::encode_json(message), None).await
    }

    /// Sends a JSON message that stays invisible for `delay` (at most 7 days).
    pub async fn send_json_after(&self, message: &Value, delay: Duration) -> Result<Sent, Error> {
        self.send_text(&encoding::encode_json(message), Some(delay))
            .await
    }

    /// Sends already-stored text as is (a poison copy keeps the original's bytes).
    pub async fn send_text(&self, text: &str, delay: Option<Duration>) -> Result<Sent, Error> {
        if text.len() > MAX_MESSAGE_TEXT {
            return Err(Error::TooLarge { size: text.len() });
        }
        let body = QueueMessage {
            message_text: Some(text.to_string()),
        };
        let content = RequestContent::try_from(body)
            .map_err(|e| Error::Protocol(format!("message XML: {e}")))?;
        let options = QueueClientSendMessageOptions {
            visibility_timeout: delay.map(seconds).filter(|s| *s > 0),
            ..Default::default()
        };
        let response = self
            .client
            .send_message(content, Some(options))
            .await
            .map_err(|e| Error::from_azure(e, false))?;
        let sent = response
            .into_model()
            .map_err(|e| Error::Protocol(e.to_string()))?
            .into_message()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Sent {
            id: sent.message_id.ok_or_else(|| missing("MessageId"))?,
            inserted: sent
                .insertion_time
                .ok_or_else(|| missing("InsertionTime"))?,
            next_visible: sent
                .time_next_visible
                .ok_or_else(|| missing("TimeNextVisible"))?,
        })
    }

    /// Receives up to `max` messages (1-32) and holds them invisible for `visibility`
    /// (at least one second). An empty vector means nothing is visible now.
    pub async fn receive(&self, max: u32, visibility: Duration) -> Result<Vec<Received>, Error> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_BATCH) as i32),
            visibility_timeout: Some(seconds(visibility).max(1)),
            ..Default::default()
        };
        let response = self
            .client
            .receive_messages(Some(options))
            .await
            .map_err(|e| Error::from_azure(e, false))?;
        let messages = response
            .into_model()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        messages
            .items
            .unwrap_or_default()
            .into_iter()
            .map(received)
            .collect()
    }

    /// Up to `max` messages at the front of the queue, without holding them.
    pub async fn peek(&self, max: u32) -> Result<Vec<Peeked>, Error> {
        let options = azure_storage_queue::models::QueueClientPeekMessagesOptions {
            number_of_messages: Some(max.clamp(1, MAX_BATCH) as i32),
            ..Default::default()
        };
        let response = self
            .client
            .peek_messages(Some(options))
            .await
            .map_err(|e| Error::from_azure(e, false))?;
        let messages = response
            .into_model()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        messages
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                Ok(Peeked {
                    id: m.message_id.ok_or_else(|| missing("MessageId"))?,
                    dequeue_count: count(m.dequeue_count),
                    inserted: m.insertion_time.ok_or_else(|| missing("InsertionTime"))?,
                    expires: m.expiration_time.ok_or_else(|| missing("ExpirationTime"))?,
                    text: m.message_text.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Keeps holding a received message for `visibility` from now (renews the hold). The
    /// message's pop receipt and `next_visible` are updated; [`Error::MessageGone`] means
    /// the hold was lost (it ran out and another consumer received the message).
    pub async fn extend(&self, message: &mut Received, visibility: Duration) -> Result<(), Error> {
        self.update(message, seconds(visibility).max(1)).await
    }

    /// Gives a received message back: it becomes visible again after `delay` (zero: now).
    pub async fn release(&self, message: &mut Received, delay: Duration) -> Result<(), Error> {
        self.update(message, seconds(delay)).await
    }

    async fn update(&self, message: &mut Received, visibility: i32) -> Result<(), Error> {
        let response = self
            .client
            .update_message(&message.id, &message.pop_receipt, visibility, None)
            .await
            .map_err(|e| Error::from_azure(e, true))?;
        let headers = response.headers();
        message.pop_receipt = headers
            .get_optional_string(&POP_RECEIPT)
            .ok_or_else(|| missing("x-ms-popreceipt"))?;
        if let Some(next) = headers
            .get_optional_str(&TIME_NEXT_VISIBLE)
            .and_then(|s| azure_core::time::parse_rfc7231(s).ok())
        {
            message.next_visible = next;
        }
        Ok(())
    }

    /// Deletes a received message (processing finished). [`Error::MessageGone`] means it was
    /// already deleted or another consumer holds it now.
    pub async fn delete(&self, message: &Received) -> Result<(), Error> {
        self.client
            .delete_message(&message.id, &message.pop_receipt, None)
            .await
            .map(|_| ())
            .map_err(|e| Error::from_azure(e, true))
    }

    /// The service's approximate count of messages, visible or not.
    pub async fn approximate_count(&self) -> Result<u64, Error> {
        use azure_storage_queue::models::QueueClientGetPropertiesResultHeaders as _;
        let response = self
            .client
            .get_properties(None)
            .await
            .map_err(|e| Error::from_azure(e, false))?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }
}

fn received(m: ReceivedMessage) -> Result<Received, Error> {
    Ok(Received {
        id: m.message_id.ok_or_else(|| missing("MessageId"))?,
        pop_receipt: m.pop_receipt.ok_or_else(|| missing("PopReceipt"))?,
        dequeue_count: count(m.dequeue_count),
        inserted: m.insertion_time.ok_or_else(|| missing("InsertionTime"))?,
        expires: m.expiration_time.ok_or_else(|| missing("ExpirationTime"))?,
        next_visible: m
            .time_next_visible
            .ok_or_else(|| missing("TimeNextVisible"))?,
        text: m.message_text.unwrap_or_default(),
    })
}

fn count(n: Option<i64>) -> u32 {
    n.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32
}

/// Whole seconds for the service, rounded up so a short hold is never zero.
fn seconds(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(7 * 24 * 3600) as i32
}

fn missing(what: &str) -> Error {
    Error::Protocol(format!("the answer has no {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_checked_before_any_request() {
        for ok in ["abc", "sync-tenants", "sync-tenants-poison", "a1b"] {
            validate_queue_name(ok).unwrap();
        }
        for bad in ["ab", "Sync", "a--b", "-ab", "ab-", "a_b", &"a".repeat(64)] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_urls_append_the_name_to_path_style_and_host_style_endpoints() {
        let account = StorageAccount::development("127.0.0.1", 10002, 10001);
        let queues = Queues::new(&account).unwrap();
        assert_eq!(
            queues.queue("work").unwrap().client.url().as_str(),
            "http://127.0.0.1:10001/devstoreaccount1/work"
        );
        let mut azure = account.clone();
        azure.queue_endpoint = Some(Url::parse("https://acct.queue.core.windows.net/").unwrap());
        assert_eq!(
            Queues::new(&azure)
                .unwrap()
                .queue("work")
                .unwrap()
                .client
                .url()
                .as_str(),
            "https://acct.queue.core.windows.net/work"
        );
    }

    #[test]
    fn an_account_without_a_queue_endpoint_says_which_setting_is_missing() {
        let mut account = StorageAccount::development("127.0.0.1", 10002, 10001);
        account.queue_endpoint = None;
        let err = Queues::new(&account).unwrap_err().to_string();
        assert!(err.contains("queueServiceUri"), "{err}");
    }

    #[test]
    fn holds_are_whole_seconds_rounded_up() {
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(60)), 60);
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_secs(30 * 24 * 3600)), 7 * 24 * 3600);
    }
}
