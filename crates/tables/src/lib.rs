//! A small Azure Table Storage client for azure_core 1.x era services.
//!
//! Shared Key (connection strings, Azurite) or bearer tokens (managed identity); typed
//! properties for every Edm type; ETag concurrency with typed 404/409/412 errors; queries
//! streamed across continuation tokens; atomic entity group transactions; bounded retries;
//! and a request counter for benchmarks.

pub mod account;
pub mod auth;
pub mod batch;
mod client;
pub mod entity;
pub mod error;
pub mod key;

pub use account::{Credential, StorageAccount};
pub use batch::Operation;
pub use client::{
    ClientOptions, Continuation, Page, Query, Table, TableServiceClient, validate_table_name,
};
pub use entity::{ETag, Entity, IfMatch, Value};
pub use error::Error;
