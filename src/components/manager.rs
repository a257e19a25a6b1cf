//! The component manager: init all, start in order waiting for each to be
//! ready (bounded), roll back what started when one fails, stop in reverse.
//!
//! Every component sits behind its own `RwLock`, and the list is shared with
//! [`ManagerHandle`]s: status readers probe `ready` under the read lock while
//! the manager runs, and the rotation loop restarts single components under
//! the write lock. Lifecycle calls (`init`, `start`, `stop`, `restart`) are
//! exclusive; probes are bounded, so a stuck component never blocks status.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::{Component, ComponentError, Peers};
use crate::pki::Leaf;
use crate::supervisor::{signal_name, ChildState, ChildStatus, Supervised};
use crate::telemetry::Chain;

/// First interval between readiness probes; doubles up to the cap.
pub const READY_POLL_INITIAL: Duration = Duration::from_millis(20);
/// Cap on the interval between readiness probes.
pub const READY_POLL_MAX: Duration = Duration::from_millis(500);
/// How often a still-waiting start logs what it waits for.
pub const READY_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where a component is in its lifecycle, as the manager drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Created,
    Initialized,
    /// `start` ran; waiting for the first `ready`.
    Starting,
    Running,
    /// Restarting to pick up renewed certificates.
    Restarting,
    /// `start` or a restart failed.
    Failed,
    Stopping,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Initialized => "initialized",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

/// How the last instance of a supervised child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal name (`SIGKILL`) when a signal ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Signal number, for metrics (`128 + n` as shells report it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_number: Option<i32>,
}

impl LastExit {
    /// One number for the last exit: the exit code, or 128 + signal number.
    pub fn as_code(&self) -> Option<i64> {
        self.code
            .map(i64::from)
            .or(self.signal_number.map(|s| 128 + i64::from(s)))
    }
}

/// One component as `mkectl status` and the metrics see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    /// The manager's phase, refined by the child's state: `running`,
    /// `backoff` (crashed, waiting to restart), `restarting`, `stopped`, ...
    pub state: String,
    pub ready: bool,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether it runs as a supervised child process.
    pub supervised: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Restarts of the child (crashes and certificate rotations).
    pub restarts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    /// Seconds since the current instance started (or the component turned
    /// running, for in-process components).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Peers>,
}

struct Entry {
    name: &'static str,
    uses: Vec<Leaf>,
    component: tokio::sync::RwLock<Box<dyn Component>>,
    state: Mutex<EntryState>,
}

struct EntryState {
    phase: Phase,
    /// Last start/restart failure.
    error: Option<String>,
    running_since: Option<SystemTime>,
    /// The supervised child's status channel, kept so status is readable
    /// without the component lock (e.g. during a restart).
    child: Option<watch::Receiver<ChildStatus>>,
}

impl Entry {
    fn state(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn set_phase(&self, phase: Phase) {
        let mut st = self.state();
        st.phase = phase;
        if phase == Phase::Running {
            st.error = None;
            st.running_since = Some(SystemTime::now());
        }
    }
    fn fail(&self, e: &ComponentError) {
        let mut st = self.state();
        st.phase = Phase::Failed;
        st.error = Some(Chain(e).to_string());
    }
    fn remember_child(&self, child: Option<&Supervised>) {
        self.state().child = child.map(Supervised::subscribe);
    }
}

type Entries = Arc<RwLock<Vec<Arc<Entry>>>>;

fn snapshot(entries: &Entries) -> Vec<Arc<Entry>> {
    entries
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

#[derive(Default)]
pub struct Manager {
    entries: Entries,
    /// How many components (a prefix of `entries`) were started.
    started: usize,
}

impl Manager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a component; start order is insertion order.
    pub fn add(&mut self, c: Box<dyn Component>) {
        let entry = Entry {
            name: c.name(),
            uses: c.uses_certs().to_vec(),
            component: tokio::sync::RwLock::new(c),
            state: Mutex::new(EntryState {
                phase: Phase::Created,
                error: None,
                running_since: None,
                child: None,
            }),
        };
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(entry));
    }

    pub fn names(&self) -> Vec<&'static str> {
        snapshot(&self.entries).iter().map(|e| e.name).collect()
    }

    /// A cloneable handle for status readers and restarts, usable while the
    /// manager runs.
    pub fn handle(&self) -> ManagerHandle {
        ManagerHandle {
            entries: self.entries.clone(),
        }
    }

    /// Runs `init` on every component, in order.
    pub async fn init_all(&mut self) -> Result<(), ComponentError> {
        for e in snapshot(&self.entries) {
            let span = info_span!("init", component = e.name);
            e.component.write().await.init().instrument(span).await?;
            e.set_phase(Phase::Initialized);
        }
        Ok(())
    }

    /// Starts every component in order, each one ready before the next starts.
    /// On failure or cancellation everything started so far is stopped in
    /// reverse order and the error is returned.
    pub async fn start_all(&mut self, cancel: &CancellationToken) -> Result<(), ComponentError> {
        for (i, e) in snapshot(&self.entries).into_iter().enumerate() {
            let span = info_span!("start", component = e.name);
            self.started = i + 1;
            let result = async {
                info!("starting");
                bring_up(&e, Phase::Starting, cancel).await
            }
            .instrument(span)
            .await;
            match result {
                Ok(()) => e.set_phase(Phase::Running),
                Err(err) => {
                    e.fail(&err);
                    warn!(component = e.name, error = %Chain(&err), "start failed; stopping what was started");
                    self.stop_all(Duration::from_secs(30)).await;
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Stops started components in reverse order, all within `deadline`. A
    /// component that overruns the remaining time is abandoned with a warning
    /// (its own stop escalates to SIGKILL).
    pub async fn stop_all(&mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        let entries = snapshot(&self.entries);
        while self.started > 0 {
            self.started -= 1;
            let e = &entries[self.started];
            let left = end.saturating_duration_since(Instant::now());
            let span = info_span!("stop", component = e.name);
            async {
                info!("stopping");
                e.set_phase(Phase::Stopping);
                let stop = async { e.component.write().await.stop().await };
                match tokio::time::timeout(left, stop).await {
                    Ok(Ok(())) => info!("stopped"),
                    Ok(Err(e)) => warn!(error = %Chain(&e), "stop failed"),
                    Err(_) => warn!("stop did not finish within the shutdown deadline"),
                }
                e.set_phase(Phase::Stopped);
            }
            .instrument(span)
            .await;
        }
    }

    /// Probes every started component once: (name, ready?, detail).
    pub async fn readiness(&self) -> Vec<(&'static str, bool, String)> {
        let mut out = Vec::new();
        for e in &snapshot(&self.entries)[..self.started] {
            match e.component.read().await.ready().await {
                Ok(()) => out.push((e.name, true, String::new())),
                Err(err) => out.push((e.name, false, Chain(&err).to_string())),
            }
        }
        out
    }
}

/// Shared view of the manager's components: status for readers, restarts
/// for certificate rotation.
#[derive(Clone)]
pub struct ManagerHandle {
    entries: Entries,
}

impl ManagerHandle {
    /// Every component's status; `ready` is probed now, each probe bounded by
    /// `probe_timeout`, all in parallel.
    pub async fn status(&self, probe_timeout: Duration) -> Vec<ComponentStatus> {
        let entries = snapshot(&self.entries);
        futures::future::join_all(entries.iter().map(|e| entry_status(e, probe_timeout))).await
    }

    /// Restarts (in start order) every running component that uses one of
    /// `renewed`, waiting for each to be ready again. Returns the names of the
    /// components restarted, with the outcome.
    pub async fn restart_using(
        &self,
        renewed: &[Leaf],
        cancel: &CancellationToken,
    ) -> Vec<(&'static str, Result<(), ComponentError>)> {
        let why = format!("restarting to load renewed certificates {renewed:?}");
        self.restart_where(|e| e.uses.iter().any(|l| renewed.contains(l)), &why, cancel)
            .await
    }

    /// Restarts (in start order) the running components named in `names`,
    /// logging `why`, waiting for each to be ready again.
    pub async fn restart_named(
        &self,
        names: &[&str],
        why: &str,
        cancel: &CancellationToken,
    ) -> Vec<(&'static str, Result<(), ComponentError>)> {
        self.restart_where(|e| names.contains(&e.name), why, cancel)
            .await
    }

    async fn restart_where(
        &self,
        pick: impl Fn(&Entry) -> bool,
        why: &str,
        cancel: &CancellationToken,
    ) -> Vec<(&'static str, Result<(), ComponentError>)> {
        let mut out = Vec::new();
        for e in snapshot(&self.entries) {
            if !pick(&e) || e.state().phase != Phase::Running {
                continue;
            }
            let span = info_span!("restart", component = e.name);
            let result = async {
                info!("{why}");
                bring_up(&e, Phase::Restarting, cancel).await
            }
            .instrument(span)
            .await;
            match &result {
                Ok(()) => e.set_phase(Phase::Running),
                Err(err) => {
                    warn!(component = e.name, error = %Chain(err), "restart failed");
                    e.fail(err);
                }
            }
            out.push((e.name, result));
        }
        out
    }
}

/// Starts (`Phase::Starting`) or restarts (`Phase::Restarting`) one
/// component, records its child and waits until it is ready.
async fn bring_up(
    e: &Entry,
    phase: Phase,
    cancel: &CancellationToken,
) -> Result<(), ComponentError> {
    e.set_phase(phase);
    {
        let mut c = e.component.write().await;
        if phase == Phase::Restarting {
            c.restart().await?;
        } else {
            c.start().await?;
        }
        e.remember_child(c.supervised());
    }
    wait_ready(&**e.component.read().await, cancel).await
}

async fn entry_status(e: &Entry, probe_timeout: Duration) -> ComponentStatus {
    let (phase, error, running_since, child) = {
        let st = e.state();
        (
            st.phase,
            st.error.clone(),
            st.running_since,
            st.child.clone(),
        )
    };
    let child = child.map(|rx| rx.borrow().clone());
    let mut status = ComponentStatus {
        name: e.name.to_string(),
        state: phase.as_str().to_string(),
        ready: false,
        message: error,
        supervised: child.is_some(),
        pid: None,
        restarts: 0,
        last_exit: None,
        uptime_seconds: running_since
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs()),
        peers: None,
    };
    if let Some(c) = &child {
        status.pid = c.pid;
        status.restarts = c.restarts;
        status.last_exit = c.last_exit.map(|x| LastExit {
            code: x.code,
            signal: x.signal.map(signal_name),
            signal_number: x.signal,
        });
        status.uptime_seconds = match c.state {
            ChildState::Running => c
                .started_at
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs()),
            _ => None,
        };
        if phase == Phase::Running {
            status.state = match c.state {
                ChildState::Running => "running",
                ChildState::Backoff { .. } => "backoff",
                ChildState::Stopping => "stopping",
                ChildState::Stopped => "stopped",
            }
            .to_string();
        }
    }
    if phase != Phase::Running {
        if status.message.is_none() {
            status.message = Some(phase.as_str().to_string());
        }
        return status;
    }
    let probe = async {
        let c = e.component.read().await;
        (c.ready().await, c.peers())
    };
    match tokio::time::timeout(probe_timeout, probe).await {
        Ok((Ok(()), peers)) => {
            status.ready = true;
            status.peers = peers;
        }
        Ok((Err(err), peers)) => {
            let msg = Chain(&err).to_string();
            let prefix = format!("{}: ", e.name);
            status.message = Some(msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg));
            status.peers = peers;
        }
        Err(_) => status.message = Some(format!("readiness probe took over {probe_timeout:?}")),
    }
    status
}

async fn wait_ready(c: &dyn Component, cancel: &CancellationToken) -> Result<(), ComponentError> {
    let name = c.name();
    let timeout = c.ready_timeout();
    let begin = Instant::now();
    let mut next_progress = begin + READY_PROGRESS_EVERY;
    let mut interval = READY_POLL_INITIAL;
    loop {
        let last = match c.ready().await {
            Ok(()) => {
                info!(elapsed_ms = begin.elapsed().as_millis() as u64, "ready");
                return Ok(());
            }
            Err(e) => Chain(&e).to_string(),
        };
        let now = Instant::now();
        if now.duration_since(begin) >= timeout {
            return Err(ComponentError::ReadyTimeout {
                component: name,
                waited: timeout,
                last,
            });
        }
        if now >= next_progress {
            info!(
                elapsed_s = now.duration_since(begin).as_secs(),
                last_probe = %last,
                "waiting for {name} to become ready"
            );
            next_progress = now + READY_PROGRESS_EVERY;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(ComponentError::Cancelled { component: name }),
            _ = tokio::time::sleep(interval) => {}
        }
        interval = (interval * 2).min(READY_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl Log {
        fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    struct Fake {
        name: &'static str,
        log: Log,
        fail_start: bool,
        ready_after: Option<Duration>,
        started_at: Option<Instant>,
        uses: Vec<Leaf>,
    }

    impl Fake {
        fn new(name: &'static str, log: &Log) -> Self {
            Self {
                name,
                log: log.clone(),
                fail_start: false,
                ready_after: Some(Duration::ZERO),
                started_at: None,
                uses: Vec::new(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Component for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn init(&mut self) -> Result<(), ComponentError> {
            self.log.push(format!("init {}", self.name));
            Ok(())
        }
        async fn start(&mut self) -> Result<(), ComponentError> {
            self.log.push(format!("start {}", self.name));
            if self.fail_start {
                return Err(ComponentError::during(
                    self.name,
                    "starting",
                    std::io::Error::other("boom"),
                ));
            }
            self.started_at = Some(Instant::now());
            Ok(())
        }
        async fn ready(&self) -> Result<(), ComponentError> {
            match (self.ready_after, self.started_at) {
                (Some(after), Some(at)) if at.elapsed() >= after => Ok(()),
                _ => Err(ComponentError::NotReady {
                    component: self.name,
                    message: "not yet".into(),
                }),
            }
        }
        async fn stop(&mut self) -> Result<(), ComponentError> {
            self.log.push(format!("stop {}", self.name));
            Ok(())
        }
        fn ready_timeout(&self) -> Duration {
            Duration::from_secs(10)
        }
        fn uses_certs(&self) -> &[Leaf] {
            &self.uses
        }
    }

    #[tokio::test(start_paused = true)]
    async fn handle_reports_phases_and_probes_readiness() {
        let log = Log::default();
        let mut m = Manager::new();
        m.add(Box::new(Fake::new("a", &log)));
        let mut b = Fake::new("b", &log);
        b.ready_after = None;
        m.add(Box::new(b));
        let h = m.handle();
        let st = h.status(Duration::from_secs(1)).await;
        assert_eq!(st[0].state, "created");
        assert!(!st[0].ready);
        m.init_all().await.unwrap();
        let cancel = CancellationToken::new();
        // b never turns ready: while start_all waits on it, status is
        // readable and shows a running, b starting.
        let run = tokio::spawn(async move {
            let r = m.start_all(&cancel).await;
            (m, r)
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let st = h.status(Duration::from_secs(1)).await;
        assert_eq!((st[0].state.as_str(), st[0].ready), ("running", true));
        assert!(st[0].uptime_seconds.is_some());
        assert_eq!((st[1].state.as_str(), st[1].ready), ("starting", false));
        let (_m, r) = run.await.unwrap();
        assert!(r.is_err());
        let st = h.status(Duration::from_secs(1)).await;
        assert_eq!(st[0].state, "stopped");
        assert_eq!(st[1].state, "stopped");
        assert!(!st[1].ready);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_using_restarts_only_the_users_of_renewed_certs() {
        let log = Log::default();
        let mut m = Manager::new();
        let mut a = Fake::new("a", &log);
        a.uses = vec![Leaf::EtcdServer, Leaf::EtcdPeer];
        m.add(Box::new(a));
        let mut b = Fake::new("b", &log);
        b.uses = vec![Leaf::KonnectivityServer];
        m.add(Box::new(b));
        m.add(Box::new(Fake::new("c", &log)));
        let cancel = CancellationToken::new();
        m.start_all(&cancel).await.unwrap();
        log.take();
        let h = m.handle();
        let done = h
            .restart_using(&[Leaf::EtcdPeer, Leaf::Admin], &cancel)
            .await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, "a");
        assert!(done[0].1.is_ok());
        // Not supervised: the default restart is stop + start.
        assert_eq!(log.take(), ["stop a", "start a"]);
        assert!(h
            .status(Duration::from_secs(1))
            .await
            .iter()
            .all(|c| c.ready));
        assert!(h.restart_using(&[Leaf::Admin], &cancel).await.is_empty());

        let done = h.restart_named(&["c", "nope"], "test", &cancel).await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, "c");
        assert_eq!(log.take(), ["stop c", "start c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_in_order_and_stops_in_reverse() {
        let log = Log::default();
        let mut m = Manager::new();
        m.add(Box::new(Fake::new("a", &log)));
        let mut b = Fake::new("b", &log);
        b.ready_after = Some(Duration::from_secs(3));
        m.add(Box::new(b));
        m.add(Box::new(Fake::new("c", &log)));
        m.init_all().await.unwrap();
        let t0 = Instant::now();
        m.start_all(&CancellationToken::new()).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(3));
        assert!(t0.elapsed() < Duration::from_secs(4));
        m.stop_all(Duration::from_secs(5)).await;
        assert_eq!(
            log.take(),
            [
                "init a", "init b", "init c", "start a", "start b", "start c", "stop c", "stop b",
                "stop a"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_start_rolls_back() {
        let log = Log::default();
        let mut m = Manager::new();
        m.add(Box::new(Fake::new("a", &log)));
        let mut b = Fake::new("b", &log);
        b.fail_start = true;
        m.add(Box::new(b));
        m.add(Box::new(Fake::new("c", &log)));
        let e = m.start_all(&CancellationToken::new()).await.unwrap_err();
        assert!(Chain(&e).to_string().contains("boom"));
        assert_eq!(log.take(), ["start a", "start b", "stop b", "stop a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn never_ready_times_out_and_rolls_back() {
        let log = Log::default();
        let mut m = Manager::new();
        m.add(Box::new(Fake::new("a", &log)));
        let mut b = Fake::new("b", &log);
        b.ready_after = None;
        m.add(Box::new(b));
        let t0 = Instant::now();
        let e = m.start_all(&CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(e, ComponentError::ReadyTimeout { component: "b", .. }),
            "{e}"
        );
        assert!(t0.elapsed() >= Duration::from_secs(10));
        assert!(t0.elapsed() < Duration::from_secs(11));
        assert_eq!(log.take(), ["start a", "start b", "stop b", "stop a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_aborts_the_wait() {
        let log = Log::default();
        let mut m = Manager::new();
        let mut a = Fake::new("a", &log);
        a.ready_after = None;
        m.add(Box::new(a));
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c2.cancel();
        });
        let e = m.start_all(&cancel).await.unwrap_err();
        assert!(matches!(e, ComponentError::Cancelled { .. }));
        assert_eq!(log.take(), ["start a", "stop a"]);
    }
}
