//! The component manager: init all, start in order waiting for each to be
//! ready (bounded), roll back what started when one fails, stop in reverse.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::{Component, ComponentError};

/// First interval between readiness probes; doubles up to the cap.
pub const READY_POLL_INITIAL: Duration = Duration::from_millis(20);
/// Cap on the interval between readiness probes.
pub const READY_POLL_MAX: Duration = Duration::from_millis(500);
/// How often a still-waiting start logs what it waits for.
pub const READY_PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Manager {
    components: Vec<Box<dyn Component>>,
    /// How many components (a prefix of `components`) were started.
    started: usize,
}

impl Manager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a component; start order is insertion order.
    pub fn add(&mut self, c: Box<dyn Component>) {
        self.components.push(c);
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.components.iter().map(|c| c.name()).collect()
    }

    /// Runs `init` on every component, in order.
    pub async fn init_all(&mut self) -> Result<(), ComponentError> {
        for c in &mut self.components {
            let span = info_span!("init", component = c.name());
            c.init().instrument(span).await?;
        }
        Ok(())
    }

    /// Starts every component in order, each one ready before the next starts.
    /// On failure or cancellation everything started so far is stopped in
    /// reverse order and the error is returned.
    pub async fn start_all(&mut self, cancel: &CancellationToken) -> Result<(), ComponentError> {
        for i in 0..self.components.len() {
            let name = self.components[i].name();
            let span = info_span!("start", component = name);
            let result = async {
                info!("starting");
                self.started = i + 1;
                self.components[i].start().await?;
                wait_ready(self.components[i].as_ref(), cancel).await
            }
            .instrument(span)
            .await;
            if let Err(e) = result {
                warn!(component = name, error = %e, "start failed; stopping what was started");
                self.stop_all(Duration::from_secs(30)).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops started components in reverse order, all within `deadline`. A
    /// component that overruns the remaining time is abandoned with a warning
    /// (its own stop escalates to SIGKILL).
    pub async fn stop_all(&mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        while self.started > 0 {
            self.started -= 1;
            let c = &mut self.components[self.started];
            let name = c.name();
            let left = end.saturating_duration_since(Instant::now());
            let span = info_span!("stop", component = name);
            async {
                info!("stopping");
                match tokio::time::timeout(left, c.stop()).await {
                    Ok(Ok(())) => info!("stopped"),
                    Ok(Err(e)) => warn!(error = %e, "stop failed"),
                    Err(_) => warn!("stop did not finish within the shutdown deadline"),
                }
            }
            .instrument(span)
            .await;
        }
    }

    /// Probes every started component once: (name, ready?, detail).
    pub async fn readiness(&self) -> Vec<(&'static str, bool, String)> {
        let mut out = Vec::new();
        for c in &self.components[..self.started] {
            match c.ready().await {
                Ok(()) => out.push((c.name(), true, String::new())),
                Err(e) => out.push((c.name(), false, e.to_string())),
            }
        }
        out
    }
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
            Err(e) => e.to_string(),
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
    }

    impl Fake {
        fn new(name: &'static str, log: &Log) -> Self {
            Self {
                name,
                log: log.clone(),
                fail_start: false,
                ready_after: Some(Duration::ZERO),
                started_at: None,
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
                return Err(ComponentError::Failed {
                    component: self.name,
                    message: "boom".into(),
                });
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
        assert!(e.to_string().contains("boom"));
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
