//! The applier component: watch the manifests directory, and while holding
//! the lease apply what changed and prune what left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::kubeapi::Client;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::engine::Engine;
use super::leader::{run_election, LeaseConfig};
use super::manifest::{parse_stack, scan, SourceFile};
use super::status::{StackState, StatusHandle};
use super::{valid_stack_name, ApplierError};
use crate::fsutil;

pub const DEFAULT_LEASE_NAME: &str = "mkectl-applier";
/// kube-system always exists, so the lease and the stack records live there.
pub const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
pub const DEFAULT_STATE_NAMESPACE: &str = "kube-system";
/// client-go's defaults for controller leader election.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Editors and `cp -r` produce bursts of events; apply once they settle.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);
/// A debounce never delays an apply by more than this many debounce periods.
const MAX_DEBOUNCE_FACTOR: u32 = 10;
/// Full re-apply of every stack, which heals drift and missed events.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// First retry after a pass with errors (transient apiserver trouble, a
/// namespace another stack creates later in the same pass); doubles per
/// failed pass up to [`MAX_ERROR_RETRY`].
pub const DEFAULT_ERROR_RETRY: Duration = Duration::from_secs(2);
pub const MAX_ERROR_RETRY: Duration = Duration::from_secs(60);
/// How long a stopping applier waits for the lease release.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything the applier needs; build with [`ApplierConfig::new`] and adjust.
#[derive(Clone)]
pub struct ApplierConfig {
    /// `<data-dir>/manifests`.
    pub manifests_dir: PathBuf,
    /// An admin client (the applier creates CRDs, RBAC, anything a stack holds).
    pub client: Client,
    /// Lease holder identity: unique per controller (e.g. the node name).
    pub identity: String,
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease_duration: Duration,
    /// Renew / retry interval of the lease; must be below the lease duration.
    pub retry_period: Duration,
    pub debounce: Duration,
    pub resync_interval: Duration,
    pub crd_establish_timeout: Duration,
    /// First retry delay after a pass with errors (then doubling).
    pub error_retry: Duration,
    /// Namespace of the per-stack record ConfigMaps.
    pub state_namespace: String,
    /// Stacks the controller removed on purpose before the applier started
    /// (default add-ons the config disables): pruned even though this process
    /// never saw their directory. Everything else missing at startup is left
    /// alone.
    pub removed_stacks: Vec<String>,
}

impl ApplierConfig {
    pub fn new(manifests_dir: PathBuf, client: Client, identity: String) -> Self {
        Self {
            manifests_dir,
            client,
            identity,
            lease_name: DEFAULT_LEASE_NAME.to_string(),
            lease_namespace: DEFAULT_LEASE_NAMESPACE.to_string(),
            lease_duration: DEFAULT_LEASE_DURATION,
            retry_period: DEFAULT_RETRY_PERIOD,
            debounce: DEFAULT_DEBOUNCE,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            crd_establish_timeout: DEFAULT_CRD_ESTABLISH_TIMEOUT,
            error_retry: DEFAULT_ERROR_RETRY,
            state_namespace: DEFAULT_STATE_NAMESPACE.to_string(),
            removed_stacks: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), ApplierError> {
        let bad = |m: &str| Err(ApplierError::Config(m.to_string()));
        if self.identity.is_empty() {
            return bad("identity must not be empty");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return bad("lease duration must be at least 1s");
        }
        if self.retry_period.is_zero() || self.retry_period * 3 > self.lease_duration * 2 {
            return bad("retry period must be positive and at most 2/3 of the lease duration");
        }
        if self.resync_interval.is_zero() || self.error_retry.is_zero() {
            return bad("resync interval and error retry must be positive");
        }
        if let Some(s) = self.removed_stacks.iter().find(|s| !valid_stack_name(s)) {
            return Err(ApplierError::InvalidStackName { name: s.clone() });
        }
        Ok(())
    }
}

/// The manifest applier. `run` until the token is cancelled; read progress
/// through [`Applier::status`].
///
/// States: *follower* (watches the directory, remembers which stacks it has
/// seen, applies nothing) and *leader* (holds the lease; applies every stack
/// on gaining the lease, on every settled change and every resync interval).
pub struct Applier {
    cfg: ApplierConfig,
    status: StatusHandle,
}

/// Bookkeeping of which stacks this process has seen on disk.
#[derive(Default)]
struct Tracker {
    /// Stacks seen with at least one manifest since this process started.
    seen: BTreeSet<String>,
    /// Stacks to prune: seen, then gone (or named in `removed_stacks`).
    removals: BTreeSet<String>,
    /// Stack contents as last applied successfully (skip unchanged stacks on
    /// change-triggered passes).
    applied: BTreeMap<String, Vec<SourceFile>>,
    /// Stack contents that failed to parse (not retried until they change).
    unparsable: BTreeMap<String, Vec<SourceFile>>,
}

impl Applier {
    pub fn new(cfg: ApplierConfig) -> Result<Self, ApplierError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            status: StatusHandle::new(),
        })
    }

    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    pub async fn run(self, cancel: CancellationToken) -> Result<(), ApplierError> {
        let span =
            tracing::info_span!("applier", component = "applier", identity = %self.cfg.identity);
        self.run_inner(cancel).instrument(span).await
    }

    async fn run_inner(self, cancel: CancellationToken) -> Result<(), ApplierError> {
        let cfg = &self.cfg;
        if !cfg.manifests_dir.exists() {
            fsutil::ensure_dir(&cfg.manifests_dir, fsutil::PRIVATE_DIR_MODE)?;
        }
        // File events only mark the directory dirty; the loop debounces.
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match res {
                Ok(ev) => !matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Open(_))
                        | EventKind::Access(AccessKind::Read)
                        | EventKind::Access(AccessKind::Close(AccessMode::Read))
                ),
                Err(_) => true,
            };
            if relevant {
                let _ = ev_tx.send(());
            }
        })
        .map_err(|source| ApplierError::Watch {
            path: cfg.manifests_dir.clone(),
            source,
        })?;
        watcher
            .watch(&cfg.manifests_dir, RecursiveMode::Recursive)
            .map_err(|source| ApplierError::Watch {
                path: cfg.manifests_dir.clone(),
                source,
            })?;

        let (leader_tx, mut leader_rx) = watch::channel(false);
        let election_cancel = cancel.child_token();
        // Aborted if this future is dropped (a crash-like stop: the lease then
        // expires), released if it is cancelled.
        let mut election = AbortOnDrop(tokio::spawn(
            run_election(
                cfg.client.clone(),
                LeaseConfig {
                    namespace: cfg.lease_namespace.clone(),
                    name: cfg.lease_name.clone(),
                    identity: cfg.identity.clone(),
                    duration: cfg.lease_duration,
                    retry_period: cfg.retry_period,
                },
                leader_tx,
                election_cancel.clone(),
            )
            .in_current_span(),
        ));

        let engine = Engine::new(
            cfg.client.clone(),
            cfg.state_namespace.clone(),
            cfg.crd_establish_timeout,
        );
        let mut tracker = Tracker::default();
        // Startup: note what is on disk. Missing or empty stacks are not
        // removals; only explicitly removed ones are.
        match scan(&cfg.manifests_dir) {
            Ok(s) => {
                tracker.seen = s.non_empty().map(str::to_string).collect();
            }
            Err(e) => {
                warn!(error = %crate::telemetry::Chain(&e), "cannot read the manifests directory")
            }
        }
        for s in &cfg.removed_stacks {
            if !tracker.seen.contains(s) {
                tracker.removals.insert(s.clone());
            }
        }
        info!(dir = %cfg.manifests_dir.display(), stacks = tracker.seen.len(), "applier started; waiting for the lease");

        let mut resync =
            tokio::time::interval_at(Instant::now() + cfg.resync_interval, cfg.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pending file changes: (first event, deadline after the last event).
        let mut pending: Option<(Instant, Instant)> = None;
        // Retry of stacks that failed: (when, current backoff).
        let mut retry: Option<Instant> = None;
        let mut backoff = cfg.error_retry;
        let mut full = true;
        let mut dirty = false;
        let mut leader = false;
        loop {
            let debounce_at = pending.map(|(_, d)| d);
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = ev_rx.recv() => {
                    if ev.is_none() { break; }
                    let now = Instant::now();
                    let first = pending.map(|(f, _)| f).unwrap_or(now);
                    let cap = first + cfg.debounce * MAX_DEBOUNCE_FACTOR;
                    pending = Some((first, (now + cfg.debounce).min(cap)));
                }
                _ = async { tokio::time::sleep_until(debounce_at.unwrap_or_else(Instant::now)).await }, if debounce_at.is_some() => {
                    pending = None;
                    dirty = true;
                }
                _ = async { tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)).await }, if retry.is_some() => {
                    retry = None;
                    dirty = true;
                }
                _ = resync.tick() => {
                    dirty = true;
                    full = true;
                }
                changed = leader_rx.changed() => {
                    if changed.is_err() { break; }
                    leader = *leader_rx.borrow_and_update();
                    self.status.set_leader(leader);
                    if leader {
                        dirty = true;
                        full = true;
                    }
                }
            }
            if !dirty {
                continue;
            }
            dirty = false;
            if !leader {
                // Followers keep track of removals so they can act on them
                // when they take over.
                self.observe(&mut tracker);
                continue;
            }
            let mut lost = leader_rx.clone();
            let do_full = std::mem::take(&mut full);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = lost.wait_for(|l| !*l) => {
                    warn!("lost the lease during an apply pass; stopping it");
                    full = true;
                }
                failed = self.pass(&engine, &mut tracker, do_full) => {
                    self.status.pass_done();
                    if failed {
                        retry = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_ERROR_RETRY.max(cfg.error_retry));
                    } else {
                        retry = None;
                        backoff = cfg.error_retry;
                    }
                }
            }
        }
        drop(watcher);
        election_cancel.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut election.0)
            .await
            .is_err()
        {
            warn!("lease release did not finish in time");
        }
        self.status.set_leader(false);
        info!("applier stopped");
        Ok(())
    }

    /// Follower bookkeeping: track seen stacks and removals without applying.
    fn observe(&self, tracker: &mut Tracker) {
        let Ok(s) = scan(&self.cfg.manifests_dir) else {
            return;
        };
        let present: BTreeSet<String> = s.non_empty().map(str::to_string).collect();
        for gone in tracker.seen.difference(&present) {
            tracker.removals.insert(gone.clone());
        }
        for p in &present {
            tracker.removals.remove(p);
        }
        tracker.seen = present;
    }

    /// One apply pass over the directory (as leader). Returns whether
    /// anything failed (and so deserves a retry).
    async fn pass(&self, engine: &Engine, tracker: &mut Tracker, full: bool) -> bool {
        let scan = match scan(&self.cfg.manifests_dir) {
            Ok(s) => s,
            Err(e) => {
                // Unreadable directory: do nothing at all, above all no pruning.
                warn!(error = %crate::telemetry::Chain(&e), "cannot read the manifests directory; nothing applied or pruned");
                return true;
            }
        };
        let mut failed = false;
        if full {
            tracker.applied.clear();
            tracker.unparsable.clear();
        }
        for name in &scan.invalid {
            let e = ApplierError::InvalidStackName { name: name.clone() };
            if self.status.stack(name).map(|s| s.state)
                != Some(StackState::Error {
                    message: e.to_string(),
                })
            {
                warn!(stack = %name, error = %crate::telemetry::Chain(&e), "ignoring directory");
                self.status.set_stack(
                    name,
                    StackState::Error {
                        message: crate::telemetry::Chain(&e).to_string(),
                    },
                    0,
                );
            }
        }
        let present: BTreeSet<String> = scan.non_empty().map(str::to_string).collect();
        for gone in tracker.seen.difference(&present) {
            tracker.removals.insert(gone.clone());
        }
        tracker.seen = present.clone();

        for name in &present {
            tracker.removals.remove(name);
            let files = scan.stacks.get(name).cloned().unwrap_or_default();
            if let Some(errors) = scan.unreadable.get(name) {
                let e = ApplierError::from_many(errors.iter().map(clone_err).collect());
                self.report_error(name, e, files.len());
                tracker.applied.remove(name);
                failed = true;
                continue;
            }
            // Unchanged since it last applied, or since it last failed to
            // parse (only an edit can fix that; no need to log it again).
            if tracker.applied.get(name) == Some(&files)
                || tracker.unparsable.get(name) == Some(&files)
            {
                continue;
            }
            tracker.unparsable.remove(name);
            let manifests = match parse_stack(&files) {
                Ok(m) => m,
                Err(errors) => {
                    self.report_error(name, ApplierError::from_many(errors), files.len());
                    tracker.applied.remove(name);
                    tracker.unparsable.insert(name.clone(), files);
                    continue;
                }
            };
            match engine.apply_stack(name, &manifests).await {
                Ok(a) => {
                    info!(stack = %name, objects = a.objects, pruned = a.pruned, result = "applied", "stack applied");
                    self.status.set_stack(name, StackState::Applied, a.objects);
                    tracker.applied.insert(name.clone(), files);
                }
                Err(e) => {
                    self.report_error(name, e, manifests.len());
                    tracker.applied.remove(name);
                    failed = true;
                }
            }
        }

        let removals: Vec<String> = tracker.removals.iter().cloned().collect();
        for name in removals {
            match engine.remove_stack(&name).await {
                Ok(Some(n)) => {
                    info!(stack = %name, objects = n, result = "pruned", "stack removed from disk; its objects were deleted");
                    self.status.set_stack(&name, StackState::Pruned, n);
                    tracker.removals.remove(&name);
                    tracker.applied.remove(&name);
                    tracker.unparsable.remove(&name);
                }
                Ok(None) => {
                    tracker.removals.remove(&name);
                    tracker.applied.remove(&name);
                }
                Err(e) => {
                    self.report_error(&name, e, 0);
                    failed = true;
                }
            }
        }
        failed
    }

    fn report_error(&self, stack: &str, e: ApplierError, objects: usize) {
        warn!(stack, objects, result = "error", error = %crate::telemetry::Chain(&e), "stack not applied; nothing in it was pruned");
        self.status.set_stack(
            stack,
            StackState::Error {
                message: crate::telemetry::Chain(&e).to_string(),
            },
            objects,
        );
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Scan errors are reported on every pass; `ApplierError` is not `Clone`
/// (it carries sources), so keep the message.
fn clone_err(e: &ApplierError) -> ApplierError {
    match e {
        ApplierError::Parse {
            file,
            index,
            line,
            message,
        } => ApplierError::Parse {
            file: file.clone(),
            index: *index,
            line: *line,
            message: message.clone(),
        },
        ApplierError::Io { path, source } => ApplierError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => ApplierError::Config(other.to_string()),
    }
}
