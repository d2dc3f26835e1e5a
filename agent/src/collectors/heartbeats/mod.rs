//! Heartbeats of local services: HTTP and TCP checks that run on their own schedule, and push
//! heartbeats that local services send to `POST /api/v1/heartbeat/{name}`.
//!
//! Each target is one task on the async runtime, so a slow target never holds back another
//! one or the tick.
//!
//! A failed HTTP or TCP check is confirmed before it counts: it is tried again up to
//! `retries` times, `retry_interval` apart (start to start, measured from the failed check's
//! start), each retry bounded by `retry_interval`. One retry that passes makes the check a
//! success, so a lost check or a restart shorter than `retries × retry_interval` is not an
//! outage, while a refused port is down about `retries × retry_interval` after its first
//! failed check and a hung one `timeout` plus that. So the target's state needs no damping
//! in time on top: `down_after` confirmed failures in a row (default 1) make it down,
//! `up_after` successes in a row make it up again; the first result sets the state. A change
//! of state asks the tick thread for a tick at once, so it reaches the rules without waiting
//! for the next tick.

mod check;
pub mod config;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{sync::Notify, time::Instant};

pub use self::check::Failure;
use self::config::{Check, HeartbeatConfig, HeartbeatsConfig};
use super::collector::{CollectError, Collector, Env};
use crate::{
    store::{Family, GaugeF64, Store, label_set, names},
    wake::Wake,
};

pub const NAME: &str = "heartbeats";

label_set! {
    /// Labels `{target}`.
    pub struct TargetLabels { pub target }
}

label_set! {
    /// Labels `{target, reason}`.
    pub struct FailureLabels { pub target, pub reason }
}

/// Registers the heartbeat metrics and prepares each target; the checks run on their own
/// tasks once the runtime starts them ([`Heartbeats::spawn`]).
pub fn start(cfg: &HeartbeatsConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    Box::new(Heartbeats::new(&cfg.0, env.wake, store))
}

#[derive(Clone, Default)]
struct Metrics {
    up: Family<TargetLabels, Gauge>,
    latency: Family<TargetLabels, GaugeF64>,
    failures: Family<FailureLabels, Counter>,
}

/// Turns a stream of check results into a damped up/down state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damper {
    up: Option<bool>,
    oks: u32,
    fails: u32,
}

impl Damper {
    /// Records one result; returns the state (after damping) and whether it just changed.
    pub fn observe(&mut self, ok: bool, down_after: u32, up_after: u32) -> (bool, bool) {
        if ok {
            self.oks += 1;
            self.fails = 0;
        } else {
            self.fails += 1;
            self.oks = 0;
        }
        let next = match self.up {
            None => ok,
            Some(true) if self.fails >= down_after => false,
            Some(false) if self.oks >= up_after => true,
            Some(state) => state,
        };
        let changed = self.up != Some(next);
        self.up = Some(next);
        (next, changed)
    }
}

/// One target's live state.
struct Target {
    cfg: HeartbeatConfig,
    damper: Mutex<Damper>,
    /// Push heartbeats: wakes the expiry task on a beat.
    beat: Notify,
    last_beat: Mutex<Option<Instant>>,
    metrics: Metrics,
    /// The tick thread's: a change of state is evaluated at once.
    wake: Wake,
}

impl Target {
    fn labels(&self) -> TargetLabels {
        TargetLabels {
            target: self.cfg.name.clone(),
        }
    }

    /// Counts one failed check under its reason.
    fn count(&self, f: &Failure) {
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                target: self.cfg.name.clone(),
                reason: f.reason().into(),
            })
            .inc();
    }

    /// Whether the target is down now (a failure of a down target needs no confirming).
    fn is_down(&self) -> bool {
        self.damper.lock().unwrap_or_else(|e| e.into_inner()).up == Some(false)
    }

    /// Applies one result to the damper, the metrics and the log.
    fn record(&self, result: &Result<Duration, Failure>) {
        if let Err(f) = result {
            self.count(f);
        }
        if let Ok(latency) = result {
            self.metrics
                .latency
                .get_or_create(&self.labels())
                .set(latency.as_secs_f64());
        }
        let (up, changed) = self
            .damper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(result.is_ok(), self.cfg.down_after, self.cfg.up_after);
        self.metrics
            .up
            .get_or_create(&self.labels())
            .set(i64::from(up));
        if changed {
            self.wake.now();
        }
        match (changed, up, result) {
            (true, false, Err(f)) => {
                tracing::warn!(target_name = %self.cfg.name, reason = f.reason(), error = %f, retries = self.cfg.retries, "heartbeat down")
            }
            (true, true, _) => tracing::info!(target_name = %self.cfg.name, "heartbeat up"),
            _ => {}
        }
    }
}

/// Every configured heartbeat target.
#[derive(Clone, Default)]
pub struct Heartbeats {
    targets: Vec<Arc<Target>>,
    push: HashMap<String, Arc<Target>>,
}

impl Heartbeats {
    /// Registers the heartbeat metrics and prepares each target; nothing runs until
    /// [`Heartbeats::spawn`].
    pub fn new(cfg: &[HeartbeatConfig], wake: &Wake, store: &mut Store) -> Self {
        let metrics = Metrics::default();
        store.register(
            names::HEARTBEAT_UP,
            "Whether a heartbeat target is up (1) or down (0), a failure confirmed by its retries",
            metrics.up.clone(),
        );
        store.register(
            names::HEARTBEAT_LATENCY,
            "Seconds the last successful check of a heartbeat target took",
            metrics.latency.clone(),
        );
        store.register(
            names::HEARTBEAT_FAILURES,
            "Failed heartbeat checks, by target and reason (timeout, refused, status, body, error, expired)",
            metrics.failures.clone(),
        );
        let targets: Vec<Arc<Target>> = cfg
            .iter()
            .map(|c| {
                Arc::new(Target {
                    cfg: c.clone(),
                    damper: Mutex::default(),
                    beat: Notify::new(),
                    last_beat: Mutex::default(),
                    metrics: metrics.clone(),
                    wake: wake.clone(),
                })
            })
            .collect();
        let push = targets
            .iter()
            .filter(|t| matches!(t.cfg.check, Check::Push { .. }))
            .map(|t| (t.cfg.name.clone(), Arc::clone(t)))
            .collect();
        Self { targets, push }
    }

    /// Starts one task per target on the current runtime.
    pub fn spawn(&self) {
        for t in &self.targets {
            let t = Arc::clone(t);
            match t.cfg.check {
                Check::Push { ttl } => tokio::spawn(watch_push(t, ttl)),
                _ => tokio::spawn(poll(t)),
            };
        }
    }

    /// A beat from a push target; false when no push target has that name.
    pub fn beat(&self, name: &str) -> bool {
        let Some(t) = self.push.get(name) else {
            return false;
        };
        *t.last_beat.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        t.record(&Ok(Duration::ZERO));
        t.beat.notify_one();
        true
    }
}

/// The checks run on their own tasks and write their results as they come; the tick has
/// nothing to read.
impl Collector for Heartbeats {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach_method(&self) -> String {
        let push = self.push.len();
        format!(
            "{} checks (HTTP, TCP), {push} push targets, each on its own task",
            self.targets.len() - push
        )
    }

    fn collect(&mut self) -> Result<(), CollectError> {
        Ok(())
    }
}

/// HTTP and TCP targets: one check per interval, the first right away; a failure is
/// confirmed by [`retry`] before it counts.
async fn poll(t: Arc<Target>) {
    let mut ticks = tokio::time::interval(t.cfg.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = match check::run(&t.cfg.check, t.cfg.timeout).await {
            Err(f) if !t.is_down() => match retry(&t, started).await {
                Ok(latency) => {
                    // A lost check, not an outage: counted, and the target stays up.
                    tracing::debug!(target_name = %t.cfg.name, reason = f.reason(), error = %f, "heartbeat check failed once; a retry passed");
                    t.count(&f);
                    Ok(latency)
                }
                Err(_) => Err(f),
            },
            result => result,
        };
        t.record(&result);
    }
}

/// Tries a check that failed (it started at `started`) again, up to `retries` times: retry
/// `k` starts `k × retry_interval` after `started`, or at once when the previous attempt ran
/// past that, and may take `retry_interval` (at most `timeout`). The first retry that passes
/// gives its latency; when none does, the last failure.
async fn retry(t: &Target, started: Instant) -> Result<Duration, Failure> {
    let gap = t.cfg.retry_interval;
    let bound = gap.min(t.cfg.timeout);
    let mut last = Err(Failure::Error("no retries".into()));
    let mut next = started;
    for _ in 0..t.cfg.retries {
        next += gap;
        tokio::time::sleep_until(next).await;
        next = next.max(Instant::now());
        last = check::run(&t.cfg.check, bound).await;
        if last.is_ok() {
            break;
        }
    }
    last
}

/// Push targets: down when the TTL passes without a beat. The first TTL after start is a
/// grace period: the target has no series until it beats or the TTL passes.
async fn watch_push(t: Arc<Target>, ttl: Duration) {
    let start = Instant::now();
    loop {
        let last = *t.last_beat.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = last.unwrap_or(start) + ttl;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let fresh = t
                    .last_beat
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|b| b + ttl > Instant::now());
                if !fresh {
                    t.record(&Err(Failure::Expired));
                    // One expiry per silence: wait for the next beat.
                    t.beat.notified().await;
                }
            }
            _ = t.beat.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damping_needs_consecutive_results() {
        let mut d = Damper::default();
        assert_eq!(
            d.observe(true, 3, 2),
            (true, true),
            "first result sets the state"
        );
        assert_eq!(d.observe(false, 3, 2), (true, false));
        assert_eq!(d.observe(false, 3, 2), (true, false));
        assert_eq!(
            d.observe(true, 3, 2),
            (true, false),
            "a success resets the failures"
        );
        assert_eq!(d.observe(false, 3, 2), (true, false));
        assert_eq!(d.observe(false, 3, 2), (true, false));
        assert_eq!(d.observe(false, 3, 2), (false, true));
        assert_eq!(d.observe(true, 3, 2), (false, false));
        assert_eq!(d.observe(true, 3, 2), (true, true));
        let mut d = Damper::default();
        assert_eq!(d.observe(false, 1, 1), (false, true));
        assert_eq!(d.observe(true, 1, 1), (true, true));
    }
}
