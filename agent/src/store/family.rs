//! Metric families the collectors write into, readable two ways: encoded by prometheus-client
//! for `/metrics`, and as typed samples for the rules (no text in between).

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Arc, RwLock, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::Counter, gauge::Gauge},
};

use super::{
    histogram::Log2Histogram,
    labels::Labels,
    sink::{At, SeriesKey, Sink},
};

/// A float gauge.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

/// A label set of a family: encodable for export, and readable as name/value pairs.
pub trait LabelSet:
    EncodeLabelSet + Clone + Hash + Eq + fmt::Debug + Send + Sync + 'static
{
    /// Adds this set's labels to `into`.
    fn write(&self, into: &mut Labels);
}

/// Declares a label set: a struct of `String` fields, one per label, named as the labels,
/// optionally followed by `; owner` and a field of [`OwnerLabels`] (`container`, `pod`: labels
/// a series carries only when they have a value).
#[macro_export]
macro_rules! label_set {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($(#[$fm:meta])* $fvis:vis $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq)]
        $vis struct $name {
            $($(#[$fm])* $fvis $field: String),*
        }

        impl prometheus_client::encoding::EncodeLabelSet for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelSetEncoder,
            ) -> Result<(), std::fmt::Error> {
                use prometheus_client::encoding::EncodeLabel as _;
                $((stringify!($field), $crate::store::Escaped(&self.$field)).encode(encoder.encode_label())?;)*
                Ok(())
            }
        }

        impl $crate::store::LabelSet for $name {
            fn write(&self, into: &mut $crate::store::Labels) {
                $(into.set(stringify!($field).to_string(), self.$field.clone());)*
            }
        }
    };
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($(#[$fm:meta])* $fvis:vis $field:ident),* ; owner $ovis:vis $owner:ident $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq)]
        $vis struct $name {
            $($(#[$fm])* $fvis $field: String,)*
            $ovis $owner: $crate::store::OwnerLabels,
        }

        impl prometheus_client::encoding::EncodeLabelSet for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelSetEncoder,
            ) -> Result<(), std::fmt::Error> {
                use prometheus_client::encoding::EncodeLabel as _;
                $((stringify!($field), $crate::store::Escaped(&self.$field)).encode(encoder.encode_label())?;)*
                prometheus_client::encoding::EncodeLabelSet::encode(&self.$owner, encoder)
            }
        }

        impl $crate::store::LabelSet for $name {
            fn write(&self, into: &mut $crate::store::Labels) {
                $(into.set(stringify!($field).to_string(), self.$field.clone());)*
                self.$owner.write(into);
            }
        }

        impl $crate::store::Owned for $name {
            fn owner(&self) -> &$crate::store::OwnerLabels {
                &self.$owner
            }
        }
    };
}

/// A label value written as the exposition formats require: `\\`, `\"` and `\n` escaped.
/// prometheus-client 0.24 writes a `&str` value as it is, so a mount point holding a quote
/// would break the whole scrape; every label set of the store encodes through this.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        use fmt::Write as _;
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Who a series belongs to: a container (`container`, the first 12 hex digits of its id, or
/// `other`) and its Kubernetes pod (`pod`, `namespace/name`). The host's series carry
/// neither label: a `None` is left out, not written as `""`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnerLabels {
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// A label set with an owner.
pub trait Owned {
    fn owner(&self) -> &OwnerLabels;
}

impl OwnerLabels {
    /// The host: no labels.
    pub const HOST: Self = Self {
        container: None,
        pod: None,
    };

    /// Adds the labels that have a value to `into`.
    pub fn write(&self, into: &mut Labels) {
        if let Some(c) = &self.container {
            into.set("container".to_string(), c.clone());
        }
        if let Some(p) = &self.pod {
            into.set("pod".to_string(), p.clone());
        }
    }
}

impl EncodeLabelSet for OwnerLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        if let Some(c) = &self.container {
            ("container", Escaped(c)).encode(encoder.encode_label())?;
        }
        if let Some(p) = &self.pod {
            ("pod", Escaped(p)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Sets a counter to a total kept elsewhere (a kernel map, a kernel counter): the kernel
/// counts, the agent copies.
pub fn set_total(counter: &Counter, total: u64) {
    counter
        .inner()
        .store(total, std::sync::atomic::Ordering::Relaxed);
}

/// The sample names of one family, made once at registration: a counter is read as
/// `<name>_total`, a histogram as `<name>_bucket{le}`, `<name>_sum` and `<name>_count`.
#[derive(Debug, Clone)]
pub struct Names {
    pub plain: String,
    pub total: String,
    pub bucket: String,
    pub sum: String,
    pub count: String,
}

impl Names {
    /// The names of family `name` (with its prefix).
    pub fn of(name: &str) -> Self {
        Self {
            plain: name.to_string(),
            total: format!("{name}_total"),
            bucket: format!("{name}_bucket"),
            sum: format!("{name}_sum"),
            count: format!("{name}_count"),
        }
    }
}

/// One metric's samples as the rules see them, named as a scrape names them.
pub trait Sampled {
    /// Gives the samples of this metric to `out`, each under `at`'s key with its own `part`
    /// and with `at`'s labels added.
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink);
}

impl Sampled for Counter {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        at.sample(out, 0, &names.total, None, self.get() as f64);
    }
}

impl Sampled for Counter<f64, AtomicU64> {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        at.sample(out, 0, &names.total, None, self.get());
    }
}

impl Sampled for Gauge {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        at.sample(out, 0, &names.plain, None, self.get() as f64);
    }
}

impl Sampled for GaugeF64 {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        at.sample(out, 0, &names.plain, None, self.get());
    }
}

impl Sampled for Log2Histogram {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        let (sum, count, buckets) = self.exported();
        at.sample(out, 0, &names.sum, None, sum);
        at.sample(out, 1, &names.count, None, count as f64);
        let mut cumulative = 0;
        // A bucket's part is its place in the fixed list of bounds: the same every tick.
        for (part, (bound, n)) in (2..).zip(buckets) {
            cumulative += n;
            at.sample(out, part, &names.bucket, Some(bound), cumulative as f64);
        }
    }
}

/// The series of one family: each metric with the number it got when it was created.
struct Series<L, M> {
    metrics: HashMap<L, (u64, M)>,
    /// The number the next new series gets; never reused, so a series that is removed and
    /// created again is a new series to the history, as it is to a scraper.
    next: u64,
}

impl<L, M> Default for Series<L, M> {
    fn default() -> Self {
        Self {
            metrics: HashMap::new(),
            next: 1,
        }
    }
}

/// Metrics of one name, one per label set: what prometheus-client's `Family` is, plus a way to
/// read the samples back.
pub struct Family<L, M> {
    series: Arc<RwLock<Series<L, M>>>,
}

impl<L, M> Clone for Family<L, M> {
    fn clone(&self) -> Self {
        Self {
            series: Arc::clone(&self.series),
        }
    }
}

impl<L, M> Default for Family<L, M> {
    fn default() -> Self {
        Self {
            series: Arc::default(),
        }
    }
}

impl<L: fmt::Debug, M: fmt::Debug> fmt::Debug for Family<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("metrics", &self.read().metrics)
            .finish()
    }
}

impl<L, M> Family<L, M> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Series<L, M>> {
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Series<L, M>> {
        self.series.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl<L: LabelSet, M: Clone + Default> Family<L, M> {
    /// The metric of `labels`, created on first use. Metrics are handles: what is done to
    /// the returned one is done to the family's.
    pub fn get_or_create(&self, labels: &L) -> M {
        if let Some((_, m)) = self.read().metrics.get(labels) {
            return m.clone();
        }
        let mut w = self.write();
        let Series { metrics, next } = &mut *w;
        metrics
            .entry(labels.clone())
            .or_insert_with(|| {
                *next += 1;
                (*next - 1, M::default())
            })
            .1
            .clone()
    }

    /// Removes the series of `labels`; true if it existed.
    pub fn remove(&self, labels: &L) -> bool {
        self.write().metrics.remove(labels).is_some()
    }

    /// Keeps only the series whose labels `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&L) -> bool) {
        self.write().metrics.retain(|l, _| keep(l));
    }
}

impl<L: LabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Family<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let series = self.read();
        for (labels, (_, m)) in series.metrics.iter() {
            let encoder = encoder.encode_family(labels)?;
            m.encode(encoder)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    /// A family without series is left out of the exposition, descriptor and all.
    fn is_empty(&self) -> bool {
        self.read().metrics.is_empty()
    }
}

impl<L: LabelSet, M: Sampled> Sampled for Family<L, M> {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        let series = self.read();
        for (set, (id, m)) in series.metrics.iter() {
            let write = |l: &mut Labels| {
                (at.labels)(l);
                set.write(l);
            };
            let key = SeriesKey {
                series: *id,
                ..at.key
            };
            m.samples(
                names,
                At {
                    key,
                    labels: &write,
                },
                out,
            );
        }
    }
}
