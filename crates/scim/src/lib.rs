//! SCIM 2.0 (RFC 7643/7644) protocol pieces, as Microsoft Entra's provisioning service
//! speaks them: the filter grammar with Entra's non-RFC forms, and PATCH paths. No storage
//! and no HTTP here, so the protocol can be read and tested on its own.

pub mod filter;
pub mod patch;
pub mod path;
pub mod protocol;

pub use filter::{AttrPath, CompValue, CompareOp, Filter, FilterError};
pub use path::PatchPath;
