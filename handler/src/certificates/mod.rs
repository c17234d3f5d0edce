//! What Housekeeping does for certificates: warns of those about to expire ([`expiry`]) and
//! revokes those whose owed revocation never ran ([`backstop`]).

pub mod backstop;
pub mod expiry;
