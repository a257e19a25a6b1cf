//! The exit code of a failed command: the first error in the chain whose
//! type declares one (`crate::exit::ExitCode`), else 1.

use crate::exit::{ExitCode, UnavailableError, UsageError, FAILURE};

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
        .or_else(|| ask::<crate::node::NodeError>(cause))
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
    use crate::exit::{UnavailableError, UsageError, FAILURE, UNAVAILABLE, USAGE};

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
