//! Process exit codes (sysexits-style) and the mapping from errors to them.
//!
//! Commands return `anyhow::Error`; `main` walks the error chain and takes the
//! code of the first error that declares one. Which code an error means is
//! decided by its own type (`ExitCode`), so this module only has to know the
//! list of types that may declare one, never their internals.

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

/// Picks the exit code for an error by looking through its whole chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.chain().find_map(declared).unwrap_or(FAILURE)
}

/// The code `cause` declares, if it is one of the types that can declare one.
fn declared(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    fn ask<T: ExitCode + std::error::Error + 'static>(
        cause: &(dyn std::error::Error + 'static),
    ) -> Option<u8> {
        cause.downcast_ref::<T>().and_then(ExitCode::exit_code)
    }
    ask::<UsageError>(cause)
        .or_else(|| ask::<UnavailableError>(cause))
        .or_else(|| ask::<crate::config::ConfigError>(cause))
        .or_else(|| ask::<crate::hostcheck::HostCheckError>(cause))
        .or_else(|| ask::<crate::components::binary::BinaryNotFound>(cause))
        .or_else(|| ask::<crate::components::binary::UnusableBinary>(cause))
        .or_else(|| ask::<crate::components::ComponentError>(cause))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_declaring_cause_wins_and_undeclared_is_failure() {
        let plain = anyhow::anyhow!("boom");
        assert_eq!(code_for(&plain), FAILURE);
        let usage = anyhow::Error::new(UsageError("bad flag".into())).context("outer");
        assert_eq!(code_for(&usage), USAGE);
        let missing =
            crate::components::ComponentError::from(crate::components::binary::BinaryNotFound {
                name: "kubelet".into(),
                searched: vec![],
                not_executable: vec![],
            });
        assert_eq!(code_for(&anyhow::Error::new(missing)), UNAVAILABLE);
        let unavailable = anyhow::Error::new(UnavailableError("no socket".into()));
        assert_eq!(code_for(&unavailable), UNAVAILABLE);
    }
}
