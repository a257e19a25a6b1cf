//! What kube-apiserver, kube-controller-manager and kube-scheduler share: the
//! pinned Kubernetes version, the TLS policy of their serving ports, the flag
//! map that `extraArgs` override, the args file operators can inspect, the
//! secure endpoint the readiness probe dials, and the supervised child.
//!
//! Flags are always rendered as `--name=value`, one per flag, sorted by name,
//! so the argv is deterministic and the args file diffs cleanly.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{binary, ComponentError};
use crate::config::NodePaths;
use crate::fsutil;
use crate::https_probe::{HttpsProbe, ServerTrust, PROBE_TIMEOUT};
use crate::supervisor::{ChildSpec, Supervised};

/// The upstream Kubernetes release the generated flags target. The flag lists
/// under `tests/data/` are the ones of this minor version.
pub use crate::kubeapi::KUBERNETES_VERSION;

/// A component's flags by name (without dashes). Later `set`s win, which is
/// how `extraArgs` override mkectl's values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(BTreeMap<String, String>);

impl Flags {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `--name=value`; a leading `--` on `name` is ignored.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0
            .insert(name.trim_start_matches('-').to_string(), value.into());
    }

    /// Sets a flag whose value is a path.
    pub fn set_path(&mut self, name: &str, path: &Path) {
        self.set(name, path.display().to_string());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Applies `extraArgs` (names with or without leading dashes); they win.
    pub fn merge_extra(&mut self, extra: &BTreeMap<String, String>) {
        for (k, v) in extra {
            self.set(k, v.clone());
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The argv (without the program): `--name=value`, sorted by name.
    pub fn to_args(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }

    /// Parses `--name=value` arguments back (args files, tests). The first
    /// argument that is not of that form is the error.
    pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Flags, NotAFlag> {
        let mut flags = Flags::new();
        for a in args {
            let a = a.as_ref();
            let Some((k, v)) = a.strip_prefix("--").and_then(|r| r.split_once('=')) else {
                return Err(NotAFlag { arg: a.to_string() });
            };
            flags.set(k, v);
        }
        Ok(flags)
    }
}

/// An argument of an args file that is not `--name=value`.
#[derive(Debug, thiserror::Error)]
#[error("{arg:?} is not --name=value")]
pub struct NotAFlag {
    pub arg: String,
}

/// The args file text: one argument per line.
pub fn render_args_file(args: &[String]) -> String {
    let mut s = String::new();
    for a in args {
        s.push_str(a);
        s.push('\n');
    }
    s
}

/// The arguments of an args file (blank lines and `#` comments skipped).
pub fn parse_args_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

pub(crate) fn fs_err(component: &'static str) -> impl Fn(fsutil::FsError) -> ComponentError {
    move |source| ComponentError::Fs { component, source }
}

/// Writes `<data-dir>/config/<component>.args` (0600 in a 0700 directory:
/// extraArgs may carry values an operator would not want world-readable).
pub fn write_args_file(
    component: &'static str,
    paths: &NodePaths,
    args: &[String],
) -> Result<PathBuf, ComponentError> {
    fsutil::ensure_dir(&paths.generated_config_dir(), fsutil::PRIVATE_DIR_MODE)
        .map_err(fs_err(component))?;
    let path = paths.component_args_file(component);
    fsutil::write_atomic(
        &path,
        render_args_file(args).as_bytes(),
        fsutil::PRIVATE_FILE_MODE,
    )
    .map_err(fs_err(component))?;
    Ok(path)
}

/// Creates a component's `--cert-dir` (and its parent) 0700: it will hold a
/// private key.
pub fn ensure_cert_dir(component: &'static str, dir: &Path) -> Result<(), ComponentError> {
    if let Some(parent) = dir.parent() {
        fsutil::ensure_dir(parent, fsutil::PRIVATE_DIR_MODE).map_err(fs_err(component))?;
    }
    fsutil::ensure_dir(dir, fsutil::PRIVATE_DIR_MODE).map_err(fs_err(component))
}

/// Where the component serves HTTPS according to its final flags: the
/// `--bind-address` (an unspecified address is probed on loopback) and
/// `--secure-port`. A value that does not parse is a config error naming the
/// flag, so a bad `extraArgs` entry fails before anything starts.
pub fn secure_endpoint(
    component: &'static str,
    flags: &Flags,
    default_port: u16,
) -> Result<SocketAddr, ComponentError> {
    let bad = |flag: &str, value: &str, problem: &'static str| ComponentError::BadFlag {
        component,
        flag: flag.to_string(),
        value: value.to_string(),
        problem,
    };
    let ip = match flags.get("bind-address") {
        None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(v) => v
            .parse::<IpAddr>()
            .map_err(|_| bad("bind-address", v, "not an IP address"))?,
    };
    let ip = match ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let port = match flags.get("secure-port") {
        None => default_port,
        Some(v) => match v.parse::<u16>() {
            Ok(0) => {
                return Err(bad(
                    "secure-port",
                    v,
                    "0 disables the HTTPS port mkectl's readiness probe uses",
                ))
            }
            Ok(p) => p,
            Err(_) => return Err(bad("secure-port", v, "not a port number")),
        },
    };
    Ok(SocketAddr::new(ip, port))
}

/// `GET /healthz` on a component that serves the self-signed certificate it
/// generated into `cert_dir` (`<cert_dir>/<component>.crt`), or the
/// certificate an operator set with `--tls-cert-file` in `extraArgs`. The
/// probe pins that exact certificate (see [`crate::https_probe`]).
pub fn self_signed_probe(
    component: &'static str,
    flags: &Flags,
    default_port: u16,
    cert_dir: &Path,
) -> Result<HttpsProbe, ComponentError> {
    let addr = secure_endpoint(component, flags, default_port)?;
    let pinned = match flags.get("tls-cert-file") {
        Some(f) if !f.is_empty() => PathBuf::from(f),
        _ => cert_dir.join(format!("{component}.crt")),
    };
    Ok(HttpsProbe {
        addr,
        path: "/healthz".into(),
        trust: ServerTrust::PinnedCertFile(pinned),
        client: None,
        timeout: PROBE_TIMEOUT,
    })
}

/// Parses a Go `time.Duration` string (`1m0s`, `90s`, `1.5h`, `250ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * secs_per_unit;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// One kube binary as a supervised child.
pub struct KubeProcess {
    name: &'static str,
    paths: NodePaths,
    child: Option<Supervised>,
}

impl KubeProcess {
    pub fn new(name: &'static str, paths: NodePaths) -> Self {
        Self {
            name,
            paths,
            child: None,
        }
    }

    /// Spawns the binary (found through `--bin-dir`, the staged bundle, then
    /// `PATH`) unless it already runs.
    pub async fn start(
        &mut self,
        args: Vec<String>,
        stop_grace: Duration,
    ) -> Result<(), ComponentError> {
        if self.child.is_some() {
            return Ok(());
        }
        let program = binary::find(self.name, &self.paths)?;
        let mut spec = ChildSpec::new(self.name, program, &self.paths.run_dir);
        spec.args = args;
        spec.stop_grace = stop_grace;
        let child = super::start_supervised(self.name, spec).await?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, the grace period, then SIGKILL; idempotent.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
    }

    /// The supervised child, once started.
    pub fn child(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }
}

/// What differs between kube-controller-manager and kube-scheduler: both are
/// a supervised upstream binary bound to 127.0.0.1 with a self-signed
/// serving cert in `cert_dir`, probed on `/healthz`, using one client leaf.
pub trait LocalKubeSettings: Send + Sync {
    const NAME: &'static str;
    /// The leaves the component reads (renewing one restarts it).
    const LEAVES: &'static [crate::pki::Leaf];
    const STOP_GRACE: Duration;
    const READY_TIMEOUT: Duration;
    fn args(&self) -> Vec<String>;
    fn readiness_probe(&self) -> Result<crate::https_probe::HttpsProbe, ComponentError>;
    fn cert_dir(&self) -> &Path;
    /// Controllers in the cluster (leader election only above one).
    fn controller_count(&self) -> usize;
    fn set_controller_count(&mut self, n: usize);
}

/// kube-controller-manager or kube-scheduler as a component.
pub struct LocalKubeComponent<S> {
    settings: S,
    paths: NodePaths,
    process: KubeProcess,
    /// The live controller count (the controller registry's); read at every
    /// start, so a restart after a second controller joined switches on
    /// leader election.
    controllers: Option<tokio::sync::watch::Receiver<u32>>,
    /// The argv of the running child.
    running_args: Vec<String>,
}

impl<S: LocalKubeSettings> LocalKubeComponent<S> {
    pub fn new(settings: S, paths: NodePaths) -> Self {
        Self {
            process: KubeProcess::new(S::NAME, paths.clone()),
            settings,
            paths,
            controllers: None,
            running_args: Vec::new(),
        }
    }

    /// Follows the live controller count instead of the one at start.
    pub fn with_controller_count(mut self, count: tokio::sync::watch::Receiver<u32>) -> Self {
        self.controllers = Some(count);
        self
    }

    /// The argv the next start uses: the count only grows here, so leader
    /// election, once on, stays on while a peer is briefly away.
    fn next_args(&mut self) -> Vec<String> {
        if let Some(rx) = &self.controllers {
            let live = *rx.borrow() as usize;
            if live > self.settings.controller_count() {
                self.settings.set_controller_count(live);
            }
        }
        self.settings.args()
    }
}

#[async_trait::async_trait]
impl<S: LocalKubeSettings> super::Component for LocalKubeComponent<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn supervised(&self) -> Option<&crate::supervisor::Supervised> {
        self.process.child()
    }

    /// Renewing one of these restarts the process (status, rotation).
    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        S::LEAVES
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        self.settings.readiness_probe()?;
        ensure_cert_dir(S::NAME, self.settings.cert_dir())?;
        write_args_file(S::NAME, &self.paths, &self.settings.args())?;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.process.child().is_some() {
            return Ok(());
        }
        let args = self.next_args();
        write_args_file(S::NAME, &self.paths, &args)?;
        self.process.start(args.clone(), S::STOP_GRACE).await?;
        self.running_args = args;
        Ok(())
    }

    /// In place when the flags are unchanged (renewed certificates); a
    /// fresh child when they changed (a second controller joined: leader
    /// election on).
    async fn restart(&mut self) -> Result<(), ComponentError> {
        let args = self.next_args();
        if let Some(child) = self.process.child() {
            if self.running_args == args {
                child.restart().await;
                return Ok(());
            }
        }
        tracing::info!(component = S::NAME, "flags changed; starting a new process");
        self.process.stop().await;
        self.start().await
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let probe = self.settings.readiness_probe()?;
        probe.check().await.map_err(|e| ComponentError::NotReady {
            component: S::NAME,
            message: crate::telemetry::Chain(&e).to_string(),
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.process.stop().await;
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        S::READY_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_args_override_and_render_sorted() {
        let mut f = Flags::new();
        f.set("secure-port", "6443");
        f.set("--profiling", "false");
        let mut extra = BTreeMap::new();
        extra.insert("secure-port".to_string(), "7443".to_string());
        extra.insert("--v".to_string(), "2".to_string());
        f.merge_extra(&extra);
        assert_eq!(
            f.to_args(),
            vec!["--profiling=false", "--secure-port=7443", "--v=2"]
        );
        let back = Flags::parse_args(&f.to_args()).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            Flags::parse_args(&["positional"]).unwrap_err().arg,
            "positional"
        );
    }

    /// A kube-scheduler stand-in that just sleeps: what matters is the argv
    /// each start gets and whether a restart keeps or replaces the process.
    #[tokio::test]
    async fn a_restart_after_a_second_controller_joined_switches_on_leader_election() {
        use super::super::kube_scheduler::{KubeScheduler, KubeSchedulerSettings};
        use super::super::Component;
        use std::os::unix::fs::PermissionsExt;

        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("kube-scheduler");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = NodePaths::new(
            &tmp.path().join("data"),
            &tmp.path().join("run"),
            Some(&bin),
        );
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        let cfg = crate::config::ClusterConfig::default();
        let pki = crate::pki::PkiPaths::new(&paths.pki_dir());
        let settings = KubeSchedulerSettings::from_config(&cfg, &paths, &pki, 1);
        let (count_tx, count_rx) = tokio::sync::watch::channel(1u32);
        let mut c = KubeScheduler::new(settings, paths.clone()).with_controller_count(count_rx);

        let args_file = paths.component_args_file("kube-scheduler");
        let leader_elect = || {
            let text = std::fs::read_to_string(&args_file).unwrap();
            let args = parse_args_file(&text);
            Flags::parse_args(&args)
                .unwrap()
                .get("leader-elect")
                .map(str::to_string)
        };
        let pid = |c: &KubeScheduler| {
            let child = c.supervised().unwrap();
            let mut rx = child.subscribe();
            async move {
                loop {
                    if let Some(pid) = rx.borrow_and_update().pid {
                        return pid;
                    }
                    rx.changed().await.unwrap();
                }
            }
        };

        c.start().await.unwrap();
        let first = pid(&c).await;
        assert_eq!(leader_elect().as_deref(), Some("false"));

        // Same flags (a certificate renewal): restarted in place.
        c.restart().await.unwrap();
        let second = pid(&c).await;
        assert_ne!(second, first);
        assert_eq!(c.supervised().unwrap().status().restarts, 1);
        assert_eq!(leader_elect().as_deref(), Some("false"));

        // A second controller registered: a new process with leader election.
        count_tx.send_replace(2);
        c.restart().await.unwrap();
        assert_eq!(leader_elect().as_deref(), Some("true"));
        assert_eq!(
            c.supervised().unwrap().status().restarts,
            0,
            "a fresh child"
        );
        let third = pid(&c).await;
        assert_ne!(third, second);

        // The peer goes away for a while: leader election stays on.
        count_tx.send_replace(1);
        c.restart().await.unwrap();
        assert_eq!(leader_elect().as_deref(), Some("true"));
        c.stop().await.unwrap();
    }

    #[test]
    fn args_file_round_trip() {
        let args = vec!["--a=1".to_string(), "--b=x=y".to_string()];
        let text = render_args_file(&args);
        assert_eq!(parse_args_file(&format!("# c\n\n{text}")), args);
        let f = Flags::parse_args(&args).unwrap();
        assert_eq!(f.get("b"), Some("x=y"));
    }

    #[test]
    fn secure_endpoint_follows_flags() {
        let mut f = Flags::new();
        assert_eq!(
            secure_endpoint("c", &f, 10257).unwrap(),
            "127.0.0.1:10257".parse().unwrap()
        );
        f.set("bind-address", "127.0.0.5");
        f.set("secure-port", "12000");
        assert_eq!(
            secure_endpoint("c", &f, 10257).unwrap(),
            "127.0.0.5:12000".parse().unwrap()
        );
        f.set("bind-address", "::");
        assert_eq!(
            secure_endpoint("c", &f, 1).unwrap(),
            "[::1]:12000".parse().unwrap()
        );
        f.set("secure-port", "0");
        let e = secure_endpoint("kube-scheduler", &f, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("secure-port") && e.contains("extraArgs"), "{e}");
        f.set("secure-port", "1");
        f.set("bind-address", "nope");
        assert!(secure_endpoint("c", &f, 1).is_err());
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(d("15s"), Some(Duration::from_secs(15)));
        assert_eq!(d("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "5", "-1s", "1x", "s", "1m s"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }
}
