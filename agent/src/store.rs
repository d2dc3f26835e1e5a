//! The one in-process store every collector writes into each tick: the prometheus-client
//! registry that `/metrics` exports. Metric names live here, in one place.

use std::sync::{Arc, Mutex, atomic::AtomicU64};

use nodewatch_common::gpu_ioctl::BUCKETS;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Metric names without the `nodewatch_` prefix. Counters are registered without `_total`;
/// the encoder appends it (`nodewatch_tcp_retransmits_total`).
pub mod names {
    pub const TCP_RETRANSMITS: &str = "tcp_retransmits";
    pub const TCP_LISTEN_OVERFLOWS: &str = "tcp_listen_overflows";
    pub const TCP_LISTEN_QUEUE_LENGTH: &str = "tcp_listen_queue_length";
    pub const TCP_LISTEN_QUEUE_MAX: &str = "tcp_listen_queue_max";
    pub const HEARTBEAT_UP: &str = "heartbeat_up";
    pub const HEARTBEAT_LATENCY: &str = "heartbeat_latency_seconds";
    pub const HEARTBEAT_FAILURES: &str = "heartbeat_failures";
    pub const CPU_USAGE: &str = "cpu_usage_ratio";
    pub const MEMORY_USED: &str = "memory_used_ratio";
    pub const LOAD1: &str = "load1";
    pub const DISK_USED: &str = "disk_used_ratio";
    pub const PRESSURE: &str = "pressure_ratio";
    pub const NODE_HEALTHY: &str = "node_healthy";
    pub const HEALTH_TRANSITIONS: &str = "health_transitions";
    pub const UNHEALTHY_SECONDS: &str = "unhealthy_seconds";
    pub const NOTIFICATIONS: &str = "notifications";
    pub const NOTIFICATION_QUEUE: &str = "notification_queue_length";
    pub const GPU_IOCTL_DURATION: &str = "gpu_ioctl_duration_seconds";
    pub const GPU_IOCTL_STALLS: &str = "gpu_ioctl_stalls";
    pub const GPU_IOCTL_INFLIGHT_STALLED: &str = "gpu_ioctl_inflight_stalled";
    pub const GPU_IOCTL_EVENTS_DROPPED: &str = "gpu_ioctl_events_dropped";
    pub const GPU_XID_ERRORS: &str = "gpu_xid_errors";
    pub const PROBE_UP: &str = "probe_up";
    pub const COLLECTOR_DURATION: &str = "collector_duration_seconds";
    pub const COLLECTOR_ERRORS: &str = "collector_errors";
    pub const MISSED_EVENTS: &str = "probe_missed_events";
    pub const BUILD_INFO: &str = "build_info";
    pub const ALERTS: &str = "alerts";
    pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "config_last_reload_successful";
    pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: &str =
        "config_last_reload_success_timestamp_seconds";
    pub const RULE_EVALUATION_DURATION: &str = "rule_evaluation_duration_seconds";
    pub const RULE_EVALUATION_FAILURES: &str = "rule_evaluation_failures";
    pub const RULE_HISTORY_SERIES: &str = "rule_history_series";
    pub const RULE_HISTORY_SAMPLES: &str = "rule_history_samples";
    pub const RULE_HISTORY_DROPPED_SAMPLES: &str = "rule_history_dropped_samples";
}

/// A float gauge.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

/// First and last exported bucket of a [`Log2Histogram`]: `le` = 2^10 ns (about 1 µs) up to
/// 2^36 ns (about 69 s). Shorter calls count in the first, longer ones only in `+Inf`.
pub const LOG2_FIRST: usize = 10;
pub const LOG2_LAST: usize = 36;

/// A histogram whose buckets the kernel keeps: bucket `b` holds durations in
/// `(2^(b-1), 2^b]` ns. The agent copies the kernel's totals in; exported in seconds.
#[derive(Clone, Debug, Default)]
pub struct Log2Histogram(Arc<Mutex<Log2Totals>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Log2Totals {
    buckets: [u64; BUCKETS],
    sum_ns: u64,
}

impl Default for Log2Totals {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_ns: 0,
        }
    }
}

impl Log2Histogram {
    /// Replaces the totals with the kernel's.
    pub fn set(&self, buckets: &[u64; BUCKETS], sum_ns: u64) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.buckets = *buckets;
        t.sum_ns = sum_ns;
    }

    /// (upper bound in seconds, calls in that bucket alone), the last bound `f64::MAX` (+Inf).
    fn exported(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let t = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(LOG2_LAST - LOG2_FIRST + 2);
        out.push((bound(LOG2_FIRST), t.buckets[..=LOG2_FIRST].iter().sum()));
        for b in LOG2_FIRST + 1..=LOG2_LAST {
            out.push((bound(b), t.buckets[b]));
        }
        out.push((f64::MAX, t.buckets[LOG2_LAST + 1..].iter().sum()));
        let count = t.buckets.iter().sum();
        (t.sum_ns as f64 / 1e9, count, out)
    }
}

/// 2^b ns in seconds.
fn bound(b: usize) -> f64 {
    (1u64 << b) as f64 / 1e9
}

impl TypedMetric for Log2Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Log2Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.exported();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Labels `{probe, mode}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
    pub mode: String,
}

/// Labels `{collector}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabels {
    pub collector: String,
}

/// Labels `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// The agent's observations of itself.
#[derive(Clone, Default)]
pub struct SelfMetrics {
    /// `nodewatch_probe_up{probe,mode}`: 1 for the mode each probe runs in (0 for `off`).
    pub probe_up: Family<ProbeLabels, Gauge>,
    /// `nodewatch_collector_duration_seconds{collector}`: how long the last collection took.
    pub collector_duration: Family<CollectorLabels, GaugeF64>,
    /// `nodewatch_collector_errors_total{collector}`: collections that failed.
    pub collector_errors: Family<CollectorLabels, Counter>,
    /// `nodewatch_probe_missed_events_total{collector}`: events the kernel did not deliver to
    /// a probe's programs (its recursion guard skipped them).
    pub missed_events: Family<CollectorLabels, Counter>,
}

/// The registry and the agent's own metrics.
pub struct Store {
    registry: Registry,
    pub own: SelfMetrics,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A registry with the `nodewatch_` prefix and the agent's own metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nodewatch");
        let own = SelfMetrics::default();
        registry.register(
            names::PROBE_UP,
            "Whether a probe runs (1), by the mode it runs in (ebpf, procfs, ...)",
            own.probe_up.clone(),
        );
        registry.register(
            names::COLLECTOR_DURATION,
            "Seconds the last collection of each collector took",
            own.collector_duration.clone(),
        );
        registry.register(
            names::COLLECTOR_ERRORS,
            "Collections that failed, by collector",
            own.collector_errors.clone(),
        );
        registry.register(
            names::MISSED_EVENTS,
            "Kernel events a probe's programs did not see because the kernel skipped them (another BPF program was running on that CPU)",
            own.missed_events.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            names::BUILD_INFO,
            "Always 1, labelled by the agent's version",
            build,
        );
        Self { registry, own }
    }

    /// Where collectors register their metric families at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// OpenMetrics text of every metric.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Prometheus text format 0.0.4 of every metric, for scrapers that do not ask for
    /// OpenMetrics (and for `promtool check metrics`).
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: counter families are named with their
/// `_total` sample name, and the `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_prometheus(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP nodewatch_x Things.\n# TYPE nodewatch_x counter\nnodewatch_x_total{port=\"1\"} 3\n# HELP nodewatch_g A gauge.\n# TYPE nodewatch_g gauge\n# UNIT nodewatch_g seconds\nnodewatch_g 1.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP nodewatch_x_total Things.\n# TYPE nodewatch_x_total counter\nnodewatch_x_total{port=\"1\"} 3\n# HELP nodewatch_g A gauge.\n# TYPE nodewatch_g gauge\nnodewatch_g 1.5\n"
        );
    }

    #[test]
    fn log2_histogram_exports_the_kernels_buckets_in_seconds() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct L {
            device: String,
        }
        let mut registry = Registry::with_prefix("nodewatch");
        let fam = Family::<L, Log2Histogram>::default();
        registry.register("d_seconds", "D", fam.clone());
        let mut b = [0u64; BUCKETS];
        b[3] = 1; // 8 ns: folded into the first exported bucket
        b[22] = 20; // (2.1 ms, 4.2 ms]
        b[31] = 3; // (1.07 s, 2.15 s]
        b[40] = 2; // beyond 2^36 ns: only in +Inf
        fam.get_or_create(&L {
            device: "/dev/x".into(),
        })
        .set(&b, 4_560_000_008 + 2 * (1 << 40));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        // (le, cumulative count); dtoa prints the shortest text that reads back the same f64.
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("nodewatch_d_seconds_bucket{le=\"")?;
                let (le, count) = rest.split_once("\",device=\"/dev/x\"} ")?;
                let le = if le == "+Inf" {
                    f64::MAX
                } else {
                    le.parse().ok()?
                };
                Some((le, count.parse().ok()?))
            })
            .collect();
        let at = |le: f64| buckets.iter().find(|b| b.0 == le).map(|b| b.1);
        assert_eq!(buckets.len(), LOG2_LAST - LOG2_FIRST + 2, "{text}");
        assert_eq!(at(bound(LOG2_FIRST)), Some(1));
        assert_eq!(at(bound(21)), Some(1));
        assert_eq!(at(bound(22)), Some(21));
        assert_eq!(at(bound(31)), Some(24));
        assert_eq!(at(bound(LOG2_LAST)), Some(24));
        assert_eq!(at(f64::MAX), Some(26));
        assert!(
            text.contains("nodewatch_d_seconds_count{device=\"/dev/x\"} 26"),
            "{text}"
        );
    }

    #[test]
    fn own_metrics_are_exported() {
        let store = Store::new();
        store
            .own
            .probe_up
            .get_or_create(&ProbeLabels {
                probe: "p".into(),
                mode: "ebpf".into(),
            })
            .set(1);
        let text = store.encode_openmetrics();
        assert!(
            text.contains("nodewatch_probe_up{probe=\"p\",mode=\"ebpf\"} 1"),
            "{text}"
        );
        assert!(text.contains("nodewatch_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
