//! The functions of a range (`rate`, `*_over_time`, `changes`, `deriv`, ...), written after
//! Prometheus 2.42's `promql/functions.go` so that results are equal bit for bit (same
//! extrapolation, same order of floating-point operations). Each takes the samples of one
//! series in the window and the window; None leaves the series out of the result.

use super::value::Range;

/// The samples of one series in a window.
pub type Points = [(i64, f64)];

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

/// `rate`, `increase`, `delta` over a window.
pub fn rate(p: &Points, r: &Range) -> Option<f64> {
    extrapolated_rate(p, r.end, r.end - r.start, true, true)
}

/// `increase`.
pub fn increase(p: &Points, r: &Range) -> Option<f64> {
    extrapolated_rate(p, r.end, r.end - r.start, true, false)
}

/// `delta`.
pub fn delta(p: &Points, r: &Range) -> Option<f64> {
    extrapolated_rate(p, r.end, r.end - r.start, false, false)
}

/// `irate`.
pub fn irate(p: &Points, _: &Range) -> Option<f64> {
    instant_value(p, true)
}

/// `idelta`.
pub fn idelta(p: &Points, _: &Range) -> Option<f64> {
    instant_value(p, false)
}

/// `avg_over_time`.
pub fn avg(p: &Points, _: &Range) -> Option<f64> {
    Some(avg_over_time(p))
}

/// `max_over_time`.
pub fn max(p: &Points, _: &Range) -> Option<f64> {
    Some(fold_over_time(p, |m, v| v > m))
}

/// `min_over_time`.
pub fn min(p: &Points, _: &Range) -> Option<f64> {
    Some(fold_over_time(p, |m, v| v < m))
}

/// `count_over_time`.
pub fn count(p: &Points, _: &Range) -> Option<f64> {
    Some(p.len() as f64)
}

/// `sum_over_time`: Kahan-compensated.
pub fn sum(p: &Points, _: &Range) -> Option<f64> {
    let (mut sum, mut c) = (0.0, 0.0);
    for &(_, v) in p {
        (sum, c) = kahan_sum_inc(v, sum, c);
    }
    Some(if sum.is_infinite() { sum } else { sum + c })
}

/// `last_over_time`.
pub fn last(p: &Points, _: &Range) -> Option<f64> {
    p.last().map(|s| s.1)
}

/// `present_over_time`.
pub fn present(_: &Points, _: &Range) -> Option<f64> {
    Some(1.0)
}

/// `changes`: how often the value changed (NaN to NaN is no change).
pub fn changes(p: &Points, _: &Range) -> Option<f64> {
    let mut n = 0;
    for w in p.windows(2) {
        let (prev, cur) = (w[0].1, w[1].1);
        if cur != prev && !(cur.is_nan() && prev.is_nan()) {
            n += 1;
        }
    }
    Some(f64::from(n))
}

/// `resets`: how often the value dropped.
pub fn resets(p: &Points, _: &Range) -> Option<f64> {
    Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64)
}

/// `stdvar_over_time`: Welford's running variance, Kahan-compensated.
pub fn stdvar(p: &Points, _: &Range) -> Option<f64> {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in p {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    Some((aux + c_aux) / count)
}

/// `stddev_over_time`.
pub fn stddev(p: &Points, r: &Range) -> Option<f64> {
    stdvar(p, r).map(f64::sqrt)
}

/// `deriv`: the slope of the least-squares line, per second.
pub fn deriv(p: &Points, _: &Range) -> Option<f64> {
    (p.len() >= 2).then(|| linear_regression(p, p[0].0).0)
}

/// `predict_linear(v[range], t)`: the least-squares line's value `t` seconds after the
/// evaluation time.
pub fn predict_linear(p: &Points, ts: i64, t: f64) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (slope, intercept) = linear_regression(p, ts);
    Some(slope * t + intercept)
}

/// Prometheus's `linearRegression`, with the intercept at `intercept_time`.
fn linear_regression(p: &Points, intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = p[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in p.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    (slope, sum_y / n - slope * sum_x / n)
}

/// Prometheus's `quantile` over plain values: NaN for none, -Inf/+Inf below 0/above 1,
/// otherwise interpolated between the two nearest ranks.
pub fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go's sort.Float64s puts NaN first.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).expect("not NaN"),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}
