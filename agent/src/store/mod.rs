//! The one in-process store every collector writes into each tick: metric families
//! registered with prometheus-client for `/metrics`, the same samples read back typed for the
//! rules, and the short per-series history the rules evaluate over.

mod family;
pub mod hash;
mod histogram;
pub mod history;
pub mod labels;
pub mod names;
pub mod sink;

use std::sync::{Mutex, MutexGuard};

use prometheus_client::{
    encoding::{EncodeMetric, text::encode},
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Metric, Registry},
};

pub use self::{
    family::{Escaped, Family, GaugeF64, LabelSet, Names, Owned, OwnerLabels, Sampled, set_total},
    histogram::{LOG2_FIRST, LOG2_LAST, Log2Histogram},
    history::History,
    labels::Labels,
    sink::{At, SeriesKey, Sink},
};
pub use crate::label_set;

/// The prefix of every metric name.
pub const PREFIX: &str = "nodewatch";

label_set! {
    /// Labels `{probe, mode}`.
    pub struct ProbeLabels { pub probe, pub mode }
}

label_set! {
    /// Labels `{collector}`.
    pub struct CollectorLabels { pub collector }
}

label_set! {
    /// Labels `{version}`.
    struct VersionLabels { version }
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

/// A metric the store can both export and read.
trait Readable: Sampled + Send + Sync {}
impl<T: Sampled + Send + Sync> Readable for T {}

/// Samples that only the rules read, never `/metrics`: series scraped from local targets,
/// which the central Prometheus scrapes from those targets itself.
pub trait RulesOnly: Send + Sync {
    /// Gives the samples as they stand now to `out` (`Sink::labelled`), each label set with
    /// its `__name__`.
    fn samples(&self, out: &mut dyn Sink);
}

/// The registry, the readers of what it holds, the agent's own metrics, and the history.
pub struct Store {
    registry: Registry,
    /// Each registered metric under its full name, in registration order.
    readers: Vec<(Names, Box<dyn Readable>)>,
    /// Sources the rules read that are not exported.
    rules_only: Vec<Box<dyn RulesOnly>>,
    pub own: SelfMetrics,
    history: Mutex<History>,
    /// How many samples the last read gave, to size the next.
    last_len: std::sync::atomic::AtomicUsize,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store with the agent's own metrics registered and an empty history.
    pub fn new() -> Self {
        let mut store = Self {
            registry: Registry::with_prefix(PREFIX),
            readers: Vec::new(),
            rules_only: Vec::new(),
            own: SelfMetrics::default(),
            history: Mutex::new(History::new(0, history::DEFAULT_MAX_SERIES)),
            last_len: std::sync::atomic::AtomicUsize::new(64),
        };
        store
            .history()
            .set_max_samples(history::DEFAULT_MAX_SAMPLES);
        let own = store.own.clone();
        store.register(
            names::PROBE_UP,
            "Whether a probe runs (1), by the mode it runs in (ebpf, procfs, ...)",
            own.probe_up,
        );
        store.register(
            names::COLLECTOR_DURATION,
            "Seconds the last collection of each collector took",
            own.collector_duration,
        );
        store.register(
            names::COLLECTOR_ERRORS,
            "Collections that failed, by collector",
            own.collector_errors,
        );
        store.register(
            names::MISSED_EVENTS,
            "Kernel events a probe's programs did not see because the kernel skipped them (another BPF program was running on that CPU)",
            own.missed_events,
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        store.register(
            names::BUILD_INFO,
            "Always 1, labelled by the agent's version",
            build,
        );
        store
    }

    /// Registers a metric (or family) under `name` (without the prefix; counters without
    /// `_total`), for export and for the rules. Collectors call this at start.
    pub fn register<M>(&mut self, name: &str, help: &str, metric: M)
    where
        M: Metric + EncodeMetric + Sampled + Clone,
    {
        self.registry.register(name, help, metric.clone());
        self.readers
            .push((Names::of(&format!("{PREFIX}_{name}")), Box::new(metric)));
    }

    /// Adds a source of samples for the rules that `/metrics` does not export.
    pub fn add_rules_only(&mut self, source: Box<dyn RulesOnly>) {
        self.rules_only.push(source);
    }

    /// Every sample of every registered metric now, as a scrape of `/metrics` would see it:
    /// label sets with `__name__`, counters as `_total`, histograms as `_bucket{le}`, `_sum`
    /// and `_count` (no `_created`); then the samples only the rules read.
    pub fn samples(&self) -> Vec<(Labels, f64)> {
        let mut out = Vec::with_capacity(self.last_len.load(std::sync::atomic::Ordering::Relaxed));
        self.collect(&mut out);
        self.last_len
            .store(out.len(), std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// Gives the same samples as [`Store::samples`] to `out`, each registered series under a
    /// key that stays the same from tick to tick, its labels built only when `out` asks.
    pub fn collect(&self, out: &mut dyn Sink) {
        for (metric, (names, m)) in (0u32..).zip(&self.readers) {
            let at = At {
                key: SeriesKey {
                    metric,
                    ..SeriesKey::default()
                },
                labels: &|_| {},
            };
            m.samples(names, at, out);
        }
        for source in &self.rules_only {
            source.samples(out);
        }
    }

    /// The per-series history, for the tick thread (the only one that uses it).
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
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
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP nodewatch_x Things.\n# TYPE nodewatch_x counter\nnodewatch_x_total{port=\"1\"} 3\n# HELP nodewatch_g A gauge.\n# TYPE nodewatch_g gauge\n# UNIT nodewatch_g seconds\nnodewatch_g 1.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP nodewatch_x_total Things.\n# TYPE nodewatch_x_total counter\nnodewatch_x_total{port=\"1\"} 3\n# HELP nodewatch_g A gauge.\n# TYPE nodewatch_g gauge\nnodewatch_g 1.5\n"
        );
    }

    /// The rules read exactly what a scrape of `/metrics` would give them.
    #[test]
    fn samples_are_what_the_exposition_says() {
        label_set! {
            struct L { device, port }
        }
        let mut store = Store::new();
        let c = Family::<L, Counter>::default();
        let g = Family::<L, GaugeF64>::default();
        let h = Family::<L, Log2Histogram>::default();
        let plain = Gauge::<i64>::default();
        let secs = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        store.register("c", "C", c.clone());
        store.register("g_ratio", "G", g.clone());
        store.register("h_seconds", "H", h.clone());
        store.register("plain", "P", plain.clone());
        store.register("secs", "S", secs.clone());
        let l = |d: &str, p: &str| L {
            device: d.into(),
            port: p.into(),
        };
        // A path may hold a quote, a backslash and a newline: escaped in the text, read back
        // whole.
        c.get_or_create(&l("/dev/a b", "1")).inc_by(7);
        c.get_or_create(&l("/mnt/q\"b\\s\nn\\", "1")).inc_by(2);
        c.get_or_create(&l("x", "")).inc();
        g.get_or_create(&l("y", "2")).set(0.1 + 0.2);
        g.get_or_create(&l("z", "3")).set(f64::NAN);
        let mut buckets = [0u64; nodewatch_common::gpu_ioctl::BUCKETS];
        buckets[12] = 3;
        buckets[40] = 1;
        h.get_or_create(&l("/dev/nvidia0", "0"))
            .set(&buckets, 123_456_789);
        plain.set(-5);
        secs.inc_by(1.25);
        store
            .own
            .probe_up
            .get_or_create(&ProbeLabels {
                probe: "p".into(),
                mode: "ebpf".into(),
            })
            .set(1);
        let key = |v: &Vec<(Labels, f64)>| {
            let mut v: Vec<(Labels, u64)> =
                v.iter().map(|(l, x)| (l.clone(), x.to_bits())).collect();
            v.sort();
            v
        };
        let typed = store.samples();
        let parsed = history::parse_exposition(&store.encode_openmetrics());
        assert!(typed.len() > 30, "{typed:?}");
        assert_eq!(key(&typed), key(&parsed));
    }

    /// The history fed by keys holds exactly what appending every sample of every tick by its
    /// labels gives, staleness markers included, while series come, go and come back.
    #[test]
    fn keyed_ticks_keep_what_labelled_samples_give() {
        label_set! {
            struct L { port }
        }
        let mut store = Store::new();
        let c = Family::<L, Counter>::default();
        let h = Family::<L, Log2Histogram>::default();
        let g = Gauge::<i64>::default();
        store.register("c", "C", c.clone());
        store.register("h_seconds", "H", h.clone());
        store.register("g", "G", g.clone());
        let l = |p: u32| L {
            port: p.to_string(),
        };
        let mut reference: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
        let mut last = BTreeSet::new();
        let mut history = History::new(i64::MAX, usize::MAX);
        for tick in 0..40u32 {
            let t = i64::from(tick) * 1000;
            // Series come and go at different paces; some are removed and created again
            // with the same labels (a new series to the family, the same to the rules).
            c.retain(|x| x.port.parse::<u32>().unwrap() % 7 != tick % 7);
            for p in 0..(tick % 5 + 1) {
                c.get_or_create(&l(p * 2)).inc_by(u64::from(tick));
            }
            if tick % 3 == 0 {
                h.remove(&l(1));
            } else {
                let mut buckets = [0u64; nodewatch_common::gpu_ioctl::BUCKETS];
                buckets[12 + tick as usize % 20] = u64::from(tick);
                h.get_or_create(&l(1)).set(&buckets, u64::from(tick) * 1000);
            }
            g.set(i64::from(tick));
            history.ingest(t, |out| store.collect(out));
            let now: BTreeSet<Labels> = store
                .samples()
                .into_iter()
                .map(|(labels, v)| {
                    let s = reference.entry(labels.clone()).or_default();
                    if s.last().is_none_or(|(ts, _)| *ts < t) {
                        s.push((t, v.to_bits()));
                    }
                    labels
                })
                .collect();
            for gone in last.difference(&now) {
                reference
                    .get_mut(gone)
                    .unwrap()
                    .push((t, history::STALE_NAN));
            }
            last = now;
        }
        let got: BTreeMap<Labels, Vec<(i64, u64)>> = history
            .select(None, &[])
            .into_iter()
            .map(|(labels, s)| (labels.clone(), s.raw()))
            .collect();
        assert!(reference.len() > 30, "{}", reference.len());
        assert!(
            reference
                .values()
                .any(|s| s.iter().any(|(_, v)| *v == history::STALE_NAN)),
            "some series went stale"
        );
        assert_eq!(got, reference);
    }

    #[test]
    fn a_family_without_series_is_not_exported() {
        label_set! {
            struct L { port }
        }
        let mut store = Store::new();
        let f = Family::<L, Counter>::default();
        store.register("empty", "E", f.clone());
        assert!(!store.encode_openmetrics().contains("nodewatch_empty"));
        f.get_or_create(&L { port: "1".into() }).inc();
        assert!(
            store
                .encode_openmetrics()
                .contains("# TYPE nodewatch_empty counter")
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

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        label_set! {
            struct L { mount }
        }
        let mut store = Store::new();
        let g = Family::<L, GaugeF64>::default();
        store.register("used_ratio", "U", g.clone());
        g.get_or_create(&L {
            mount: "/mnt/a\"b\\c\nd".into(),
        })
        .set(0.5);
        let text = store.encode_prometheus();
        assert!(
            text.contains("nodewatch_used_ratio{mount=\"/mnt/a\\\"b\\\\c\\nd\"} 0.5\n"),
            "{text}"
        );
    }
}
