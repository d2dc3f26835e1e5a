//! A histogram whose buckets the kernel keeps (power-of-two nanoseconds), exported in seconds.

use std::sync::{Arc, Mutex};

use nodewatch_common::gpu_ioctl::BUCKETS;
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// First and last exported bucket of a [`Log2Histogram`]: `le` = 2^10 ns (about 1 µs) up to
/// 2^36 ns (about 69 s). Shorter calls count in the first, longer ones only in `+Inf`.
pub const LOG2_FIRST: usize = 10;
pub const LOG2_LAST: usize = 36;

/// Buckets exported, `+Inf` included.
const EXPORTED: usize = LOG2_LAST - LOG2_FIRST + 2;

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
    pub(crate) fn exported(&self) -> (f64, u64, [(f64, u64); EXPORTED]) {
        let t = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = [(0.0, 0); EXPORTED];
        out[0] = (bound(LOG2_FIRST), t.buckets[..=LOG2_FIRST].iter().sum());
        for b in LOG2_FIRST + 1..=LOG2_LAST {
            out[b - LOG2_FIRST] = (bound(b), t.buckets[b]);
        }
        out[EXPORTED - 1] = (f64::MAX, t.buckets[LOG2_LAST + 1..].iter().sum());
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

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;
    use crate::store::Family;

    #[test]
    fn log2_histogram_exports_the_kernels_buckets_in_seconds() {
        crate::store::label_set! {
            struct L { device }
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
}
