//! What a supervised child is doing, as published to `status()`/`subscribe()`.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

/// Lifecycle state of a supervised child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// An instance is running (its pid is in [`ChildStatus::pid`]).
    Running,
    /// The last instance exited (or could not be spawned); the next spawn is
    /// due at `until`.
    Backoff { until: Instant },
    /// A stop (or the stop half of a restart) is in progress.
    Stopping,
    /// Stopped for good: no process left, pid file removed.
    Stopped,
}

/// How an instance ended. Exactly one of the fields is set, unless the exit
/// status could not be collected (both `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// The status could not be collected (someone else reaped the child).
    pub(crate) const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
    };
}

/// "exited with code 1", "killed by signal SIGKILL", "exit status unknown".
impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {}", signal_name(sig)),
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

/// The conventional name of a signal number ("SIGTERM"), or "signal N" for
/// numbers without one (real-time signals).
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {sig}"),
    }
}

/// A snapshot of a supervised child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    pub state: ChildState,
    /// Pid (= process-group id) of the running instance; `None` unless
    /// `Running` or `Stopping`.
    pub pid: Option<i32>,
    /// How many instances were started after the first one (crash restarts
    /// and manual restarts; failed spawn attempts do not count).
    pub restarts: u64,
    /// How the most recent instance ended.
    pub last_exit: Option<ExitInfo>,
    /// Wall-clock start time of the current (or last) instance.
    pub started_at: Option<SystemTime>,
    /// The backoff delay that was waited before the current instance was
    /// spawned (zero for the first instance and for manual restarts).
    pub restart_delay: Duration,
    /// The last failed spawn attempt during restarts, cleared by a successful
    /// spawn.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_info_reads_like_a_log_line() {
        let code = ExitInfo {
            code: Some(1),
            signal: None,
        };
        assert_eq!(code.to_string(), "exited with code 1");
        let sig = ExitInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(sig.to_string(), "killed by signal SIGKILL");
        assert_eq!(ExitInfo::UNKNOWN.to_string(), "exit status unknown");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "signal 40");
    }

    #[test]
    fn exit_info_from_raw_status() {
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(
            ExitInfo::from_status(exited),
            ExitInfo {
                code: Some(3),
                signal: None
            }
        );
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            ExitInfo::from_status(killed),
            ExitInfo {
                code: None,
                signal: Some(9)
            }
        );
    }
}
