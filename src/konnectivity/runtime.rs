//! The tunnels' own runtime. A relay moves each packet through several
//! tasks (the shared stream's reader, a tunnel's queue, the HTTP/2 stream
//! task, the connection's writer); on a multi-thread runtime those hops
//! often cross to another worker, which costs a wakeup and carries the
//! 128 KiB chunk to another core's cache. On one thread they never do: in
//! the tunnel bench (2 cores) server + agent CPU per MiB on downloads fell
//! by 9-15% and throughput rose 2-17% (README, Konnectivity). So the
//! embedded server and agent run on a runtime of their own, one thread by
//! default ([`RELAY_THREADS`]), apart from the node's other components, as
//! the standalone processes do with `--worker-threads`.
//!
//! One thread carries about 1.5 GiB/s of tunnel traffic at the measured
//! 0.5-0.7 ms of CPU per MiB per process: more than a node's kubectl logs,
//! exec and port-forward traffic; [`RelayRuntime::start`] takes more
//! threads for a node that needs them.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// Threads of the embedded server's and agent's runtime (see the module
/// doc); 0 would mean one per core.
pub const RELAY_THREADS: usize = 1;

/// Errors of the relay runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the {name} runtime")]
    Build {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("the {name} runtime stopped before the task finished")]
    Gone { name: &'static str },
}

enum Kind {
    /// A current-thread runtime driven by its own OS thread until the
    /// sender is dropped.
    Single { _stop: oneshot::Sender<()> },
    /// A multi-thread runtime, shut down in the background on drop.
    Multi(Option<Runtime>),
}

/// A runtime for one component's tunnels. Dropping it stops the runtime:
/// tasks still running on it are dropped, so stop the component first.
pub struct RelayRuntime {
    name: &'static str,
    handle: Handle,
    kind: Kind,
}

impl std::fmt::Debug for RelayRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRuntime")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RelayRuntime {
    /// Starts a runtime named `name` (its threads are called so) with
    /// `threads` threads (0: one per core).
    pub fn start(name: &'static str, threads: usize) -> Result<RelayRuntime, RuntimeError> {
        let build = |source| RuntimeError::Build { name, source };
        if threads == 1 {
            let rt = Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(build)?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // Drives every task spawned on `handle` until the
                    // RelayRuntime is dropped; dropping `rt` then drops
                    // what is left.
                    let _ = rt.block_on(stopped);
                })
                .map_err(build)?;
            return Ok(RelayRuntime {
                name,
                handle,
                kind: Kind::Single { _stop: stop },
            });
        }
        let mut b = Builder::new_multi_thread();
        b.enable_all().thread_name(name);
        if threads > 0 {
            b.worker_threads(threads);
        }
        let rt = b.build().map_err(build)?;
        Ok(RelayRuntime {
            name,
            handle: rt.handle().clone(),
            kind: Kind::Multi(Some(rt)),
        })
    }

    /// Runs `fut` on this runtime and waits for its output: whatever it
    /// spawns and binds belongs to this runtime.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, RuntimeError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|_| RuntimeError::Gone { name: self.name })
    }
}

impl Drop for RelayRuntime {
    fn drop(&mut self) {
        // Single: dropping the sender ends the driving thread's block_on.
        if let Kind::Multi(rt) = &mut self.kind {
            if let Some(rt) = rt.take() {
                // Not a blocking drop: this may run inside another runtime.
                rt.shutdown_background();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_relay_thread_and_stop_with_it() {
        let rt = RelayRuntime::start("relay-test", 1).unwrap();
        let name = rt
            .run(async { std::thread::current().name().map(String::from) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("relay-test"));
        // What the task spawns lands on the same runtime, and a listener it
        // binds is served there while the caller's runtime waits.
        let addr = rt
            .run(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::spawn(async move {
                    let (mut s, _) = l.accept().await.unwrap();
                    let t = std::thread::current().name().unwrap_or("").to_string();
                    tokio::io::AsyncWriteExt::write_all(&mut s, t.as_bytes())
                        .await
                        .unwrap();
                });
                addr
            })
            .await
            .unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut c, &mut got)
            .await
            .unwrap();
        assert_eq!(got, "relay-test");
        // Dropped: its thread ends and pending tasks are dropped with it.
        let (tx, rx) = oneshot::channel::<()>();
        rt.run(async move {
            tokio::spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
        })
        .await
        .unwrap();
        drop(rt);
        assert!(rx.await.is_err(), "the pending task was dropped");
    }

    #[tokio::test]
    async fn more_threads_make_a_multi_thread_runtime() {
        let rt = RelayRuntime::start("relay-multi", 2).unwrap();
        let flavor = rt
            .run(async { Handle::current().runtime_flavor() })
            .await
            .unwrap();
        assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread);
        drop(rt);
    }
}
