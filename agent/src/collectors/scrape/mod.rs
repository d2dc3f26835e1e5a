//! Local scrape: the node's model server and exporters (vLLM, TGI, node_exporter,
//! dcgm-exporter) read every tick or at their own interval, their samples handed to the
//! rules with `job` and `instance` labels and Prometheus's synthetic `up`,
//! `scrape_duration_seconds` and `scrape_samples_scraped`. They are not exported on
//! `/metrics`: the central Prometheus scrapes those targets itself.
//!
//! Each target is one task on a thread of its own (a small runtime), so a slow or huge target
//! never holds back the tick, the other collectors or the rules: the tick takes each target's
//! latest completed scrape. A scrape that fails (refused, timeout, status, over its
//! `sample_limit` or `body_size_limit`, unparsable) keeps none of its samples, so every
//! series of the target is stale at the next tick, and one that a target stops exposing is
//! stale at once, as in Prometheus. A completed scrape asks for a tick at once, so what it
//! saw reaches the rules without waiting out the interval.

pub mod config;
mod fetch;
pub mod parse;

use std::{
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use self::config::{ScrapeConfig, ScrapeTarget};
use super::collector::{CollectError, Collector, Env};
use crate::{
    store::{
        Family, GaugeF64, Labels, RulesOnly, Sink, Store, label_set, labels::METRIC_NAME, names,
    },
    wake::Wake,
};

pub const NAME: &str = "scrape";

// The target's job and instance under names of their own: a Prometheus scraping the agent
// sets `job` and `instance` itself.
label_set! {
    /// Labels `{scrape_job, scrape_instance}`.
    pub struct TargetLabels { pub scrape_job, pub scrape_instance }
}

label_set! {
    /// Labels `{scrape_job, scrape_instance, reason}`.
    pub struct FailureLabels { pub scrape_job, pub scrape_instance, pub reason }
}

/// Why a scrape failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than body_size_limit ({0} bytes)")]
    BodySize(usize),
    #[error("{found} samples, over sample_limit {limit}: nothing kept")]
    SampleLimit { found: usize, limit: usize },
    #[error("unparsable exposition: {0}")]
    Parse(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Error(String),
}

impl Failure {
    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout(_) => "timeout",
            Failure::Status(_) => "status",
            Failure::BodySize(_) => "body_size",
            Failure::SampleLimit { .. } => "sample_limit",
            Failure::Parse(_) => "parse",
            Failure::Tls(_) => "tls",
            Failure::Error(_) => "error",
        }
    }
}

#[derive(Clone, Default)]
struct Metrics {
    up: Family<TargetLabels, Gauge>,
    duration: Family<TargetLabels, GaugeF64>,
    samples: Family<TargetLabels, Gauge>,
    failures: Family<FailureLabels, Counter>,
}

/// One target's latest completed scrape: its samples (synthetic ones included) as the rules
/// get them.
type Scraped = Arc<Vec<(Labels, f64)>>;

/// One target and its latest completed scrape.
struct Target {
    cfg: ScrapeTarget,
    interval: Duration,
    timeout: Duration,
    latest: Mutex<Option<Scraped>>,
    labels: TargetLabels,
}

impl Target {
    /// Prometheus's synthetic series of this target.
    fn synthetic(&self, up: bool, took: Duration, scraped: usize) -> [(Labels, f64); 3] {
        let l = |name: &str| {
            Labels::from_pairs([
                (METRIC_NAME, name),
                ("job", self.cfg.job.as_str()),
                ("instance", self.cfg.instance.as_str()),
            ])
        };
        [
            (l("up"), if up { 1.0 } else { 0.0 }),
            (l("scrape_duration_seconds"), took.as_secs_f64()),
            (l("scrape_samples_scraped"), scraped as f64),
        ]
    }
}

/// What the tick took of every target, read by the rules through the store.
#[derive(Clone, Default)]
struct Taken(Arc<Mutex<Vec<Scraped>>>);

impl RulesOnly for Taken {
    fn samples(&self, out: &mut dyn Sink) {
        for s in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (labels, v) in s.iter() {
                out.labelled(labels, *v);
            }
        }
    }
}

/// Registers the scrape metrics and the rules' source; the targets' tasks start at the first
/// tick.
pub fn start(
    cfg: &ScrapeConfig,
    interval: Duration,
    env: Env<'_>,
    store: &mut Store,
) -> Box<dyn Collector> {
    Box::new(Scrape::new(cfg, interval, env.wake, store))
}

/// Every configured target.
pub struct Scrape {
    targets: Vec<Arc<Target>>,
    taken: Taken,
    metrics: Metrics,
    wake: Wake,
    /// Ends the targets' thread when dropped.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Scrape {
    fn new(cfg: &ScrapeConfig, interval: Duration, wake: &Wake, store: &mut Store) -> Self {
        let metrics = Metrics::default();
        store.register(
            names::SCRAPE_TARGET_UP,
            "Whether the last scrape of a local target succeeded (1) or failed (0): the `up` its rules read",
            metrics.up.clone(),
        );
        store.register(
            names::SCRAPE_DURATION,
            "Seconds the last scrape of a local target took",
            metrics.duration.clone(),
        );
        store.register(
            names::SCRAPE_SAMPLES,
            "Samples the last scrape of a local target gave (the rules read them; they are not exported here)",
            metrics.samples.clone(),
        );
        store.register(
            names::SCRAPE_FAILURES,
            "Failed scrapes of local targets, by reason (refused, timeout, status, body_size, sample_limit, parse, error)",
            metrics.failures.clone(),
        );
        let taken = Taken::default();
        store.add_rules_only(Box::new(taken.clone()));
        let targets = cfg
            .0
            .iter()
            .map(|t| {
                Arc::new(Target {
                    interval: t.interval(interval),
                    timeout: t.timeout(interval),
                    labels: TargetLabels {
                        scrape_job: t.job.clone(),
                        scrape_instance: t.instance.clone(),
                    },
                    cfg: t.clone(),
                    latest: Mutex::default(),
                })
            })
            .collect();
        Self {
            targets,
            taken,
            metrics,
            wake: wake.clone(),
            stop: None,
        }
    }

    /// Starts the thread that runs one task per target.
    fn spawn(&mut self) -> Result<(), CollectError> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CollectError::Library {
                call: "starting the scrape runtime",
                message: e.to_string(),
            })?;
        let targets = self.targets.clone();
        let metrics = self.metrics.clone();
        let wake = self.wake.clone();
        thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                drop_capabilities();
                runtime.block_on(async move {
                    for t in targets {
                        tokio::spawn(poll(t, metrics.clone(), wake.clone()));
                    }
                    let _ = rx.await;
                });
            })
            .map_err(|e| CollectError::Library {
                call: "starting the scrape thread",
                message: e.to_string(),
            })?;
        self.stop = Some(tx);
        Ok(())
    }
}

impl Collector for Scrape {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach_method(&self) -> String {
        format!(
            "{} HTTP targets, each on its own task, not exported on /metrics",
            self.targets.len()
        )
    }

    /// Takes each target's latest completed scrape; never waits for one.
    fn collect(&mut self) -> Result<(), CollectError> {
        if self.targets.is_empty() {
            return Ok(());
        }
        if self.stop.is_none() {
            self.spawn()?;
        }
        let now: Vec<Scraped> = self
            .targets
            .iter()
            .filter_map(|t| t.latest.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        *self.taken.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(())
    }
}

/// Clears every capability of the calling thread (and of the blocking threads it starts).
/// The scrape thread reads what local services send; it starts from the tick thread, which
/// may still hold CAP_BPF and CAP_PERFMON while a GPU device is awaited. (The agent's own
/// helper lives above the collectors; this is its one call, repeated here.)
fn drop_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let mut header = Header {
        // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [0u32; 6];
    // SAFETY: a version-3 header and two zeroed data words (effective, permitted,
    // inheritable each), as capset expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "the scrape thread could not drop its capabilities");
    }
}

/// One target: a scrape per interval, the first at once, each bounded by the timeout.
async fn poll(t: Arc<Target>, m: Metrics, wake: Wake) {
    let mut ticks = tokio::time::interval(t.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<&'static str> = None;
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = scrape_once(&t).await;
        let took = started.elapsed();
        let (samples, counted) = match result {
            Ok(mut samples) => {
                if let Some(reason) = failing.take() {
                    tracing::info!(job = %t.cfg.job, instance = %t.cfg.instance, was = reason, "scrape target recovered");
                }
                let n = samples.len();
                samples.extend(t.synthetic(true, took, n));
                (samples, n)
            }
            Err(f) => {
                m.failures
                    .get_or_create(&FailureLabels {
                        scrape_job: t.cfg.job.clone(),
                        scrape_instance: t.cfg.instance.clone(),
                        reason: f.reason().into(),
                    })
                    .inc();
                if failing != Some(f.reason()) {
                    tracing::warn!(job = %t.cfg.job, instance = %t.cfg.instance, url = %t.cfg.url, reason = f.reason(), error = %f, "scrape failed; the target's series are stale");
                }
                failing = Some(f.reason());
                let n = match f {
                    Failure::SampleLimit { found, .. } => found,
                    _ => 0,
                };
                (t.synthetic(false, took, n).to_vec(), n)
            }
        };
        let up = failing.is_none();
        m.up.get_or_create(&t.labels).set(i64::from(up));
        m.duration.get_or_create(&t.labels).set(took.as_secs_f64());
        m.samples.get_or_create(&t.labels).set(counted as i64);
        *t.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(samples));
        wake.now();
    }
}

/// Fetches and parses one scrape within the target's timeout; the parse runs off the
/// runtime's thread, so one huge target does not hold back another's fetch.
async fn scrape_once(t: &Target) -> Result<Vec<(Labels, f64)>, Failure> {
    let deadline = tokio::time::Instant::now() + t.timeout;
    let body = tokio::time::timeout_at(
        deadline,
        fetch::fetch(&t.cfg.client, &t.cfg.url, t.timeout, t.cfg.body_size_limit),
    )
    .await
    .map_err(|_| Failure::Timeout(t.timeout))??;
    let (job, instance, limit) = (
        t.cfg.job.clone(),
        t.cfg.instance.clone(),
        t.cfg.sample_limit,
    );
    let parsed = tokio::task::spawn_blocking(move || {
        parse::parse(
            &body,
            &parse::Target {
                job: &job,
                instance: &instance,
            },
            limit,
        )
    });
    // The parse is waited for even past the deadline, so a target never has two running:
    // one that ran long makes the scrape a timeout after it.
    let result = parsed
        .await
        .map_err(|e| Failure::Error(format!("parse task: {e}")))?;
    if tokio::time::Instant::now() > deadline {
        return Err(Failure::Timeout(t.timeout));
    }
    result
}

#[cfg(test)]
mod tests;
