//! The supervision loop: restart with backoff, stop, restart on request.
//!
//! It is written against two narrow traits so the timing logic can be tested
//! with a fake process under tokio's paused clock; `instance.rs` implements
//! them with real processes.

use std::future::Future;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::{BackoffPolicy, Streak};
use super::status::{ChildState, ChildStatus, ExitInfo};
use super::SupervisorError;

/// Poll interval while waiting for leftover group members to exit.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// After SIGKILL, how long to wait before complaining that the process is
/// still there (uninterruptible sleep); the wait itself goes on.
const KILL_WAIT_WARN: Duration = Duration::from_secs(10);

/// One running instance of a child (the leader of its process group).
pub(crate) trait Instance: Send + 'static {
    fn pid(&self) -> i32;
    /// Resolves once the leader has exited. It stays unreaped, so its pid
    /// (and process-group id) cannot be reused until [`Instance::reap`].
    /// Cancel-safe and repeatable.
    fn exited(&mut self) -> impl Future<Output = ()> + Send + '_;
    /// Signals the whole process group.
    fn signal_group(&self, sig: Signal);
    /// Whether group members other than the (exited) leader are still alive.
    fn has_remnants(&self) -> bool;
    /// Collects the exit status of the exited leader.
    fn reap(self) -> ExitInfo;
}

/// Starts instances of one child.
pub(crate) trait Launcher: Send + Sync + 'static {
    type Instance: Instance;
    /// Spawns an instance, writes its pid file and starts its log forwarding.
    fn launch(&self) -> impl Future<Output = Result<Self::Instance, SupervisorError>> + Send + '_;
    /// The last instance is gone: remove its pid file.
    fn forget(&self);
}

#[derive(Debug)]
pub(crate) enum Request {
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub(crate) struct LoopConfig {
    pub name: String,
    pub stop_grace: Duration,
    pub backoff: BackoffPolicy,
}

enum Phase<I> {
    Running { inst: I, since: Instant },
    Waiting { until: Instant, delay: Duration },
}

struct Supervisor<L: Launcher> {
    cfg: LoopConfig,
    launcher: L,
    status: watch::Sender<ChildStatus>,
    streak: Streak,
}

/// Supervises `first` (spawned at `since`) until stopped or until every
/// handle is dropped.
pub(crate) async fn supervise<L: Launcher>(
    cfg: LoopConfig,
    launcher: L,
    first: L::Instance,
    since: impl Into<Instant>,
    status: watch::Sender<ChildStatus>,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut sup = Supervisor {
        cfg,
        launcher,
        status,
        streak: Streak::default(),
    };
    let mut phase = Phase::Running {
        inst: first,
        since: since.into(),
    };
    loop {
        phase = match phase {
            Phase::Running { mut inst, since } => {
                let event = tokio::select! {
                    biased;
                    req = requests.recv() => Some(req),
                    () = inst.exited() => None,
                };
                match event {
                    None => sup.on_exit(inst, since),
                    Some(None) => {
                        tracing::info!(component = %sup.cfg.name, "supervisor handle dropped; stopping");
                        sup.terminate(inst).await;
                        sup.finish();
                        return;
                    }
                    Some(Some(Request::Stop(reply))) => {
                        sup.terminate(inst).await;
                        sup.finish();
                        let _ = reply.send(());
                        return;
                    }
                    Some(Some(Request::Restart(reply))) => {
                        tracing::info!(component = %sup.cfg.name, "restart requested");
                        sup.terminate(inst).await;
                        sup.streak.reset();
                        let next = sup.launch(Duration::ZERO).await;
                        let _ = reply.send(());
                        next
                    }
                }
            }
            Phase::Waiting { until, delay } => {
                let mut pending_reply = None;
                if !delay.is_zero() {
                    let event = tokio::select! {
                        biased;
                        req = requests.recv() => Some(req),
                        () = tokio::time::sleep_until(until) => None,
                    };
                    match event {
                        None => {}
                        Some(None) | Some(Some(Request::Stop(_))) => {
                            tracing::info!(component = %sup.cfg.name, "stopped during backoff");
                            sup.finish();
                            if let Some(Some(Request::Stop(reply))) = event {
                                let _ = reply.send(());
                            }
                            return;
                        }
                        Some(Some(Request::Restart(reply))) => {
                            tracing::info!(component = %sup.cfg.name, "restart requested during backoff");
                            sup.streak.reset();
                            pending_reply = Some(reply);
                        }
                    }
                }
                let delay = if pending_reply.is_some() {
                    Duration::ZERO
                } else {
                    delay
                };
                let next = sup.launch(delay).await;
                if let Some(reply) = pending_reply {
                    let _ = reply.send(());
                }
                next
            }
        };
    }
}

impl<L: Launcher> Supervisor<L> {
    /// The leader exited by itself: clean up and schedule the next spawn.
    fn on_exit(&mut self, inst: L::Instance, since: Instant) -> Phase<L::Instance> {
        let pid = inst.pid();
        // Leftovers of a crashed instance must not hold its ports or files
        // when the next one starts. The unreaped leader keeps the group id
        // from being reused, so this cannot hit an unrelated group.
        inst.signal_group(Signal::SIGKILL);
        let exit = inst.reap();
        self.launcher.forget();
        let ran_for = since.elapsed();
        let delay = self.streak.on_exit(&self.cfg.backoff, ran_for);
        tracing::warn!(
            component = %self.cfg.name,
            pid,
            exit_code = exit.code,
            signal = exit.signal,
            ran_for = %humantime::format_duration(round_ms(ran_for)),
            restart_in = %humantime::format_duration(delay),
            "{exit}; restarting in {}",
            humantime::format_duration(delay)
        );
        let until = Instant::now() + delay;
        self.status.send_modify(|s| {
            s.state = ChildState::Backoff {
                until: until.into_std(),
            };
            s.last_exit = Some(exit);
            s.pid = None;
        });
        Phase::Waiting { until, delay }
    }

    /// Spawns the next instance after having waited `delay`; on failure
    /// schedules another attempt.
    async fn launch(&mut self, delay: Duration) -> Phase<L::Instance> {
        match self.launcher.launch().await {
            Ok(inst) => {
                let pid = inst.pid();
                self.status.send_modify(|s| {
                    s.state = ChildState::Running;
                    s.pid = Some(pid);
                    s.restarts += 1;
                    s.started_at = Some(SystemTime::now());
                    s.restart_delay = delay;
                    s.last_error = None;
                });
                tracing::info!(component = %self.cfg.name, pid, "restarted");
                Phase::Running {
                    inst,
                    since: Instant::now(),
                }
            }
            Err(e) => {
                let next = self.streak.on_spawn_failure(&self.cfg.backoff);
                tracing::error!(
                    component = %self.cfg.name,
                    error = %crate::telemetry::Chain(&e),
                    "restart failed; retrying in {}",
                    humantime::format_duration(next)
                );
                let until = Instant::now() + next;
                self.status.send_modify(|s| {
                    s.state = ChildState::Backoff {
                        until: until.into_std(),
                    };
                    s.pid = None;
                    s.last_error = Some(crate::telemetry::Chain(&e).to_string());
                });
                // Zero only with a zero-delay policy step; still go through
                // Waiting so a stop request is seen between attempts.
                Phase::Waiting {
                    until,
                    delay: next.max(Duration::from_millis(1)),
                }
            }
        }
    }

    /// SIGTERM to the group, wait up to the grace for the group to empty,
    /// SIGKILL the rest, wait until it is gone; reap and forget.
    async fn terminate(&mut self, mut inst: L::Instance) {
        let name = self.cfg.name.clone();
        let pid = inst.pid();
        let grace = self.cfg.stop_grace;
        self.status.send_modify(|s| s.state = ChildState::Stopping);
        tracing::info!(component = %name, pid, "stopping: SIGTERM to process group, grace {}", humantime::format_duration(grace));
        let deadline = Instant::now() + grace;
        inst.signal_group(Signal::SIGTERM);
        let mut escalated = false;
        if tokio::time::timeout_at(deadline, inst.exited())
            .await
            .is_err()
        {
            tracing::warn!(component = %name, pid, "still running after the grace period; sending SIGKILL to process group");
            inst.signal_group(Signal::SIGKILL);
            escalated = true;
            wait_killed(&name, pid, inst.exited()).await;
        }
        // The leader is gone but still unreaped; give the rest of the group
        // what is left of the grace period, then kill it.
        while inst.has_remnants() {
            if Instant::now() >= deadline {
                tracing::warn!(component = %name, pid, "other processes of the group outlived the grace period; sending SIGKILL to process group");
                inst.signal_group(Signal::SIGKILL);
                escalated = true;
                let waited = Instant::now();
                while inst.has_remnants() {
                    if waited.elapsed() >= KILL_WAIT_WARN {
                        tracing::error!(component = %name, pid, "processes of the group survive SIGKILL (uninterruptible sleep?); giving up on them");
                        break;
                    }
                    tokio::time::sleep(GROUP_POLL).await;
                }
                break;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        let exit = inst.reap();
        self.launcher.forget();
        self.status.send_modify(|s| {
            s.last_exit = Some(exit);
            s.pid = None;
        });
        let how = if escalated { "SIGKILL" } else { "SIGTERM" };
        tracing::info!(
            component = %name,
            pid,
            exit_code = exit.code,
            signal = exit.signal,
            stopped_by = how,
            "stopped ({exit}) after {how}"
        );
    }

    fn finish(&mut self) {
        self.launcher.forget();
        self.status.send_modify(|s| {
            s.state = ChildState::Stopped;
            s.pid = None;
        });
    }
}

/// Waits for a SIGKILLed leader, complaining if that takes suspiciously long.
async fn wait_killed(name: &str, pid: i32, exited: impl Future<Output = ()>) {
    tokio::pin!(exited);
    if tokio::time::timeout(KILL_WAIT_WARN, &mut exited)
        .await
        .is_err()
    {
        tracing::error!(component = %name, pid, "still not exited after SIGKILL (uninterruptible sleep?); waiting");
        exited.await;
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    //! The loop against a fake process, on tokio's paused clock: exact
    //! timings without real processes or sleeps.

    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the fake child does.
    #[derive(Clone, Copy)]
    struct Behaviour {
        /// Exits by itself after this long (None: runs until signalled).
        runs_for: Option<Duration>,
        ignores_term: bool,
    }

    #[derive(Default)]
    struct Log {
        spawns: Vec<Instant>,
        signals: Vec<(Instant, Signal)>,
        next_pid: i32,
    }

    struct FakeLauncher {
        log: Arc<Mutex<Log>>,
        /// Behaviour of instance n (the last one repeats).
        plan: Vec<Behaviour>,
        fail_spawns: Arc<Mutex<u32>>,
    }

    struct FakeInstance {
        pid: i32,
        behaviour: Behaviour,
        exit_at: watch::Sender<Option<(Instant, ExitInfo)>>,
        log: Arc<Mutex<Log>>,
    }

    impl Launcher for FakeLauncher {
        type Instance = FakeInstance;
        async fn launch(&self) -> Result<FakeInstance, SupervisorError> {
            {
                let mut fail = self.fail_spawns.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(SupervisorError::Spawn {
                        program: "/fake".into(),
                        source: std::io::Error::from_raw_os_error(libc::ENOENT),
                    });
                }
            }
            let mut log = self.log.lock().unwrap();
            let n = log.spawns.len();
            log.spawns.push(Instant::now());
            log.next_pid += 1;
            let behaviour = self.plan[n.min(self.plan.len() - 1)];
            let exit_at = behaviour.runs_for.map(|d| {
                (
                    Instant::now() + d,
                    ExitInfo {
                        code: Some(1),
                        signal: None,
                    },
                )
            });
            Ok(FakeInstance {
                pid: 1000 + log.next_pid,
                behaviour,
                exit_at: watch::channel(exit_at).0,
                log: self.log.clone(),
            })
        }
        fn forget(&self) {}
    }

    impl Instance for FakeInstance {
        fn pid(&self) -> i32 {
            self.pid
        }
        async fn exited(&mut self) {
            let mut rx = self.exit_at.subscribe();
            loop {
                let at = rx.borrow_and_update().map(|(at, _)| at);
                match at {
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(at) => return,
                        // A signal may move the exit earlier.
                        _ = rx.changed() => {}
                    },
                    None => {
                        let _ = rx.changed().await;
                    }
                }
            }
        }
        fn signal_group(&self, sig: Signal) {
            self.log.lock().unwrap().signals.push((Instant::now(), sig));
            if sig == Signal::SIGTERM && self.behaviour.ignores_term {
                return;
            }
            let now = Instant::now();
            self.exit_at.send_modify(|e| {
                if e.is_none_or(|(at, _)| at > now) {
                    *e = Some((
                        now,
                        ExitInfo {
                            code: None,
                            signal: Some(sig as i32),
                        },
                    ));
                }
            });
        }
        fn has_remnants(&self) -> bool {
            false
        }
        fn reap(self) -> ExitInfo {
            self.exit_at.borrow().map(|(_, e)| e).unwrap()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Harness {
        log: Arc<Mutex<Log>>,
        fail_spawns: Arc<Mutex<u32>>,
        status: watch::Receiver<ChildStatus>,
        requests: mpsc::Sender<Request>,
        start: Instant,
    }

    async fn run(plan: Vec<Behaviour>, backoff: BackoffPolicy, grace: Duration) -> Harness {
        let log = Arc::new(Mutex::new(Log::default()));
        let fail_spawns = Arc::new(Mutex::new(0));
        let launcher = FakeLauncher {
            log: log.clone(),
            plan,
            fail_spawns: fail_spawns.clone(),
        };
        let start = Instant::now();
        let first = launcher.launch().await.unwrap();
        let (status_tx, status) = watch::channel(ChildStatus {
            state: ChildState::Running,
            pid: Some(first.pid),
            restarts: 0,
            last_exit: None,
            started_at: None,
            restart_delay: Duration::ZERO,
            last_error: None,
        });
        let (requests, rx) = mpsc::channel(4);
        let cfg = LoopConfig {
            name: "fake".into(),
            stop_grace: grace,
            backoff,
        };
        tokio::spawn(supervise(cfg, launcher, first, start, status_tx, rx));
        Harness {
            log,
            fail_spawns,
            status,
            requests,
            start,
        }
    }

    impl Harness {
        fn spawn_offsets(&self) -> Vec<Duration> {
            let log = self.log.lock().unwrap();
            log.spawns.iter().map(|t| *t - self.start).collect()
        }
        async fn stop(&self) {
            let (tx, rx) = oneshot::channel();
            self.requests.send(Request::Stop(tx)).await.unwrap();
            rx.await.unwrap();
        }
        async fn restart(&self) {
            let (tx, rx) = oneshot::channel();
            self.requests.send(Request::Restart(tx)).await.unwrap();
            rx.await.unwrap();
        }
    }

    const CRASH: Behaviour = Behaviour {
        runs_for: Some(Duration::ZERO),
        ignores_term: false,
    };
    const FOREVER: Behaviour = Behaviour {
        runs_for: None,
        ignores_term: false,
    };

    #[tokio::test(start_paused = true)]
    async fn crash_loop_follows_the_backoff_sequence() {
        let h = run(vec![CRASH], BackoffPolicy::default(), ms(100)).await;
        tokio::time::sleep(ms(6500)).await;
        // Delays 0, 100, 200, 400, 800, 1600, 3200 ms between spawns.
        assert_eq!(
            h.spawn_offsets(),
            [0, 0, 100, 300, 700, 1500, 3100, 6300].map(ms).to_vec()
        );
        let st = h.status.borrow().clone();
        assert!(matches!(st.state, ChildState::Backoff { .. }), "{st:?}");
        assert_eq!(st.restarts, 7);
        assert_eq!(
            st.last_exit,
            Some(ExitInfo {
                code: Some(1),
                signal: None
            })
        );
        h.stop().await;
        assert_eq!(h.status.borrow().state, ChildState::Stopped);
        // Stopped during backoff: nothing more is spawned.
        tokio::time::sleep(ms(60_000)).await;
        assert_eq!(h.spawn_offsets().len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_caps_at_max() {
        let policy = BackoffPolicy {
            max: ms(300),
            ..BackoffPolicy::default()
        };
        let h = run(vec![CRASH], policy, ms(100)).await;
        tokio::time::sleep(ms(1550)).await;
        assert_eq!(
            h.spawn_offsets(),
            [0, 0, 100, 300, 600, 900, 1200, 1500].map(ms).to_vec()
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_run_resets_the_sequence() {
        let stable = Behaviour {
            runs_for: Some(ms(300)),
            ignores_term: false,
        };
        let policy = BackoffPolicy {
            stable_after: ms(300),
            ..BackoffPolicy::default()
        };
        // Three quick crashes, one stable run, then quick crashes again.
        let h = run(vec![CRASH, CRASH, CRASH, stable, CRASH], policy, ms(100)).await;
        tokio::time::sleep(ms(2000)).await;
        // 0 | +0 | +100 | +200 (stable, runs 300) | +0 | +100 | +200 | +400
        assert_eq!(
            h.spawn_offsets(),
            [0, 0, 100, 300, 600, 700, 900, 1300].map(ms).to_vec()
        );
        let st = h.status.borrow().clone();
        assert_eq!(st.restart_delay, ms(400));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stop_escalates_to_sigkill_after_the_grace() {
        let stubborn = Behaviour {
            runs_for: None,
            ignores_term: true,
        };
        let h = run(vec![stubborn], BackoffPolicy::default(), ms(2000)).await;
        tokio::time::sleep(ms(50)).await;
        let t0 = Instant::now();
        h.stop().await;
        assert_eq!(Instant::now() - t0, ms(2000));
        let log = h.log.lock().unwrap();
        let sigs: Vec<(Duration, Signal)> =
            log.signals.iter().map(|(t, s)| (*t - t0, *s)).collect();
        assert_eq!(
            sigs,
            vec![(ms(0), Signal::SIGTERM), (ms(2000), Signal::SIGKILL)]
        );
        let st = h.status.borrow().clone();
        assert_eq!(st.state, ChildState::Stopped);
        assert_eq!(st.last_exit.unwrap().signal, Some(libc::SIGKILL));
        assert_eq!(st.pid, None);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_of_a_cooperative_child_does_not_wait_for_the_grace() {
        let h = run(vec![FOREVER], BackoffPolicy::default(), ms(5000)).await;
        let t0 = Instant::now();
        h.stop().await;
        assert_eq!(Instant::now() - t0, ms(0));
        assert_eq!(
            h.status.borrow().last_exit.unwrap().signal,
            Some(libc::SIGTERM)
        );
        // Idempotent: a second stop finds the supervisor finished.
        let (tx, _rx) = oneshot::channel();
        assert!(h.requests.send(Request::Stop(tx)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn restart_replaces_the_instance_and_resets_backoff() {
        let h = run(
            vec![CRASH, CRASH, CRASH, FOREVER],
            BackoffPolicy::default(),
            ms(100),
        )
        .await;
        tokio::time::sleep(ms(350)).await;
        assert_eq!(h.spawn_offsets(), [0, 0, 100, 300].map(ms).to_vec());
        h.restart().await;
        let st = h.status.borrow().clone();
        assert_eq!(st.state, ChildState::Running);
        assert_eq!(st.restarts, 4);
        assert_eq!(st.restart_delay, Duration::ZERO);
        assert_eq!(h.spawn_offsets().last(), Some(&ms(350)));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn restart_during_backoff_spawns_at_once() {
        let h = run(
            vec![CRASH, CRASH, FOREVER],
            BackoffPolicy::default(),
            ms(100),
        )
        .await;
        tokio::time::sleep(ms(10)).await;
        // Second instance crashed at 0; next spawn due at 100 ms.
        assert!(matches!(
            h.status.borrow().state,
            ChildState::Backoff { .. }
        ));
        h.restart().await;
        assert_eq!(h.spawn_offsets(), [0, 0, 10].map(ms).to_vec());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_spawns_back_off_and_are_reported() {
        let h = run(vec![CRASH, FOREVER], BackoffPolicy::default(), ms(100)).await;
        *h.fail_spawns.lock().unwrap() = 2;
        tokio::time::sleep(ms(5)).await;
        let st = h.status.borrow().clone();
        assert!(
            st.last_error.as_deref().unwrap().contains("/fake"),
            "{st:?}"
        );
        tokio::time::sleep(ms(1000)).await;
        // crash at 0 → attempt at 0 fails → +100 fails → +200 succeeds.
        assert_eq!(h.spawn_offsets(), [0, 300].map(ms).to_vec());
        let st = h.status.borrow().clone();
        assert_eq!(st.state, ChildState::Running);
        assert_eq!(st.restarts, 1);
        assert_eq!(st.last_error, None);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_the_child() {
        let h = run(vec![FOREVER], BackoffPolicy::default(), ms(100)).await;
        let mut status = h.status.clone();
        drop(h.requests);
        tokio::time::timeout(ms(1000), async {
            while status.borrow_and_update().state != ChildState::Stopped {
                if status.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(status.borrow().state, ChildState::Stopped);
        let log = h.log.lock().unwrap();
        assert_eq!(log.signals[0].1, Signal::SIGTERM);
    }
}
