//! Aggregation operators, after Prometheus 2.42's `engine.go` `aggregation`: groups in the
//! order their first sample comes, `topk`/`bottomk` with Go's heap (so ties keep the same
//! series), the running mean and variance Prometheus computes.

use promql_parser::parser::{
    LabelModifier,
    token::{
        T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
        T_STDVAR, T_SUM, T_TOPK,
    },
};

use super::{
    over_time::quantile,
    value::{EvalError, Sample},
};
use crate::store::{hash::HashMap, labels::Labels};

/// The parameter of an aggregation, evaluated.
pub enum Param {
    None,
    Scalar(f64),
    Label(String),
}

struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: f64,
    heap: Vec<Sample>,
    values: Vec<f64>,
}

/// Aggregates `v` with the operator `op`, grouped by the modifier.
pub fn aggregate(
    op: u16,
    modifier: Option<&LabelModifier>,
    param: Param,
    mut v: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let mut k = 0usize;
    if matches!(op, T_TOPK | T_BOTTOMK) {
        let Param::Scalar(f) = param else {
            return Err(EvalError("topk/bottomk need a number".into()));
        };
        if f.is_nan() || f.abs() >= 9.2e18 {
            return Err(EvalError(format!("Scalar value {f} overflows int64")));
        }
        if (f as i64) < 1 {
            return Ok(Vec::new());
        }
        k = f as usize;
    }
    let q = match param {
        Param::Scalar(f) => f,
        _ => f64::NAN,
    };
    let mut extra: Vec<String> = Vec::new();
    if op == T_COUNT_VALUES {
        let Param::Label(l) = &param else {
            return Err(EvalError("count_values needs a label name".into()));
        };
        if !crate::store::labels::is_label_name(l) {
            return Err(EvalError(format!("invalid label name {l:?}")));
        }
        for s in &mut v {
            s.labels.set(l.clone(), go_float(s.value));
        }
        extra.push(l.clone());
    }
    let mut index: HashMap<Vec<(String, String)>, usize> = HashMap::default();
    let mut groups: Vec<Group> = Vec::new();
    for s in v {
        let (key, labels) = match modifier {
            Some(LabelModifier::Include(l)) => {
                let names: Vec<String> = l.labels.iter().chain(&extra).cloned().collect();
                let key = s.labels.signature(true, &names);
                let mut out = s.labels.clone();
                out.keep(&names);
                (key, out)
            }
            Some(LabelModifier::Exclude(l)) => {
                let key = s.labels.signature(false, &l.labels);
                let mut out = s.labels.without_name();
                out.drop_all(&l.labels);
                (key, out)
            }
            None => {
                let key = s.labels.signature(true, &extra);
                let mut out = s.labels.clone();
                out.keep(&extra);
                (key, out)
            }
        };
        let Some(&i) = index.get(&key) else {
            index.insert(key, groups.len());
            groups.push(Group {
                labels,
                value: match op {
                    T_STDDEV | T_STDVAR => 0.0,
                    T_GROUP => 1.0,
                    _ => s.value,
                },
                mean: s.value,
                count: 1.0,
                values: vec![s.value],
                heap: vec![s],
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
            T_COUNT | T_COUNT_VALUES => g.count += 1.0,
            T_STDDEV | T_STDVAR => {
                g.count += 1.0;
                let delta = s.value - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (s.value - g.mean);
            }
            T_TOPK | T_BOTTOMK => {
                let less = if op == T_TOPK {
                    topk_less
                } else {
                    bottomk_less
                };
                if g.heap.len() < k {
                    g.heap.push(s);
                    let n = g.heap.len() - 1;
                    up(&mut g.heap, n, less);
                } else if less(&g.heap[0], &s) {
                    g.heap[0] = s;
                    if k > 1 {
                        let n = g.heap.len();
                        if !down(&mut g.heap, 0, n, less) {
                            up(&mut g.heap, 0, less);
                        }
                    }
                }
            }
            T_QUANTILE => g.values.push(s.value),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        let value = match op {
            T_AVG => g.mean,
            T_COUNT | T_COUNT_VALUES => g.count,
            T_STDVAR => g.value / g.count,
            T_STDDEV => (g.value / g.count).sqrt(),
            T_QUANTILE => quantile(q, g.values),
            T_TOPK | T_BOTTOMK => {
                let less = if op == T_TOPK {
                    topk_less
                } else {
                    bottomk_less
                };
                g.heap.sort_by(|a, b| {
                    if less(b, a) {
                        std::cmp::Ordering::Less
                    } else if less(a, b) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                });
                out.extend(g.heap);
                continue;
            }
            _ => g.value,
        };
        out.push(Sample {
            labels: g.labels,
            value,
        });
    }
    Ok(out)
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The heap orders of `topk` (smallest on top) and `bottomk` (largest on top): whether `a`
/// sits above `b`, NaN above everything. Also: whether `b` replaces the top `a`.
fn topk_less(a: &Sample, b: &Sample) -> bool {
    a.value.is_nan() && !b.value.is_nan() || a.value < b.value
}

fn bottomk_less(a: &Sample, b: &Sample) -> bool {
    a.value.is_nan() && !b.value.is_nan() || a.value > b.value
}

/// Go's `container/heap` `up`, with Prometheus's `Less` (NaN is always less).
fn up(h: &mut [Sample], mut j: usize, less: fn(&Sample, &Sample) -> bool) {
    while j > 0 {
        let i = (j - 1) / 2;
        if !heap_less(h, j, i, less) {
            break;
        }
        h.swap(i, j);
        j = i;
    }
}

/// Go's `container/heap` `down`: whether the element moved.
fn down(h: &mut [Sample], i0: usize, n: usize, less: fn(&Sample, &Sample) -> bool) -> bool {
    let mut i = i0;
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        if j1 + 1 < n && heap_less(h, j1 + 1, j1, less) {
            j = j1 + 1;
        }
        if !heap_less(h, j, i, less) {
            break;
        }
        h.swap(i, j);
        i = j;
    }
    i > i0
}

/// `vectorByValueHeap.Less(i, j)`: NaN at `i` is less; otherwise the order's comparison.
fn heap_less(h: &[Sample], i: usize, j: usize, less: fn(&Sample, &Sample) -> bool) -> bool {
    if h[i].value.is_nan() {
        return true;
    }
    less(&h[i], &h[j]) && !h[i].value.is_nan()
}
