//! The supported functions and aggregations, written after Prometheus 2.42's `promql/functions.go`
//! and `engine.go` so that results are equal bit for bit (same extrapolation, same order of
//! floating-point operations).

use crate::store::hash::HashMap;

use promql_parser::{
    label::MatchOp,
    parser::{
        Call, Expr, LabelModifier,
        token::{T_AVG, T_COUNT, T_MAX, T_MIN, T_SUM},
    },
};

use super::value::{EvalError, Sample, Source, Value};
use crate::store::labels::{Labels, METRIC_NAME};

/// The functions nodewatch evaluates, with the argument types Prometheus gives them.
pub const SUPPORTED: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "idelta",
    "delta",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "count_over_time",
    "histogram_quantile",
    "absent",
];

/// Evaluates a function call.
pub fn call(ev: &dyn Source, c: &Call) -> Result<Vec<Sample>, EvalError> {
    let arg = |i: usize| -> Result<&Expr, EvalError> {
        c.args
            .args
            .get(i)
            .map(|b| b.as_ref())
            .ok_or_else(|| EvalError(format!("{}: missing argument {i}", c.func.name)))
    };
    match c.func.name {
        "rate" | "increase" | "delta" | "avg_over_time" | "max_over_time" | "min_over_time"
        | "count_over_time" | "irate" | "idelta" => {
            let Expr::MatrixSelector(ms) = arg(0)? else {
                return Err(EvalError(format!("{} needs a range selector", c.func.name)));
            };
            let range_ms = ms.range.as_millis() as i64;
            let mut out = Vec::new();
            for (labels, points) in ev.matrix(ms) {
                let value = match c.func.name {
                    "rate" => extrapolated_rate(&points, ev.ts(), range_ms, true, true),
                    "increase" => extrapolated_rate(&points, ev.ts(), range_ms, true, false),
                    "delta" => extrapolated_rate(&points, ev.ts(), range_ms, false, false),
                    "irate" => instant_value(&points, true),
                    "idelta" => instant_value(&points, false),
                    "avg_over_time" => Some(avg_over_time(&points)),
                    "max_over_time" => Some(fold_over_time(&points, |m, v| v > m)),
                    "min_over_time" => Some(fold_over_time(&points, |m, v| v < m)),
                    _ => Some(points.len() as f64),
                };
                if let Some(value) = value {
                    out.push(Sample {
                        labels: labels.without_name(),
                        value,
                    });
                }
            }
            Ok(out)
        }
        "histogram_quantile" => {
            let Value::Scalar(q) = ev.eval(arg(0)?)? else {
                return Err(EvalError(
                    "histogram_quantile: the quantile must be a scalar".into(),
                ));
            };
            let Value::Vector(v) = ev.eval(arg(1)?)? else {
                return Err(EvalError(
                    "histogram_quantile: the buckets must be a vector".into(),
                ));
            };
            Ok(histogram_quantile(q, v))
        }
        "absent" => {
            let e = arg(0)?;
            let Value::Vector(v) = ev.eval(e)? else {
                return Err(EvalError("absent: expected a vector".into()));
            };
            if !v.is_empty() {
                return Ok(Vec::new());
            }
            Ok(vec![Sample {
                labels: absent_labels(e),
                value: 1.0,
            }])
        }
        other => Err(EvalError(format!("unsupported function {other}"))),
    }
}

/// `rate`, `increase` and `delta`: Prometheus's `extrapolatedRate`. None with fewer than two
/// samples.
pub fn extrapolated_rate(
    points: &[(i64, f64)],
    ts: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let range_start = ts - range_ms;
    let range_end = ts;
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = (first_t - range_start) as f64 / 1000.0;
    let duration_to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average_between = sampled_interval / (points.len() - 1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // A counter cannot go below zero: extrapolate no further back than its zero point.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Prometheus 2.42's `instantValue`: the last two points only, per second for `irate` (where
/// a drop is a counter reset), as the plain difference for `idelta`.
fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    let [.., (prev_t, prev_v), (last_t, last_v)] = *points else {
        return None;
    };
    let mut value = if is_rate && last_v < prev_v {
        last_v
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        value /= interval as f64 / 1000.0;
    }
    Some(value)
}

/// Prometheus 2.42's running mean, Kahan-compensated, with its care for infinities.
fn avg_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut mean, mut c, mut count) = (0.0_f64, 0.0_f64, 0.0_f64);
    for &(_, v) in points {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_sum_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// One step of Kahan-Neumaier summation: the new sum and compensation.
fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// `max_over_time`/`min_over_time`: `better(current, v)` replaces; a NaN is replaced by anything.
fn fold_over_time(points: &[(i64, f64)], better: fn(f64, f64) -> bool) -> f64 {
    let mut m = points[0].1;
    for &(_, v) in points {
        if better(m, v) || m.is_nan() {
            m = v;
        }
    }
    m
}

/// Labels of `absent(...)`'s result: the selector's equality matchers, except the name and any
/// label matched more than once or otherwise.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut labels = Labels::new();
    let mut empty = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && labels.get(&m.name).is_none() {
            labels.set(m.name.clone(), m.value.clone());
        } else {
            empty.push(m.name.clone());
        }
    }
    labels.drop_all(&empty);
    labels
}

/// `histogram_quantile` over classic buckets (`le` labels), Prometheus's `bucketQuantile`.
pub fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
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

/// Aggregates `v` with `sum`, `avg`, `min`, `max` or `count`, grouped by the modifier.
pub fn aggregate(op: u16, modifier: Option<&LabelModifier>, v: Vec<Sample>) -> Vec<Sample> {
    struct Group {
        labels: Labels,
        value: f64,
        mean: f64,
        count: f64,
    }
    let mut index: HashMap<Vec<(String, String)>, usize> = HashMap::default();
    let mut groups: Vec<Group> = Vec::new();
    for s in v {
        let (key, labels) = match modifier {
            Some(LabelModifier::Include(l)) => {
                let key = s.labels.signature(true, &l.labels);
                let mut out = s.labels.clone();
                out.keep(&l.labels);
                (key, out)
            }
            Some(LabelModifier::Exclude(l)) => {
                let key = s.labels.signature(false, &l.labels);
                let mut out = s.labels.without_name();
                out.drop_all(&l.labels);
                (key, out)
            }
            None => (Vec::new(), Labels::new()),
        };
        let Some(&i) = index.get(&key) else {
            index.insert(key, groups.len());
            groups.push(Group {
                labels,
                value: s.value,
                mean: s.value,
                count: 1.0,
            });
            continue;
        };
        let g = &mut groups[i];
        match op {
            T_SUM => g.value += s.value,
            T_AVG => {
                g.count += 1.0;
                if g.mean.is_infinite() {
                    if s.value.is_infinite() && (g.mean > 0.0) == (s.value > 0.0) {
                        continue;
                    }
                    if !s.value.is_infinite() && !s.value.is_nan() {
                        continue;
                    }
                }
                g.mean += s.value / g.count - g.mean / g.count;
            }
            T_MAX if g.value < s.value || g.value.is_nan() => g.value = s.value,
            T_MIN if g.value > s.value || g.value.is_nan() => g.value = s.value,
            T_COUNT => g.count += 1.0,
            _ => {}
        }
    }
    groups
        .into_iter()
        .map(|g| Sample {
            labels: g.labels,
            value: match op {
                T_AVG => g.mean,
                T_COUNT => g.count,
                _ => g.value,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // 0, 60, 120 at 0s, 60s, 120s; rate over [5m] at 120s: the zero point limits
        // extrapolation to the start, and the end is reached exactly.
        let pts = [(0, 0.0), (60_000, 60.0), (120_000, 120.0)];
        assert_eq!(
            extrapolated_rate(&pts, 120_000, 300_000, true, false),
            Some(120.0)
        );
        assert_eq!(
            extrapolated_rate(&pts, 120_000, 300_000, true, true),
            Some(0.4)
        );
        // A counter reset adds the value before it.
        let pts = [(0, 5.0), (10_000, 8.0), (20_000, 2.0)];
        assert_eq!(
            extrapolated_rate(&pts, 20_000, 20_000, true, false),
            Some(5.0 * 1.0)
        );
        assert_eq!(
            extrapolated_rate(&pts[..1], 20_000, 20_000, true, false),
            None
        );
    }

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
