//! Where one tick's samples go. Each sample of the registry names its series by a key that
//! stays the same from tick to tick, and builds its label set only when the receiver asks
//! for it (a series it does not know yet): a tick over known series clones no labels and
//! allocates no names.

use super::labels::{Labels, METRIC_NAME};

/// A series' identity within one store, from its first tick to its last: which registered
/// metric, which series of that metric's family (numbered when the family creates it, never
/// reused), and which sample of that series (a histogram's `_sum`, `_count` and buckets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub metric: u32,
    pub series: u64,
    pub part: u32,
}

/// Receives the samples of one tick.
pub trait Sink {
    /// A sample of the series `key`; `labels` builds its label set (with `__name__`), for a
    /// receiver that does not know the key yet.
    fn keyed(&mut self, key: SeriesKey, value: f64, labels: &dyn Fn() -> Labels);

    /// A sample known only by its label set (sources outside the registry).
    fn labelled(&mut self, labels: &Labels, value: f64);
}

/// Collects every sample with its label set built: for tests and for readers that want the
/// whole list.
impl Sink for Vec<(Labels, f64)> {
    fn keyed(&mut self, _: SeriesKey, value: f64, labels: &dyn Fn() -> Labels) {
        self.push((labels(), value));
    }

    fn labelled(&mut self, labels: &Labels, value: f64) {
        self.push((labels.clone(), value));
    }
}

/// Where a metric's samples stand: the key of its series (the metric sets `part`) and what
/// writes the labels the family adds.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub key: SeriesKey,
    pub labels: &'a dyn Fn(&mut Labels),
}

impl At<'_> {
    /// Gives one sample named `name` (with `le` when a bucket bound is given) to `out`.
    pub fn sample(&self, out: &mut dyn Sink, part: u32, name: &str, le: Option<f64>, v: f64) {
        let key = SeriesKey { part, ..self.key };
        out.keyed(key, v, &|| {
            let mut l = Labels::with_capacity(4);
            (self.labels)(&mut l);
            l.set(METRIC_NAME.into(), name.to_string());
            if let Some(bound) = le {
                l.set("le".into(), le_text(bound));
            }
            l
        });
    }
}

/// A bucket bound as the encoder writes it (dtoa), which is what a rule matching `le` sees;
/// `f64::MAX` is `+Inf`.
fn le_text(bound: f64) -> String {
    if bound == f64::MAX {
        "+Inf".to_string()
    } else {
        dtoa::Buffer::new().format(bound).to_string()
    }
}
