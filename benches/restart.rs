//! Restart latency of the supervisor.
//!
//! Supervises `sleep 1000`, SIGKILLs it N times and measures the time from
//! the kill to the new pid being reported through `subscribe()`. Each kill
//! comes after the instance ran longer than `stable_after`, so every restart
//! is a "first restart after a crash" (zero backoff), the case with the
//! < 50 ms target. Baseline, measured in the same run: spawning and waiting
//! for `true` with `std::process::Command` (one fork/exec/exit/reap cycle).
//!
//! The pid file is written (with fsync) on every restart, so the run dir's
//! file system matters: the bench runs once with the run dir on tmpfs
//! (`/dev/shm`, like `/run` in production) and once on the disk-backed temp
//! dir.
//!
//! `cargo bench --bench restart` (iterations: `MKECTL_BENCH_ITERS`, default 200).

use std::time::{Duration, Instant};

use mkectl::supervisor::{self, BackoffPolicy, ChildSpec, ChildState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The instance must run this long before it is killed ...
const RUN_BEFORE_KILL: Duration = Duration::from_millis(30);
/// ... which is longer than this, so backoff never applies.
const STABLE_AFTER: Duration = Duration::from_millis(20);
const TARGET: Duration = Duration::from_millis(50);

fn main() {
    let iters: usize = std::env::var("MKECTL_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(2);

    // A real subscriber (formatting every event) so logging cost is included,
    // writing to a sink so the bench output stays readable.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .init();

    let baseline = spawn_wait_baseline(iters);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut series = Vec::new();
    let shm = std::path::Path::new("/dev/shm");
    if let Ok(dir) = tempfile::tempdir_in(shm) {
        series.push((
            "run dir on tmpfs",
            rt.block_on(restart_latencies(iters, dir)),
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    series.push((
        "run dir on temp dir",
        rt.block_on(restart_latencies(iters, dir)),
    ));

    let (b50, b99) = (percentile(&baseline, 50), percentile(&baseline, 99));
    println!("restart bench: {iters} iterations per series");
    println!(
        "  baseline spawn+wait `true`                   p50 {:>7.3} ms  p99 {:>7.3} ms",
        ms(b50),
        ms(b99)
    );
    for (label, restarts) in &series {
        let (r50, r99) = (percentile(restarts, 50), percentile(restarts, 99));
        let first = restarts[0];
        let max = restarts.iter().max().copied().unwrap_or_default();
        println!(
            "  restart ({label:<19}) kill->new pid  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  first {:>7.3} ms",
            ms(r50),
            ms(r99),
            ms(max),
            ms(first)
        );
        println!(
            "    ratio to baseline: p50 {:.2}x, p99 {:.2}x; target first restart < {} ms: {}",
            ms(r50) / ms(b50),
            ms(r99) / ms(b99),
            TARGET.as_millis(),
            if r99 < TARGET && first < TARGET {
                "met (first and p99)"
            } else {
                "MISSED"
            }
        );
    }
}

fn spawn_wait_baseline(iters: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let status = std::process::Command::new("true")
            .status()
            .expect("spawn true");
        out.push(t0.elapsed());
        assert!(status.success());
    }
    out
}

async fn restart_latencies(iters: usize, dir: tempfile::TempDir) -> Vec<Duration> {
    let mut spec = ChildSpec::new("bench-sleep", "sleep", dir.path().join("run"));
    spec.args = vec!["1000".into()];
    spec.stop_grace = Duration::from_secs(1);
    spec.backoff = BackoffPolicy {
        stable_after: STABLE_AFTER,
        ..BackoffPolicy::default()
    };
    let sup = supervisor::start(spec).await.expect("start sleep");
    let mut rx = sup.subscribe();
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        tokio::time::sleep(RUN_BEFORE_KILL).await;
        let old = rx.borrow_and_update().pid.expect("running");
        let t0 = Instant::now();
        kill(Pid::from_raw(old), Signal::SIGKILL).expect("kill");
        let wait =
            rx.wait_for(|st| st.state == ChildState::Running && st.pid.is_some_and(|p| p != old));
        let st = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("restart within 10 s")
            .expect("supervisor alive")
            .clone();
        out.push(t0.elapsed());
        assert_eq!(st.restart_delay, Duration::ZERO);
    }
    sup.stop().await;
    out
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() * p).div_ceil(100)).saturating_sub(1);
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
