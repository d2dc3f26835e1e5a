//! `histogram_quantile` over classic buckets (`le` labels), after Prometheus 2.42's
//! `promql/quantile.go`.

use super::value::Sample;
use crate::store::{
    hash::HashMap,
    labels::{Labels, METRIC_NAME},
};

/// `histogram_quantile` over classic buckets (`le` labels), Prometheus's `bucketQuantile`.
pub fn histogram_quantile_of(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: HashMap<Labels, (Labels, Vec<(f64, f64)>)> = HashMap::default();
    let mut order = Vec::new();
    for s in v {
        let Some(upper) = s.labels.get("le").and_then(parse_go_float) else {
            continue;
        };
        let mut key = s.labels.clone();
        key.remove("le");
        let entry = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            let mut out = key.clone();
            out.remove(METRIC_NAME);
            (out, Vec::new())
        });
        entry.1.push((upper, s.value));
    }
    order
        .into_iter()
        .filter_map(|k| groups.remove(&k))
        .map(|(labels, buckets)| Sample {
            labels,
            value: bucket_quantile(q, buckets),
        })
        .collect()
}

/// Go's `strconv.ParseFloat` for bucket bounds: also `+Inf`, `Inf`, `NaN`.
fn parse_go_float(s: &str) -> Option<f64> {
    s.parse().ok()
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce buckets with the same bound, then force the counts to be monotonic.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (ub, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = merged.len() - 1;
    let b = merged[..n].partition_point(|b| b.1 < rank);
    if b == n {
        return merged[n - 1].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let bucket_end = merged[b].0;
    let mut count = merged[b].1;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantile_edges() {
        let b = |v: &[(f64, f64)]| v.to_vec();
        assert!(
            bucket_quantile(0.5, b(&[(1.0, 1.0)])).is_nan(),
            "no +Inf bucket"
        );
        assert_eq!(bucket_quantile(2.0, b(&[])), f64::INFINITY);
        let h = b(&[(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)]);
        assert_eq!(bucket_quantile(0.5, h.clone()), 0.1);
        assert!((bucket_quantile(0.75, h.clone()) - 0.55).abs() < 1e-12);
        assert_eq!(bucket_quantile(1.0, h), 1.0);
        let over = b(&[(0.1, 0.0), (f64::INFINITY, 5.0)]);
        assert_eq!(bucket_quantile(0.9, over), 0.1, "rank in +Inf bucket");
    }
}
