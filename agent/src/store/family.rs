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

use super::{histogram::Log2Histogram, labels::Labels};

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
    /// Appends the samples of this metric, with `labels` (the family's label set) added.
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>);
}

fn named(mut labels: Labels, name: &str) -> Labels {
    labels.set(super::labels::METRIC_NAME.into(), name.to_string());
    labels
}

impl Sampled for Counter {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        out.push((named(labels, &names.total), self.get() as f64));
    }
}

impl Sampled for Counter<f64, AtomicU64> {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        out.push((named(labels, &names.total), self.get()));
    }
}

impl Sampled for Gauge {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        out.push((named(labels, &names.plain), self.get() as f64));
    }
}

impl Sampled for GaugeF64 {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        out.push((named(labels, &names.plain), self.get()));
    }
}

impl Sampled for Log2Histogram {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        let (sum, count, buckets) = self.exported();
        out.push((named(labels.clone(), &names.sum), sum));
        out.push((named(labels.clone(), &names.count), count as f64));
        let bucket = named(labels, &names.bucket);
        let mut cumulative = 0;
        for (bound, n) in buckets {
            cumulative += n;
            let le = if bound == f64::MAX {
                "+Inf".to_string()
            } else {
                // The encoder writes bounds with dtoa; a rule matching `le` sees that text.
                dtoa::Buffer::new().format(bound).to_string()
            };
            let mut l = bucket.clone();
            l.set("le".into(), le);
            out.push((l, cumulative as f64));
        }
    }
}

/// Metrics of one name, one per label set: what prometheus-client's `Family` is, plus a way to
/// read the samples back.
pub struct Family<L, M> {
    metrics: Arc<RwLock<HashMap<L, M>>>,
}

impl<L, M> Clone for Family<L, M> {
    fn clone(&self) -> Self {
        Self {
            metrics: Arc::clone(&self.metrics),
        }
    }
}

impl<L, M> Default for Family<L, M> {
    fn default() -> Self {
        Self {
            metrics: Arc::default(),
        }
    }
}

impl<L: fmt::Debug, M: fmt::Debug> fmt::Debug for Family<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<L, M> Family<L, M> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<L, M>> {
        self.metrics.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<L: LabelSet, M: Clone + Default> Family<L, M> {
    /// The metric of `labels`, created on first use. Metrics are handles: what is done to
    /// the returned one is done to the family's.
    pub fn get_or_create(&self, labels: &L) -> M {
        if let Some(m) = self.read().get(labels) {
            return m.clone();
        }
        let mut w = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        w.entry(labels.clone()).or_default().clone()
    }

    /// Removes the series of `labels`; true if it existed.
    pub fn remove(&self, labels: &L) -> bool {
        let mut w = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        w.remove(labels).is_some()
    }

    /// Keeps only the series whose labels `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&L) -> bool) {
        let mut w = self.metrics.write().unwrap_or_else(|e| e.into_inner());
        w.retain(|l, _| keep(l));
    }
}

impl<L: LabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Family<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let metrics = self.metrics.read().unwrap_or_else(|e| e.into_inner());
        for (labels, m) in metrics.iter() {
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
        self.read().is_empty()
    }
}

impl<L: LabelSet, M: Sampled> Sampled for Family<L, M> {
    fn samples(&self, names: &Names, labels: Labels, out: &mut Vec<(Labels, f64)>) {
        let metrics = self.metrics.read().unwrap_or_else(|e| e.into_inner());
        for (set, m) in metrics.iter() {
            let mut l = labels.clone();
            set.write(&mut l);
            m.samples(names, l, out);
        }
    }
}
