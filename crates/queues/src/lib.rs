//! Azure Storage queues through the official `azure_storage_queue` crate.
//!
//! The account comes from the same settings as Table Storage ([`tables::StorageAccount`]):
//! a connection string signs requests with the account key (a Shared Key policy of ours,
//! since the official client only takes token credentials; this is how Azurite is
//! reached), an identity-based connection uses the managed identity's tokens. Messages
//! are base64 of UTF-8 JSON, the Functions host's default `messageEncoding`, so what the
//! host writes is read here and the other way round.

mod client;
pub mod encoding;
mod error;
mod shared_key;

pub use client::{MAX_BATCH, Options, Peeked, Queue, Queues, Received, Sent, validate_queue_name};
pub use encoding::DecodeError;
pub use error::Error;
