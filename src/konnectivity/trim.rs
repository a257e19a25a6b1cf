//! Gives memory back to the OS after many tunnels closed.
//!
//! glibc's malloc keeps freed small chunks inside its arenas: after 10,000
//! tunnels close, tens of megabytes stay resident although free, and a
//! server that once saw a burst would keep that footprint for good. A
//! watcher samples the number of open tunnels once a second; when it has
//! fallen to at most half of its peak since the last trim, by at least
//! [`TRIM_MIN_DROP`] tunnels, it calls `malloc_trim(0)` on a blocking thread,
//! which returns the free pages of every arena. A steady or growing tunnel
//! count never trims; a falling one trims at most once per halving.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the open-tunnel count is sampled.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Fewer closed tunnels than this are not worth a trim (a few MB at most).
pub const TRIM_MIN_DROP: usize = 512;

/// Decides when to trim from successive tunnel counts.
#[derive(Debug, Default)]
pub(crate) struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Records the current count; true when memory should be trimmed now.
    pub fn observe(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= TRIM_MIN_DROP && open <= self.peak / 2 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Free memory glibc keeps at the top of an arena before handing it back on
/// its own (its default is 128 KiB, raised dynamically up to 64 MiB).
pub const ALLOCATOR_TRIM_THRESHOLD: usize = 16 * 1024 * 1024;
/// Allocations from this size on get their own mapping (glibc: 128 KiB,
/// dynamic). Read buffers and HTTP/2 frames stay below it.
pub const ALLOCATOR_MMAP_THRESHOLD: usize = 1024 * 1024;

/// Keeps glibc from giving memory back after every large free.
///
/// A busy tunnel allocates and frees a read buffer per chunk; with
/// glibc's defaults each such free could shrink the arena and the next
/// read fault the pages back in (page faults and page clearing were a
/// tenth of the agent's CPU time). Fixed thresholds keep up to
/// [`ALLOCATOR_TRIM_THRESHOLD`] free per arena; larger drops in use are
/// still returned by the watcher below (`malloc_trim` ignores the
/// threshold). Process-wide and idempotent; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets glibc tunables; the values are
            // positive and fit a c_int.
            unsafe {
                libc::mallopt(
                    libc::M_TRIM_THRESHOLD,
                    ALLOCATOR_TRIM_THRESHOLD as libc::c_int,
                );
                libc::mallopt(
                    libc::M_MMAP_THRESHOLD,
                    ALLOCATOR_MMAP_THRESHOLD as libc::c_int,
                );
            }
        });
    }
}

/// Returns free heap memory to the OS; false where unsupported.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their
        // locks; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Spawns the watcher on `tracker`; it ends with `cancel`.
pub(crate) fn spawn(
    tracker: &TaskTracker,
    cancel: CancellationToken,
    component: &'static str,
    open_tunnels: impl Fn() -> usize + Send + 'static,
) {
    tune_allocator();
    tracker.spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let open = open_tunnels();
            if policy.observe(open) {
                tracing::debug!(
                    component,
                    open_tunnels = open,
                    "tunnels closed; returning free memory to the OS"
                );
                let _ = tokio::task::spawn_blocking(release_free_memory).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_halving_after_a_large_drop() {
        let mut p = TrimPolicy::default();
        assert!(!p.observe(0));
        assert!(!p.observe(10_000));
        assert!(!p.observe(6_000), "not yet half");
        assert!(p.observe(5_000), "half of the peak, 5,000 closed");
        assert!(!p.observe(5_000), "peak reset to 5,000");
        assert!(!p.observe(3_000));
        assert!(p.observe(2_000));
        assert!(p.observe(0));
        assert!(!p.observe(0), "nothing more to give back");
        let mut p = TrimPolicy::default();
        assert!(!p.observe(600));
        assert!(p.observe(0), "closing 600 is above the floor ...");
        let mut p = TrimPolicy::default();
        assert!(!p.observe(400));
        assert!(!p.observe(0), "... closing 400 is not");
    }

    #[test]
    fn release_is_supported_here() {
        assert!(release_free_memory());
    }
}
