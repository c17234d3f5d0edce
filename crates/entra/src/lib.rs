//! Microsoft Entra ID for entra-connector: national clouds and endpoint overrides, access
//! token validation with cached signing keys, and development tokens for local runs.

pub mod cache;
pub mod cloud;
pub mod credentials;
pub mod delta;
pub mod dev;
pub mod graph;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod validate;
pub mod writes;

pub use cloud::{Cloud, Endpoints};
pub use keys::{KeyCachePolicy, TokenVersion};
pub use validate::{Rejection, TenantLookup, ValidatedToken, Validator, ValidatorConfig};
