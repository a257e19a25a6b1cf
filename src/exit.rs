//! Process exit codes (sysexits-style) and the mapping from errors to them.
//!
//! Commands return `anyhow::Error`; `main` walks the error chain and takes the
//! code of the first error that declares one (`commands::exit_code`, which
//! sits above every layer whose errors it asks). Which code an error means is
//! decided by its own type ([`ExitCode`]).

/// Success.
pub const OK: u8 = 0;
/// Runtime failure.
pub const FAILURE: u8 = 1;
/// Bad usage or configuration (EX_USAGE).
pub const USAGE: u8 = 64;
/// A required binary or service is unavailable (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;

/// An error that knows which exit code it means.
pub trait ExitCode {
    /// The code for this error, or `None` when it has no opinion of its own
    /// (a wrapper whose meaning depends on its cause): the walk in `code_for`
    /// then goes on to the next cause in the chain.
    fn exit_code(&self) -> Option<u8>;
}

/// Marker error for bad command-line usage detected after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl ExitCode for UsageError {
    fn exit_code(&self) -> Option<u8> {
        Some(USAGE)
    }
}

/// Marker error for a required binary or service that is not there.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnavailableError(pub String);

impl ExitCode for UnavailableError {
    fn exit_code(&self) -> Option<u8> {
        Some(UNAVAILABLE)
    }
}
