//! What to run: [`ChildSpec`], its validation, and the command it turns into.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::backoff::BackoffPolicy;
use super::SupervisorError;

/// Time a child gets between SIGTERM and SIGKILL unless its spec says
/// otherwise. Enough for etcd or the apiserver to finish in-flight requests.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Name of the marker variable set in every child's environment. Its value is
/// `<canonical run_dir>/<name>`, which identifies the mkectl instance (by its
/// run directory) and the component, so stale-process cleanup never touches
/// another mkectl's children or an unrelated process that got a reused pid.
pub const MARKER_ENV: &str = "MKECTL_SUPERVISED";

/// Variables passed from mkectl's environment to children; everything else is
/// dropped. Locale variables matching `LC_*` are passed as well.
///
/// PATH/HOME/USER/LOGNAME/SHELL are what programs commonly assume exist,
/// LANG/LANGUAGE/LC_*/TZ keep messages and timestamps as the operator set
/// them, TMPDIR keeps temp files where the operator wants them, and the proxy
/// variables are how operators configure containerd's image pulls (the usual
/// way is `Environment=HTTPS_PROXY=...` on the mkectl unit).
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A child process to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    /// Component name: pid file `<run_dir>/<name>.pid`, log field
    /// `component=<name>`. Non-empty, no `/`, not `.` or `..`.
    pub name: String,
    /// Program to execute (a bare name is looked up in `PATH`).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the inherited subset of mkectl's environment
    /// ([`INHERITED_ENV`]); wins over an inherited variable of the same name.
    /// [`MARKER_ENV`] is reserved.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` keeps mkectl's.
    pub cwd: Option<PathBuf>,
    /// Directory of the pid file; created 0700 if missing.
    pub run_dir: PathBuf,
    /// SIGTERM, wait this long, then SIGKILL.
    pub stop_grace: Duration,
    pub backoff: BackoffPolicy,
}

impl ChildSpec {
    /// A spec with no arguments, no extra environment and default timings.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            run_dir: run_dir.into(),
            stop_grace: DEFAULT_STOP_GRACE,
            backoff: BackoffPolicy::default(),
        }
    }

    /// Checks everything that does not need the filesystem.
    pub(crate) fn validate(&self) -> Result<(), SupervisorError> {
        let bad = |reason: String| SupervisorError::InvalidSpec {
            name: self.name.clone(),
            reason,
        };
        validate_name(&self.name).map_err(|r| bad(r.to_owned()))?;
        if self.program.as_os_str().is_empty() {
            return Err(bad("program is empty".to_owned()));
        }
        if self.program.as_os_str().as_bytes().contains(&0)
            || self.args.iter().any(|a| a.contains('\0'))
        {
            return Err(bad("program and args must not contain NUL bytes".to_owned()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(bad(format!(
                    "env variable {key:?} must be non-empty and free of '=' and NUL"
                )));
            }
            if key == MARKER_ENV {
                return Err(bad(format!("env variable {MARKER_ENV} is reserved")));
            }
        }
        if self.run_dir.as_os_str().is_empty() {
            return Err(bad("run_dir is empty".to_owned()));
        }
        if let Some(problem) = self.backoff.problem() {
            return Err(bad(problem.to_owned()));
        }
        Ok(())
    }

    /// The command for one instance; stdio is null/piped/piped. The process
    /// group and death signal are added by the spawner.
    pub(crate) fn command(&self, marker: &OsStr) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env_clear();
        for (key, value) in std::env::vars_os() {
            if inherited(&key) {
                cmd.env(key, value);
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.env(MARKER_ENV, marker);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Component names end up in file names and log fields.
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("name must be non-empty and not '.' or '..'");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("name must not contain '/' or NUL");
    }
    Ok(())
}

fn inherited(key: &OsStr) -> bool {
    let bytes = key.as_bytes();
    bytes.starts_with(b"LC_") || INHERITED_ENV.iter().any(|k| k.as_bytes() == bytes)
}

/// The marker value for a component of the mkectl instance that owns
/// `canonical_run_dir`.
pub(crate) fn marker_value(canonical_run_dir: &Path, name: &str) -> OsString {
    let mut value = canonical_run_dir.as_os_str().to_owned();
    value.push("/");
    value.push(name);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("etcd").is_ok());
        assert!(validate_name("kube-apiserver").is_ok());
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_validation_names_the_problem() {
        let ok = ChildSpec::new("etcd", "/usr/bin/etcd", "/run/mke");
        assert!(ok.validate().is_ok());
        let mut marker = ok.clone();
        marker.env.push((MARKER_ENV.to_owned(), "x".to_owned()));
        let err = marker.validate().unwrap_err().to_string();
        assert!(err.contains("etcd") && err.contains(MARKER_ENV), "{err}");
        let mut eq = ok.clone();
        eq.env.push(("A=B".to_owned(), "x".to_owned()));
        assert!(eq.validate().is_err());
        let mut backoff = ok.clone();
        backoff.backoff.factor = 0;
        assert!(backoff
            .validate()
            .unwrap_err()
            .to_string()
            .contains("factor"));
        let empty = ChildSpec::new("etcd", "", "/run/mke");
        assert!(empty.validate().is_err());
    }

    #[test]
    fn environment_is_filtered_and_marked() {
        let mut spec = ChildSpec::new("etcd", "/bin/true", "/run/mke");
        spec.env.push(("ETCD_NAME".to_owned(), "n1".to_owned()));
        spec.env.push(("PATH".to_owned(), "/opt/bin".to_owned()));
        let cmd = spec.command(OsStr::new("/run/mke/etcd"));
        let envs: Vec<(OsString, Option<OsString>)> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned)))
            .collect();
        let get = |k: &str| {
            envs.iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(get("ETCD_NAME"), Some("n1".into()));
        assert_eq!(get("PATH"), Some("/opt/bin".into()));
        assert_eq!(get(MARKER_ENV), Some("/run/mke/etcd".into()));
        assert!(inherited(OsStr::new("LC_TIME")));
        assert!(inherited(OsStr::new("HTTPS_PROXY")));
        assert!(!inherited(OsStr::new("NOTIFY_SOCKET")));
        assert!(!inherited(OsStr::new("CARGO_TARGET_DIR")));
    }

    #[test]
    fn marker_joins_run_dir_and_name() {
        assert_eq!(
            marker_value(Path::new("/run/mke"), "etcd"),
            OsString::from("/run/mke/etcd")
        );
    }
}
