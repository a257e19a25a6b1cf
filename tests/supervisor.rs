//! Supervisor against real processes.
//!
//! The children are this test binary itself, re-executed with
//! `child_main --exact` and `MKECTL_TEST_CHILD=<mode>` in the environment:
//! `child_main` is an ordinary (trivially passing) test unless that variable
//! is set, in which case it becomes the requested child and never returns.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use mkectl::supervisor::{
    self, cleanup_stale, pid_file_path, BackoffPolicy, ChildSpec, ChildState, ChildStatus,
    ExitInfo, SupervisorError, MARKER_ENV,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::watch;

const MODE_ENV: &str = "MKECTL_TEST_CHILD";
const DIR_ENV: &str = "MKECTL_TEST_DIR";
const READY_ENV: &str = "MKECTL_TEST_READY";
const GRANDCHILD_ENV: &str = "MKECTL_TEST_GRANDCHILD";
/// Upper bound of every wait in these tests; only reached when broken.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the child

#[test]
fn child_main() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return; // an ordinary test run: nothing to do
    };
    let ready = std::env::var_os(READY_ENV).map(PathBuf::from);
    let mut parts = mode.split(':');
    match parts.next().unwrap_or_default() {
        // exit:<code>[:<ms before exiting>]
        "exit" => {
            let code: i32 = parts.next().unwrap().parse().unwrap();
            if let Some(ms) = parts.next() {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
            std::process::exit(code);
        }
        "forever" => {
            signal_ready(ready.as_deref(), std::process::id());
            park()
        }
        "ignore-term" => {
            // SAFETY: setting a signal disposition to SIG_IGN.
            unsafe {
                nix::sys::signal::signal(Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn)
            }
            .unwrap();
            signal_ready(ready.as_deref(), std::process::id());
            park()
        }
        "print" => {
            let mut out = std::io::stdout().lock();
            // libtest already wrote "test child_main ... " without a newline.
            writeln!(out, "\nhello stdout").unwrap();
            out.write_all(&vec![b'x'; 100 * 1024]).unwrap();
            writeln!(out).unwrap();
            out.write_all(b"after long \xff line\n").unwrap();
            out.flush().unwrap();
            drop(out);
            eprintln!("hello stderr");
            park()
        }
        // Forks a grandchild in the same process group (mode from
        // MKECTL_TEST_GRANDCHILD); the grandchild reports readiness.
        "grandchild" => {
            let grand_mode = std::env::var(GRANDCHILD_ENV).unwrap_or_else(|_| "forever".into());
            let mut grandchild = Command::new(std::env::current_exe().unwrap())
                .args(child_args())
                .env(MODE_ENV, grand_mode)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            // Never returns in practice: the grandchild runs until killed.
            let _ = grandchild.wait();
            park()
        }
        // A tiny mkectl: supervises a "forever" child, then idles.
        "mini-supervisor" => {
            let dir = PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let spec = child_spec("pdeath", &dir, "forever");
                let _sup = supervisor::start(spec).await.unwrap();
                std::future::pending::<()>().await
            })
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes `pid` to the ready file atomically, so a reader never sees half.
fn signal_ready(ready: Option<&Path>, pid: u32) {
    if let Some(path) = ready {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pid.to_string()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

fn child_args() -> Vec<String> {
    ["child_main", "--exact", "--nocapture", "--test-threads=1"]
        .map(String::from)
        .to_vec()
}

// ---------------------------------------------------------------- helpers

/// A spec running this binary in `mode`, run dir `<dir>/run`.
fn child_spec(name: &str, dir: &Path, mode: &str) -> ChildSpec {
    let mut spec = ChildSpec::new(name, std::env::current_exe().unwrap(), dir.join("run"));
    spec.args = child_args();
    spec.env = vec![
        (MODE_ENV.into(), mode.into()),
        (DIR_ENV.into(), dir.display().to_string()),
    ];
    spec.stop_grace = Duration::from_secs(2);
    spec
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All tracing output of this test process, as JSON lines.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let cap = Capture::default();
        let writer = cap.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .init();
        cap
    })
}

/// Events that carry `component = <component>`.
fn events(component: &str) -> Vec<Value> {
    let buf = capture().0.lock().unwrap().clone();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["component"] == component)
        .collect()
}

/// Waits until an event of `component` satisfies `pred`.
async fn wait_event(component: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(ev) = events(component).into_iter().find(|e| pred(e)) {
            return ev;
        }
        if start.elapsed() >= DEADLINE {
            let seen: Vec<String> = events(component)
                .iter()
                .map(|e| message(e).chars().take(120).collect())
                .collect();
            panic!("no log event for {what}; messages of {component}: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(ev: &Value) -> &str {
    ev["message"].as_str().unwrap_or_default()
}

async fn wait_status(
    rx: &mut watch::Receiver<ChildStatus>,
    what: &str,
    pred: impl FnMut(&ChildStatus) -> bool,
) -> ChildStatus {
    let result = match tokio::time::timeout(DEADLINE, rx.wait_for(pred)).await {
        Ok(Ok(st)) => Some(st.clone()),
        Ok(Err(_)) => panic!("supervisor finished while waiting for {what}"),
        Err(_) => None,
    };
    result.unwrap_or_else(|| panic!("timed out waiting for {what}; status {:?}", *rx.borrow()))
}

/// Blocking poll with a deadline (for files written by other processes).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid(path: &Path) -> i32 {
    wait_until(&format!("{}", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `/proc/<pid>/stat` state and process group; `None` if gone.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    Some((state, f.next()?.parse().ok()?))
}

/// Exists and has not exited (zombies waiting for a reaper count as dead:
/// pid 1 in a container may never reap them).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// Live processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(s, g)| g == pgid && !matches!(s, 'Z' | 'X')))
        .collect()
}

fn has_marker(pid: i32, value: &str) -> bool {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let want = format!("{MARKER_ENV}={value}");
    env.split(|&b| b == 0).any(|e| e == want.as_bytes())
}

/// Kills a process group when dropped, so a failing test leaves nothing.
struct GroupGuard(i32);
impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn canonical_marker(run_dir: &Path, name: &str) -> String {
    format!(
        "{}/{name}",
        std::fs::canonicalize(run_dir).unwrap().display()
    )
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn pid_file_marker_and_group_are_set_up_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = child_spec("setup", dir.path(), "forever");
    spec.cwd = Some(dir.path().to_path_buf());
    let run_dir = spec.run_dir.clone();
    let sup = supervisor::start(spec).await.unwrap();
    let st = sup.status();
    let pid = st.pid.unwrap();
    let _guard = GroupGuard(pid);
    assert_eq!(st.state, ChildState::Running);
    assert_eq!(st.restarts, 0);
    assert_eq!(sup.name(), "setup");

    let pid_file = pid_file_path(&run_dir, "setup");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    assert!(has_marker(pid, &canonical_marker(&run_dir, "setup")));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
    // Leader of its own process group.
    assert_eq!(proc_stat(pid).unwrap().1, pid);
    // The environment is filtered: nothing of ours but what was asked for.
    let env = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(env.contains("MKECTL_TEST_CHILD=forever"));
    assert!(!env.contains("CARGO_"), "{env}");

    sup.stop().await;
    let st = sup.status();
    assert_eq!(st.state, ChildState::Stopped);
    assert_eq!(st.pid, None);
    assert_eq!(st.last_exit.unwrap().signal, Some(libc::SIGTERM));
    assert!(!pid_file.exists());
    assert!(!alive(pid));
    // Idempotent, and restart after stop does nothing.
    sup.stop().await;
    sup.restart().await;
    assert_eq!(sup.status().state, ChildState::Stopped);
    assert!(!pid_file.exists());
}

#[tokio::test]
async fn spawn_failures_are_returned_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = child_spec("missing", dir.path(), "forever");
    missing.program = dir.path().join("no-such-binary");
    match supervisor::start(missing).await {
        Err(SupervisorError::Spawn { program, source }) => {
            assert_eq!(program, dir.path().join("no-such-binary"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let mut denied = child_spec("denied", dir.path(), "forever");
    denied.program = not_exec.clone();
    let err = supervisor::start(denied).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{err:?}"
    );
    assert!(err.to_string().contains("not-executable"), "{err}");
    let mut bad_cwd = child_spec("badcwd", dir.path(), "forever");
    bad_cwd.cwd = Some(dir.path().join("nowhere"));
    let err = supervisor::start(bad_cwd).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::InvalidSpec { .. }) && err.to_string().contains("nowhere"),
        "{err:?}"
    );
    assert!(!pid_file_path(&dir.path().join("run"), "denied").exists());
}

#[tokio::test]
async fn crash_loop_backs_off_0_100_200_400_ms() {
    let _ = capture();
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor::start(child_spec("crashloop", dir.path(), "exit:3"))
        .await
        .unwrap();
    let mut rx = sup.subscribe();
    // restarts → (delay waited before that instance, its start time)
    let mut seen: BTreeMap<u64, (Duration, SystemTime)> = BTreeMap::new();
    let first = sup.status();
    seen.insert(0, (first.restart_delay, first.started_at.unwrap()));
    let st = wait_status(&mut rx, "4 restarts", |st| {
        if let Some(at) = st.started_at {
            seen.entry(st.restarts).or_insert((st.restart_delay, at));
        }
        st.restarts >= 4
    })
    .await;
    sup.stop().await;
    assert_eq!(
        st.last_exit,
        Some(ExitInfo {
            code: Some(3),
            signal: None
        })
    );

    let expected = [0, 0, 100, 200, 400].map(Duration::from_millis);
    for (k, want) in expected.iter().enumerate() {
        let (delay, _) = seen[&(k as u64)];
        assert_eq!(delay, *want, "delay before instance {k}; seen {seen:?}");
    }
    // The delays were really waited (lower bounds only).
    for k in 1..expected.len() {
        let gap = seen[&(k as u64)]
            .1
            .duration_since(seen[&(k as u64 - 1)].1)
            .unwrap();
        assert!(gap >= expected[k], "gap before instance {k} is {gap:?}");
    }
    wait_event("crashloop", "exit log", |e| {
        message(e).starts_with("exited with code 3; restarting in 100ms")
    })
    .await;
}

#[tokio::test]
async fn backoff_resets_after_a_stable_run() {
    let dir = tempfile::tempdir().unwrap();
    // Each instance takes its behaviour from a counter file: three quick
    // crashes, one run longer than stable_after, one quick crash, then it
    // stays up. Done with a tiny shell script to keep the state outside.
    let script = dir.path().join("seq.sh");
    std::fs::write(
        &script,
        r#"n=$(cat "$D/count" 2>/dev/null || echo 0); echo $((n+1)) > "$D/count"
case $n in 0|1|2|4) exit 1;; 3) sleep 0.5; exit 1;; *) exec sleep 1000;; esac
"#,
    )
    .unwrap();
    let mut spec = ChildSpec::new("reset", "/bin/sh", dir.path().join("run"));
    spec.args = vec![script.display().to_string()];
    spec.env = vec![("D".into(), dir.path().display().to_string())];
    spec.backoff = BackoffPolicy {
        stable_after: Duration::from_millis(300),
        ..BackoffPolicy::default()
    };
    let sup = supervisor::start(spec).await.unwrap();
    let mut rx = sup.subscribe();
    let mut delays = BTreeMap::new();
    let st = wait_status(&mut rx, "the long-lived 6th instance", |st| {
        delays.insert(st.restarts, st.restart_delay);
        st.restarts == 5 && st.state == ChildState::Running
    })
    .await;
    let _guard = GroupGuard(st.pid.unwrap());
    // Instance 4 follows the stable run: no delay. Instance 5 follows one
    // quick crash: the sequence started over at 100 ms (it would be 800 ms
    // without the reset).
    assert_eq!(delays[&4], Duration::ZERO, "{delays:?}");
    assert_eq!(st.restart_delay, Duration::from_millis(100));
    assert_eq!(delays[&3], Duration::from_millis(200), "{delays:?}");
    sup.stop().await;
}

#[tokio::test]
async fn exit_codes_and_signals_are_recorded_and_logged() {
    let _ = capture();
    let dir = tempfile::tempdir().unwrap();
    // Exit code: the second quick crash leaves it in a long backoff.
    let mut spec = child_spec("exitcode", dir.path(), "exit:7");
    spec.backoff.initial = Duration::from_secs(60);
    spec.backoff.max = Duration::from_secs(60);
    let sup = supervisor::start(spec).await.unwrap();
    let mut rx = sup.subscribe();
    let st = wait_status(&mut rx, "backoff", |st| {
        st.restarts == 1 && matches!(st.state, ChildState::Backoff { .. })
    })
    .await;
    assert_eq!(
        st.last_exit,
        Some(ExitInfo {
            code: Some(7),
            signal: None
        })
    );
    assert_eq!(st.pid, None);
    let ev = wait_event("exitcode", "exit code log", |e| {
        message(e).starts_with("exited with code 7")
    })
    .await;
    assert_eq!(ev["exit_code"], 7);
    // Stopping a child that is already dead (in backoff) returns at once.
    tokio::time::timeout(Duration::from_secs(5), sup.stop())
        .await
        .expect("stop during backoff hangs");
    assert_eq!(sup.status().state, ChildState::Stopped);

    // Signal: kill -9 from outside; it is restarted and the signal recorded.
    let sup = supervisor::start(child_spec("killed", dir.path(), "forever"))
        .await
        .unwrap();
    let old = sup.status().pid.unwrap();
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    let mut rx = sup.subscribe();
    let st = wait_status(&mut rx, "restart after SIGKILL", |st| {
        st.restarts == 1 && st.state == ChildState::Running
    })
    .await;
    let _guard = GroupGuard(st.pid.unwrap());
    assert_ne!(st.pid, Some(old));
    assert_eq!(
        st.last_exit,
        Some(ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL)
        })
    );
    assert_eq!(st.restart_delay, Duration::ZERO);
    let ev = wait_event("killed", "signal log", |e| {
        message(e).starts_with("killed by signal SIGKILL; restarting in 0s")
    })
    .await;
    assert_eq!(ev["level"], "WARN");
    sup.stop().await;
}

#[tokio::test]
async fn stop_escalates_to_sigkill_for_a_child_ignoring_sigterm() {
    let _ = capture();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut spec = child_spec("stubborn", dir.path(), "ignore-term");
    spec.env
        .push((READY_ENV.into(), ready.display().to_string()));
    spec.stop_grace = Duration::from_millis(500);
    let sup = supervisor::start(spec).await.unwrap();
    let pid = sup.status().pid.unwrap();
    let _guard = GroupGuard(pid);
    assert_eq!(read_pid(&ready), pid); // SIGTERM is ignored from here on
    let t0 = Instant::now();
    sup.stop().await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(500), "stopped after {took:?}");
    // Generous bound: proves it does not hang, not how fast it is.
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let st = sup.status();
    assert_eq!(st.state, ChildState::Stopped);
    assert_eq!(st.last_exit.unwrap().signal, Some(libc::SIGKILL));
    assert!(!alive(pid));
    wait_event("stubborn", "escalation log", |e| {
        message(e).contains("sending SIGKILL")
    })
    .await;
    let ev = wait_event("stubborn", "stop log", |e| {
        message(e).starts_with("stopped")
    })
    .await;
    assert_eq!(ev["stopped_by"], "SIGKILL");
    assert_eq!(ev["signal"], libc::SIGKILL);
}

#[tokio::test]
async fn stop_leaves_no_process_in_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("grandchild");
    let mut spec = child_spec("family", dir.path(), "grandchild");
    // The grandchild ignores SIGTERM, so only the group-wide SIGKILL after the
    // grace period can end it.
    spec.env.push((GRANDCHILD_ENV.into(), "ignore-term".into()));
    spec.env
        .push((READY_ENV.into(), ready.display().to_string()));
    spec.stop_grace = Duration::from_millis(300);
    let sup = supervisor::start(spec).await.unwrap();
    let leader = sup.status().pid.unwrap();
    let _guard = GroupGuard(leader);
    let grandchild = read_pid(&ready);
    assert_ne!(grandchild, leader);
    assert_eq!(proc_stat(grandchild).unwrap().1, leader, "same group");
    assert_eq!(group_members(leader).len(), 2);

    sup.stop().await;
    assert_eq!(group_members(leader), Vec::<i32>::new());
    assert!(!alive(grandchild));
    assert!(!alive(leader));
    // The leader itself went on SIGTERM.
    assert_eq!(sup.status().last_exit.unwrap().signal, Some(libc::SIGTERM));
}

#[tokio::test]
async fn restart_replaces_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let spec = child_spec("rotate", dir.path(), "forever");
    let pid_file = pid_file_path(&spec.run_dir, "rotate");
    let sup = supervisor::start(spec).await.unwrap();
    let old = sup.status().pid.unwrap();
    let _old_guard = GroupGuard(old);
    sup.restart().await;
    let st = sup.status();
    let new = st.pid.unwrap();
    let _guard = GroupGuard(new);
    assert_ne!(new, old);
    assert_eq!(st.restarts, 1);
    assert_eq!(st.state, ChildState::Running);
    assert_eq!(st.last_exit.unwrap().signal, Some(libc::SIGTERM));
    assert!(!alive(old));
    assert!(alive(new));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{new}\n")
    );
    sup.stop().await;
    assert!(!alive(new));
}

#[tokio::test]
async fn child_output_becomes_tracing_events() {
    let _ = capture();
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor::start(child_spec("chatty", dir.path(), "print"))
        .await
        .unwrap();
    let _guard = GroupGuard(sup.status().pid.unwrap());
    let out = wait_event("chatty", "stdout line", |e| message(e) == "hello stdout").await;
    assert_eq!(out["stream"], "stdout");
    assert_eq!(out["target"], supervisor::CHILD_LOG_TARGET);
    let err = wait_event("chatty", "stderr line", |e| message(e) == "hello stderr").await;
    assert_eq!(err["stream"], "stderr");
    let long = wait_event("chatty", "long line", |e| e["truncated"] == true).await;
    let text = message(&long);
    assert_eq!(text.len(), supervisor::MAX_LINE_BYTES);
    assert!(text.bytes().all(|b| b == b'x'));
    // The rest of the long line is dropped, the next line is intact, and
    // invalid UTF-8 is replaced.
    wait_event("chatty", "line after the long one", |e| {
        message(e) == "after long \u{fffd} line"
    })
    .await;
    let xs = events("chatty")
        .iter()
        .filter(|e| message(e).starts_with('x'))
        .count();
    assert_eq!(xs, 1);
    sup.stop().await;
}

#[test]
fn pdeathsig_kills_the_child_when_the_supervisor_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut mini = Command::new(std::env::current_exe().unwrap())
        .args(child_args())
        .env(MODE_ENV, "mini-supervisor")
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let _mini_guard = GroupGuard(mini.id() as i32);
    let child = read_pid(&pid_file_path(&dir.path().join("run"), "pdeath"));
    let _guard = GroupGuard(child);
    assert!(alive(child));
    kill(Pid::from_raw(mini.id() as i32), Signal::SIGKILL).unwrap();
    mini.wait().unwrap();
    wait_until("the orphaned child to die of PDEATHSIG", || !alive(child));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_survive_the_exit_of_the_thread_that_started_them() {
    let dir = tempfile::tempdir().unwrap();
    let handle = tokio::runtime::Handle::current();
    let spec = child_spec("threads", dir.path(), "forever");
    // A short-lived thread starts the child, and (as a control) also forks a
    // process with the death signal itself, the naive way.
    let (sup, mut control) = std::thread::spawn(move || {
        let sup = handle.block_on(supervisor::start(spec)).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        (sup, cmd.spawn().unwrap())
    })
    .join()
    .unwrap();
    let pid = sup.status().pid.unwrap();
    let _guard = GroupGuard(pid);
    // The thread is gone: its own fork got the death signal...
    wait_until("the control process to die", || !alive(control.id() as i32));
    control.wait().unwrap();
    // ...which is delivered to all its children at once, so had the
    // supervisor forked from that thread, the child would be dead now too.
    assert!(alive(pid));
    assert_eq!(sup.status().state, ChildState::Running);
    assert_eq!(sup.status().restarts, 0);
    sup.stop().await;
}

#[test]
fn cleanup_stale_kills_marked_leftovers_only() {
    let _ = capture();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let marker = canonical_marker(&run_dir, "etcd");
    let pid_file = pid_file_path(&run_dir, "etcd");

    // 1. A leftover child with our marker, plus a grandchild in its group.
    let ready = dir.path().join("ready");
    let mut leftover = Command::new(std::env::current_exe().unwrap())
        .args(child_args())
        .env(MODE_ENV, "grandchild")
        .env(GRANDCHILD_ENV, "forever")
        .env(READY_ENV, &ready)
        .env(MARKER_ENV, &marker)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let leader = leftover.id() as i32;
    let _guard = GroupGuard(leader);
    let grandchild = read_pid(&ready);
    std::fs::write(&pid_file, format!("{leader}\n")).unwrap();
    assert_eq!(cleanup_stale(&run_dir, "etcd").unwrap(), Some(leader));
    assert!(!pid_file.exists());
    assert_eq!(
        leftover.wait().unwrap().signal_or_code(),
        Some(libc::SIGTERM)
    );
    wait_until("grandchild to die", || !alive(grandchild));
    assert_eq!(group_members(leader), Vec::<i32>::new());

    // 2. An unrelated live process (no marker) behind a stale pid file.
    let unrelated = Command::new("sleep").arg("1000").spawn().unwrap();
    let other = unrelated.id() as i32;
    std::fs::write(&pid_file, format!("{other}\n")).unwrap();
    assert_eq!(cleanup_stale(&run_dir, "etcd").unwrap(), None);
    assert!(!pid_file.exists());
    assert!(alive(other));

    // 3. A process marked for another run dir (another mkectl instance).
    let other_run = dir.path().join("other-run");
    std::fs::create_dir(&other_run).unwrap();
    let foreign = Command::new("sleep")
        .arg("1000")
        .env(MARKER_ENV, canonical_marker(&other_run, "etcd"))
        .process_group(0)
        .spawn()
        .unwrap();
    let foreign_pid = foreign.id() as i32;
    std::fs::write(&pid_file, format!("{foreign_pid}\n")).unwrap();
    assert_eq!(cleanup_stale(&run_dir, "etcd").unwrap(), None);
    assert!(alive(foreign_pid));
    assert!(!pid_file.exists());

    // 4. A pid that is gone.
    std::fs::write(&pid_file, format!("{leader}\n")).unwrap();
    assert_eq!(cleanup_stale(&run_dir, "etcd").unwrap(), None);
    assert!(!pid_file.exists());

    for mut c in [unrelated, foreign] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let logs = events("etcd");
    assert!(
        logs.iter()
            .any(|e| message(e).contains("belongs to another process")),
        "{logs:#?}"
    );
    assert!(logs.iter().any(|e| message(e).contains("is gone")));
}

#[test]
fn cleanup_stale_finds_grandchildren_of_a_dead_leader() {
    // What PDEATHSIG leaves behind: the leader died, a grandchild that
    // ignores SIGTERM lives on in the group.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let ready = dir.path().join("ready");
    let mut leftover = Command::new(std::env::current_exe().unwrap())
        .args(child_args())
        .env(MODE_ENV, "grandchild")
        .env(GRANDCHILD_ENV, "ignore-term")
        .env(READY_ENV, &ready)
        .env(MARKER_ENV, canonical_marker(&run_dir, "kubelet"))
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let leader = leftover.id() as i32;
    let _guard = GroupGuard(leader);
    let grandchild = read_pid(&ready);
    leftover.kill().unwrap();
    leftover.wait().unwrap();
    assert!(alive(grandchild));
    std::fs::write(pid_file_path(&run_dir, "kubelet"), format!("{leader}\n")).unwrap();
    let t0 = Instant::now();
    assert_eq!(cleanup_stale(&run_dir, "kubelet").unwrap(), Some(leader));
    assert!(
        t0.elapsed() >= supervisor::STALE_STOP_GRACE,
        "SIGKILL came before the grace"
    );
    assert!(!alive(grandchild));
    assert!(!pid_file_path(&run_dir, "kubelet").exists());
}

/// `ExitStatus` → signal number, or exit code if it exited.
trait SignalOrCode {
    fn signal_or_code(&self) -> Option<i32>;
}
impl SignalOrCode for std::process::ExitStatus {
    fn signal_or_code(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.signal().or(self.code())
    }
}
