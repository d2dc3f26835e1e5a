//! Notifiers: alerts that start firing or resolve are told to Alertmanager and webhooks.
//!
//! Every tick the firing alerts are compared with the last tick's: a new one is a `firing`
//! notification, a gone one a `resolved` notification (with `endsAt`); Alertmanager also gets
//! firing alerts again every `resend_interval`, valid for four of them, as Prometheus does.
//! Each receiver (each URL of an Alertmanager cluster) has its own durable spool and one
//! delivery task, which retries timeouts, 5xx, 429, TLS failures and 401/403 (a configuration
//! someone will fix) with exponential backoff and jitter, and gives up on other 4xx, logging
//! the receiver's answer.

mod announced;
pub mod config;
mod payload;
mod send;
mod spool;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::sync::Notify;

pub use self::payload::OutAlert;
use self::{
    announced::{Announced, RESTORE_GRACE_INTERVALS},
    config::{Kind, NotifierConfig},
    spool::{Notification, Spool},
};
use crate::{
    alerts::{Alert, State},
    files, httpc,
    store::{Family, Store, label_set, names},
};

label_set! {
    /// Labels `{notifier, result}`.
    struct ResultLabels { notifier, result }
}

label_set! {
    /// Labels `{notifier}`.
    struct NotifierLabels { notifier }
}

#[derive(Clone, Default)]
struct Metrics {
    results: Family<ResultLabels, Counter>,
    queue: Family<NotifierLabels, Gauge>,
}

impl Metrics {
    fn count(&self, notifier: &str, result: &str, n: u64) {
        self.results
            .get_or_create(&ResultLabels {
                notifier: notifier.into(),
                result: result.into(),
            })
            .inc_by(n);
    }
}

/// Why notifiers could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifier {name}: secret_file {path}: {message}")]
    Secret {
        name: String,
        path: String,
        message: String,
    },
    #[error("notifier {name}: http_config: {source}")]
    Http {
        name: String,
        #[source]
        source: httpc::HttpError,
    },
    #[error("notifier {name}: spool {path}: {source}")]
    Spool {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One receiver: a webhook, or one Alertmanager of a cluster.
struct Receiver {
    /// The `notifier` label: the notifier's name, with `/<n>` for the n-th Alertmanager.
    label: String,
    config_name: String,
    kind: Kind,
    uri: http::Uri,
    /// The client of the notifier's `http_config`.
    client: Arc<httpc::Client>,
    key: Option<Vec<u8>>,
    timeout: Duration,
    spool: Mutex<Spool>,
    /// True while writes to the spool fail, so that a full disk is logged once.
    spool_failing: std::sync::atomic::AtomicBool,
    in_flight: Mutex<Option<u64>>,
    wake: Notify,
    /// The agent's own URL, for the webhook payload's `externalURL`.
    external_url: String,
}

struct Tracked {
    alert: OutAlert,
    last_resend: Instant,
    /// Announced by a previous run and not seen firing by this one yet.
    restored: bool,
}

/// Every notifier, and the firing alerts they were told about.
pub struct Notifiers {
    receivers: Vec<Arc<Receiver>>,
    resend: HashMap<String, Duration>,
    firing: Mutex<HashMap<String, Tracked>>,
    announced: Arc<Mutex<Announced>>,
    /// Writes the spool's files and the announced alerts, in order, off the tick: a disk
    /// slow to sync (seconds, on a node writing a checkpoint) delays neither a delivery nor
    /// the tick. Dropped last, it writes what is queued first.
    writer: files::Jobs,
    external_url: String,
    /// Added to every alert's labels where the rule did not set the label.
    external_labels: BTreeMap<String, String>,
    metrics: Metrics,
    /// Until when a restored alert that is neither pending nor firing is kept.
    restore_until: Instant,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Notifiers {
    /// Reads secrets, opens each receiver's spool (loading what an earlier run left), and
    /// registers the metrics. Nothing is sent until [`Notifiers::spawn`]. `external_labels`
    /// are added to every alert sent.
    pub fn new(
        cfg: &[NotifierConfig],
        spool_dir: &Path,
        external_url: String,
        external_labels: BTreeMap<String, String>,
        store: &mut Store,
    ) -> Result<Self, NotifyError> {
        let metrics = Metrics::default();
        store.register(
            names::NOTIFICATIONS,
            "Notification deliveries by notifier and result: sent, retried (a failed attempt that is retried), tls_error and auth_error (a TLS handshake or a 401/403 failed; retried), failed (refused by the receiver, given up), dropped (spool full)",
            metrics.results.clone(),
        );
        store.register(
            names::NOTIFICATION_QUEUE,
            "Notifications waiting to be delivered, by notifier",
            metrics.queue.clone(),
        );
        let mut receivers = Vec::new();
        let mut resend = HashMap::new();
        for n in cfg {
            let key = match &n.secret_file {
                None => None,
                Some(path) => {
                    let err = |message: String| NotifyError::Secret {
                        name: n.name.clone(),
                        path: path.display().to_string(),
                        message,
                    };
                    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                    Some(payload::signing_key(&text).map_err(err)?)
                }
            };
            let client = Arc::new(httpc::Client::new(&n.http_config).map_err(|source| {
                NotifyError::Http {
                    name: n.name.clone(),
                    source,
                }
            })?);
            resend.insert(n.name.clone(), n.resend_interval);
            for (i, uri) in n.urls.iter().enumerate() {
                let label = if n.urls.len() == 1 {
                    n.name.clone()
                } else {
                    format!("{}/{i}", n.name)
                };
                let dir = spool_dir
                    .join("notifications")
                    .join(label.replace('/', "_"));
                let (spool, bad) =
                    Spool::open(&dir, n.queue_max).map_err(|source| NotifyError::Spool {
                        name: label.clone(),
                        path: dir.display().to_string(),
                        source,
                    })?;
                for b in bad {
                    tracing::error!(notifier = %label, file = %b, "unreadable spooled notification removed");
                }
                if spool.len() > 0 {
                    tracing::info!(notifier = %label, queued = spool.len(), "undelivered notifications from the previous run");
                }
                metrics
                    .queue
                    .get_or_create(&NotifierLabels {
                        notifier: label.clone(),
                    })
                    .set(spool.len() as i64);
                receivers.push(Arc::new(Receiver {
                    label,
                    config_name: n.name.clone(),
                    kind: n.kind,
                    uri: uri.clone(),
                    client: Arc::clone(&client),
                    key: key.clone(),
                    timeout: n.timeout,
                    spool: Mutex::new(spool),
                    spool_failing: Default::default(),
                    in_flight: Mutex::new(None),
                    wake: Notify::new(),
                    external_url: external_url.clone(),
                }));
            }
        }
        let (announced, restored) = Announced::load(spool_dir);
        let now = Instant::now();
        let firing = restored
            .into_iter()
            .map(|(fp, alert)| {
                let t = Tracked {
                    alert,
                    last_resend: now,
                    restored: true,
                };
                (fp, t)
            })
            .collect();
        Ok(Self {
            receivers,
            resend,
            firing: Mutex::new(firing),
            announced: Arc::new(Mutex::new(announced)),
            writer: files::Jobs::start("notify-spool").map_err(|source| NotifyError::Spool {
                name: "writer".into(),
                path: spool_dir.display().to_string(),
                source,
            })?,
            external_url,
            external_labels,
            metrics,
            restore_until: now,
        })
    }

    /// Restored alerts wait [`RESTORE_GRACE_INTERVALS`] ticks of `interval` from now for
    /// their rules to fire them again.
    pub fn set_tick_interval(&mut self, interval: Duration) {
        self.restore_until = Instant::now() + interval * RESTORE_GRACE_INTERVALS;
    }

    /// Starts one delivery task per receiver on the current runtime.
    pub fn spawn(&self) {
        for r in &self.receivers {
            tokio::spawn(deliver(Arc::clone(r), self.metrics.clone()));
        }
    }

    /// The labels as sent: the alert's, and the external labels it does not set itself.
    fn labels_of(&self, a: &Alert) -> BTreeMap<String, String> {
        with_external(a.label_map(), &self.external_labels)
    }

    /// Compares the firing alerts with the last call's and queues what changed. An alert
    /// announced before a restart stays announced while it is pending (waiting out its `for`)
    /// again. `alertmanager_only` are the agent's own fleet alerts, for Alertmanager alone.
    pub fn observe(&self, alerts: &[Alert], alertmanager_only: &[Alert], now: SystemTime) {
        if self.receivers.is_empty() {
            return;
        }
        let to_am = self.receivers.iter().any(|r| r.kind == Kind::Alertmanager);
        let mono = Instant::now();
        let mut firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        let mut current = HashMap::new();
        let pending: std::collections::HashSet<String> = alerts
            .iter()
            .filter(|a| a.state == State::Pending)
            .map(|a| payload::fingerprint(&self.labels_of(a)))
            .collect();
        let own = alertmanager_only
            .iter()
            .filter(|_| to_am)
            .map(|a| (a, true));
        for (a, am_only) in alerts
            .iter()
            .map(|a| (a, false))
            .chain(own)
            .filter(|(a, _)| a.state == State::Firing)
        {
            let labels = self.labels_of(a);
            let fp = payload::fingerprint(&labels);
            current.insert(fp.clone(), a);
            if let Some(t) = firing.get_mut(&fp) {
                t.restored = false;
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = firing.entry(fp.clone()) {
                changed = true;
                let out = OutAlert {
                    labels,
                    annotations: a.annotation_map(),
                    starts_at: rfc3339(a.firing_since()),
                    ends_at: String::new(),
                    generator_url: format!("{}/api/v1/alerts", self.external_url),
                    fingerprint: fp,
                    status: "firing".into(),
                    alertmanager_only: am_only,
                };
                self.enqueue(&out, now, None);
                slot.insert(Tracked {
                    alert: out,
                    last_resend: mono,
                    restored: false,
                });
            }
        }
        let mut gone = Vec::new();
        let in_grace = mono < self.restore_until;
        for (fp, t) in firing.iter() {
            let waits = t.restored && (pending.contains(fp) || in_grace);
            if !current.contains_key(fp) && !waits {
                gone.push(fp.clone());
            }
        }
        changed |= !gone.is_empty();
        for fp in gone {
            let t = firing.remove(&fp).expect("listed above");
            let out = OutAlert {
                status: "resolved".into(),
                ends_at: rfc3339(now),
                ..t.alert
            };
            self.enqueue(&out, now, None);
        }
        if changed {
            let mut list: Vec<OutAlert> = firing.values().map(|t| t.alert.clone()).collect();
            list.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
            let announced = Arc::clone(&self.announced);
            self.writer.run(move || {
                announced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save(list.iter());
            });
        }
        // Alertmanager forgets firing alerts it is not told about again.
        for t in firing.values_mut() {
            let due: Vec<&Arc<Receiver>> = self
                .receivers
                .iter()
                .filter(|r| r.kind == Kind::Alertmanager)
                .filter(|r| mono.duration_since(t.last_resend) >= self.resend[&r.config_name])
                .collect();
            if !due.is_empty() {
                t.last_resend = mono;
                self.enqueue(&t.alert, now, Some(Kind::Alertmanager));
            }
        }
    }

    /// Queues `alert` for every receiver (of `only` kind, when given; Alertmanager's alone
    /// for the agent's own fleet alerts).
    fn enqueue(&self, alert: &OutAlert, now: SystemTime, only: Option<Kind>) {
        let only = only.or(alert.alertmanager_only.then_some(Kind::Alertmanager));
        // Every receiver's delivery starts first; the files are written after, so no
        // receiver waits for the disk (nor for another receiver's file).
        let mut unwritten = Vec::new();
        for r in self
            .receivers
            .iter()
            .filter(|r| only.is_none_or(|k| r.kind == k))
        {
            let mut a = alert.clone();
            if r.kind == Kind::Alertmanager && a.status == "firing" {
                // Valid until four resends are missed, as Prometheus does.
                a.ends_at = rfc3339(now + 4 * self.resend[&r.config_name]);
            }
            let id = format!(
                "msg_{}_{}_{}",
                a.fingerprint,
                a.status,
                a.starts_at.replace([':', '-', '.'], "")
            );
            let in_flight = *r.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let mut spool = r.spool.lock().unwrap_or_else(|e| e.into_inner());
            let coalesce = r.kind == Kind::Alertmanager;
            let (pushed, file) = spool.queue(Notification { id, alert: a }, coalesce, in_flight);
            if pushed.dropped > 0 {
                self.metrics
                    .count(&r.label, "dropped", pushed.dropped as u64);
                tracing::error!(notifier = %r.label, dropped = pushed.dropped, "notification spool full: oldest notifications dropped");
            }
            self.metrics
                .queue
                .get_or_create(&NotifierLabels {
                    notifier: r.label.clone(),
                })
                .set(spool.len() as i64);
            drop(spool);
            r.wake.notify_one();
            unwritten.push((r, file));
        }
        for (r, file) in unwritten {
            let (receiver, metrics) = (Arc::clone(r), self.metrics.clone());
            if !self
                .writer
                .run(move || write_spooled(&receiver, file, &metrics))
            {
                tracing::error!(notifier = %r.label, "the notification spool writer stopped; notifications are kept in memory only");
            }
        }
    }
}

/// Writes one queued notification's file and tells its spool; a failure is counted, and
/// logged once until writes work again.
fn write_spooled(r: &Receiver, file: std::io::Result<spool::Unwritten>, metrics: &Metrics) {
    let error = match file {
        Ok(u) => {
            let result = u.write();
            r.spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .written(u.seq(), result.is_ok());
            result.err()
        }
        Err(e) => Some(e),
    };
    use std::sync::atomic::Ordering::Relaxed;
    match error {
        Some(e) => {
            metrics.count(&r.label, "unspooled", 1);
            if !r.spool_failing.swap(true, Relaxed) {
                tracing::error!(notifier = %r.label, error = %e, "cannot write the notification spool; notifications are kept in memory only until it works again");
            }
        }
        None if r.spool_failing.swap(false, Relaxed) => {
            tracing::info!(notifier = %r.label, "notification spool writable again");
        }
        None => {}
    }
}
/// `labels` with each external label the alert does not set itself (as Prometheus adds
/// `global.external_labels`: the rule's own label wins).
fn with_external(
    mut labels: BTreeMap<String, String>,
    external: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    for (k, v) in external {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    labels
}

/// Backoff before retry `attempt` (1, 2, ...): 500 ms doubling to 60 s, times 0.5..1.
fn backoff(attempt: u32, seed: &mut u64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << attempt.saturating_sub(1).min(7));
    let base = base.min(Duration::from_secs(60));
    // xorshift: jitter needs no cryptographic randomness.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    base.mul_f64(0.5 + (*seed % 1000) as f64 / 2000.0)
}

/// Delivers one receiver's spool, oldest first, until the runtime stops.
async fn deliver(r: Arc<Receiver>, metrics: Metrics) {
    let mut attempt = 0u32;
    let mut seed = payload::fingerprint(&BTreeMap::from([("r".to_string(), r.label.clone())]))
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            h.rotate_left(5) ^ u64::from(b)
        })
        | 1;
    loop {
        let next = r.spool.lock().unwrap_or_else(|e| e.into_inner()).front();
        let Some((seq, n)) = next else {
            r.wake.notified().await;
            continue;
        };
        *r.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
        let result = r.send(&n).await;
        *r.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(notifier = %r.label, after_attempts = attempt + 1, "receiver reachable again");
                }
                attempt = 0;
                metrics.count(&r.label, "sent", 1);
                r.spool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(seq);
            }
            Err(f) if f.retry => {
                attempt += 1;
                metrics.count(&r.label, f.counted, 1);
                if attempt == 1 && f.counted != "retried" {
                    tracing::error!(notifier = %r.label, error = %f.message, "delivery refused for TLS or credentials; the notification stays queued and is retried with backoff until the configuration is fixed");
                } else if attempt == 1 {
                    tracing::warn!(notifier = %r.label, error = %f.message, "delivery failed; retrying with backoff");
                }
                tokio::time::sleep(backoff(attempt, &mut seed)).await;
            }
            Err(f) => {
                attempt = 0;
                metrics.count(&r.label, "failed", 1);
                tracing::error!(notifier = %r.label, id = %n.id, error = %f.message, "receiver refused the notification; not retried");
                r.spool
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(seq);
            }
        }
        let len = r.spool.lock().unwrap_or_else(|e| e.into_inner()).len();
        metrics
            .queue
            .get_or_create(&NotifierLabels {
                notifier: r.label.clone(),
            })
            .set(len as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_labels_are_added_unless_the_rule_sets_them() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ext = m(&[("node", "gpu-1"), ("cluster", "a")]);
        assert_eq!(
            with_external(m(&[("alertname", "X")]), &ext),
            m(&[("alertname", "X"), ("cluster", "a"), ("node", "gpu-1")])
        );
        assert_eq!(
            with_external(m(&[("alertname", "X"), ("node", "switch-4")]), &ext)["node"],
            "switch-4"
        );
    }

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        let mut seed = 12345;
        let b1 = backoff(1, &mut seed);
        assert!(
            b1 >= Duration::from_millis(250) && b1 <= Duration::from_millis(500),
            "{b1:?}"
        );
        let b5 = backoff(5, &mut seed);
        assert!(
            b5 >= Duration::from_secs(4) && b5 <= Duration::from_secs(8),
            "{b5:?}"
        );
        let b20 = backoff(20, &mut seed);
        assert!(
            b20 >= Duration::from_secs(30) && b20 <= Duration::from_secs(60),
            "{b20:?}"
        );
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(3, &mut seed)).collect();
        assert!(draws.len() > 10, "jitter varies");
    }
}
