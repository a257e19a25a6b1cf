//! Process exit codes (sysexits-style) and the mapping from errors to them.
//!
//! Commands return `anyhow::Error`; `main` walks the error chain and picks the
//! code of the first error that declares one, so a module only has to mark its
//! usage and unavailable errors here.

/// Success.
pub const OK: u8 = 0;
/// Runtime failure.
pub const FAILURE: u8 = 1;
/// Bad usage or configuration (EX_USAGE).
pub const USAGE: u8 = 64;
/// A required binary or service is unavailable (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;

/// Marker error for bad command-line usage detected after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Marker error for a required binary or service that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnavailableError(pub String);

/// Picks the exit code for an error by looking through its whole chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<crate::node::NodeError>() {
            return e.exit_code();
        }
        if cause.is::<UsageError>() || cause.is::<crate::config::ConfigError>() {
            return USAGE;
        }
        if cause.is::<UnavailableError>()
            || cause.is::<crate::hostcheck::HostCheckError>()
            || cause.is::<crate::components::binary::BinaryNotFound>()
            || cause.is::<crate::components::binary::UnusableBinary>()
            // `transparent` hides the wrapped error from the chain.
            || matches!(
                cause.downcast_ref::<crate::components::ComponentError>(),
                Some(crate::components::ComponentError::BinaryNotFound(_))
            )
        {
            return UNAVAILABLE;
        }
    }
    FAILURE
}
