//! Every PromQL function nodewatch evaluates, declared once in [`FUNCTIONS`]: its name, its
//! argument kinds (as Prometheus types them) and its evaluation, after Prometheus 2.42's
//! `promql/functions.go`. The load-time check ([`super::subset`]) and the evaluator both read
//! this table; a function missing from it is refused at load, naming it.

use promql_parser::{
    label::MatchOp,
    parser::{Expr, value::ValueType},
};

use super::{
    dates::{Civil, civil, days_in_month},
    histogram::histogram_quantile_of,
    over_time::{self, Points},
    value::{EvalError, Range, Sample, Source, Value},
};
use crate::store::labels::{Labels, METRIC_NAME, is_label_name};

/// A function evaluated from its evaluator and its unevaluated arguments.
pub type Custom = fn(&dyn Source, &[Box<Expr>]) -> Result<Value, EvalError>;

/// How a function is evaluated.
#[derive(Clone, Copy)]
pub enum Eval {
    /// Over the samples of each series of its range argument (the first); the metric name is
    /// dropped unless `keep_name`.
    OverTime {
        f: fn(&Points, &Range) -> Option<f64>,
        keep_name: bool,
    },
    /// Each sample's value mapped; the metric name is dropped.
    Map(fn(f64) -> f64),
    /// Anything else: the evaluator and the arguments.
    Other(Custom),
}

/// One function: its name, the kinds of its arguments (the last ones optional from
/// `optional` on), and how it is evaluated.
pub struct Function {
    pub name: &'static str,
    pub args: &'static [ValueType],
    /// Index of the first optional argument (`args.len()` when none is).
    pub optional: usize,
    pub eval: Eval,
}

use ValueType::{Matrix as M, Scalar as S, String as Str, Vector as V};

const fn over(name: &'static str, f: fn(&Points, &Range) -> Option<f64>) -> Function {
    Function {
        name,
        args: &[M],
        optional: 1,
        eval: Eval::OverTime {
            f,
            keep_name: false,
        },
    }
}

const fn map(name: &'static str, f: fn(f64) -> f64) -> Function {
    Function {
        name,
        args: &[V],
        optional: 1,
        eval: Eval::Map(f),
    }
}

const fn other(
    name: &'static str,
    args: &'static [ValueType],
    optional: usize,
    f: Custom,
) -> Function {
    Function {
        name,
        args,
        optional,
        eval: Eval::Other(f),
    }
}

/// Every function nodewatch evaluates.
pub const FUNCTIONS: &[Function] = &[
    over("rate", over_time::rate),
    over("increase", over_time::increase),
    over("delta", over_time::delta),
    over("irate", over_time::irate),
    over("idelta", over_time::idelta),
    over("avg_over_time", over_time::avg),
    over("max_over_time", over_time::max),
    over("min_over_time", over_time::min),
    over("sum_over_time", over_time::sum),
    over("count_over_time", over_time::count),
    over("stddev_over_time", over_time::stddev),
    over("stdvar_over_time", over_time::stdvar),
    over("present_over_time", over_time::present),
    over("changes", over_time::changes),
    over("resets", over_time::resets),
    over("deriv", over_time::deriv),
    Function {
        name: "last_over_time",
        args: &[M],
        optional: 1,
        eval: Eval::OverTime {
            f: over_time::last,
            keep_name: true,
        },
    },
    other("quantile_over_time", &[S, M], 2, quantile_over_time),
    other("predict_linear", &[M, S], 2, predict_linear),
    other("absent_over_time", &[M], 1, absent_over_time),
    other("histogram_quantile", &[S, V], 2, histogram_quantile),
    other("absent", &[V], 1, absent),
    other("time", &[], 0, |ev, _| {
        Ok(Value::Scalar(ev.ts() as f64 / 1000.0))
    }),
    other("vector", &[S], 1, |ev, a| {
        Ok(Value::Vector(vec![Sample {
            labels: Labels::new(),
            value: scalar(ev, &a[0])?,
        }]))
    }),
    other("scalar", &[V], 1, |ev, a| {
        let v = vector(ev, &a[0])?;
        Ok(Value::Scalar(match v.as_slice() {
            [one] => one.value,
            _ => f64::NAN,
        }))
    }),
    other("timestamp", &[V], 1, |ev, a| {
        Ok(Value::Vector(
            ev.timed(&a[0])?
                .into_iter()
                .map(|(s, t)| Sample {
                    labels: s.labels.without_name(),
                    value: t as f64 / 1000.0,
                })
                .collect(),
        ))
    }),
    other("pi", &[], 0, |_, _| Ok(Value::Scalar(std::f64::consts::PI))),
    map("abs", f64::abs),
    map("ceil", f64::ceil),
    map("floor", f64::floor),
    map("exp", f64::exp),
    map("sqrt", f64::sqrt),
    map("ln", f64::ln),
    map("log2", f64::log2),
    map("log10", f64::log10),
    map("sgn", |v| {
        if v < 0.0 {
            -1.0
        } else if v > 0.0 {
            1.0
        } else {
            v
        }
    }),
    map("deg", f64::to_degrees),
    map("rad", f64::to_radians),
    map("sin", f64::sin),
    map("cos", f64::cos),
    map("tan", f64::tan),
    map("asin", f64::asin),
    map("acos", f64::acos),
    map("atan", f64::atan),
    map("sinh", f64::sinh),
    map("cosh", f64::cosh),
    map("tanh", f64::tanh),
    map("asinh", f64::asinh),
    map("acosh", f64::acosh),
    map("atanh", f64::atanh),
    other("round", &[V, S], 1, round),
    other("clamp", &[V, S, S], 3, clamp),
    other("clamp_min", &[V, S], 2, |ev, a| {
        let m = scalar(ev, &a[1])?;
        map_vector(ev, &a[0], |v| go_max(m, v))
    }),
    other("clamp_max", &[V, S], 2, |ev, a| {
        let m = scalar(ev, &a[1])?;
        map_vector(ev, &a[0], |v| go_min(m, v))
    }),
    other("label_replace", &[V, Str, Str, Str, Str], 5, label_replace),
    other("label_join", &[V, Str, Str, Str], 3, label_join),
    other("sort", &[V], 1, |ev, a| sorted(ev, a, false)),
    other("sort_desc", &[V], 1, |ev, a| sorted(ev, a, true)),
    other("day_of_month", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(d.day))
    }),
    other("day_of_week", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(d.weekday))
    }),
    other("day_of_year", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(d.yday))
    }),
    other("days_in_month", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(days_in_month(d.year, d.month)))
    }),
    other("hour", &[V], 0, |ev, a| date(ev, a, |d| f64::from(d.hour))),
    other("minute", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(d.minute))
    }),
    other("month", &[V], 0, |ev, a| {
        date(ev, a, |d| f64::from(d.month))
    }),
    other("year", &[V], 0, |ev, a| date(ev, a, |d| d.year as f64)),
];

/// The function called `name`, if nodewatch evaluates it.
pub fn lookup(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// Evaluates a function call.
pub fn call(ev: &dyn Source, name: &str, args: &[Box<Expr>]) -> Result<Value, EvalError> {
    let f = lookup(name).ok_or_else(|| EvalError(format!("unsupported function {name}")))?;
    match f.eval {
        Eval::OverTime { f, keep_name } => {
            let arg = args
                .first()
                .ok_or_else(|| EvalError(format!("{name}: missing argument")))?;
            let r = ev.range(arg)?;
            let mut out = Vec::new();
            for (labels, points) in &r.series {
                if let Some(value) = f(points, &r) {
                    out.push(Sample {
                        labels: if keep_name {
                            labels.clone()
                        } else {
                            labels.without_name()
                        },
                        value,
                    });
                }
            }
            Ok(Value::Vector(out))
        }
        Eval::Map(m) => map_vector(ev, &args[0], m),
        Eval::Other(o) => o(ev, args),
    }
}

/// A scalar argument's value.
fn scalar(ev: &dyn Source, e: &Expr) -> Result<f64, EvalError> {
    match ev.eval(e)? {
        Value::Scalar(v) => Ok(v),
        Value::Vector(_) => Err(EvalError(format!("expected a scalar: {e}"))),
    }
}

/// A vector argument's samples.
fn vector(ev: &dyn Source, e: &Expr) -> Result<Vec<Sample>, EvalError> {
    match ev.eval(e)? {
        Value::Vector(v) => Ok(v),
        Value::Scalar(_) => Err(EvalError(format!("expected a vector: {e}"))),
    }
}

/// A string argument (a literal, possibly in parentheses).
fn string(e: &Expr) -> Result<String, EvalError> {
    match e {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        Expr::Paren(p) => string(&p.expr),
        other => Err(EvalError(format!("expected a string: {other}"))),
    }
}

fn map_vector(ev: &dyn Source, e: &Expr, f: impl Fn(f64) -> f64) -> Result<Value, EvalError> {
    Ok(Value::Vector(
        vector(ev, e)?
            .into_iter()
            .map(|s| Sample {
                labels: s.labels.without_name(),
                value: f(s.value),
            })
            .collect(),
    ))
}

/// Go's `math.Max`: +Inf wins, then NaN, and +0 over -0.
pub fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { b } else { a }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: -Inf wins, then NaN, and -0 over +0.
pub fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

fn round(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let to_nearest = match a.get(1) {
        Some(e) => scalar(ev, e)?,
        None => 1.0,
    };
    // Prometheus inverts first: it gives fewer floating-point surprises.
    let inverse = 1.0 / to_nearest;
    map_vector(ev, &a[0], |v| (v * inverse + 0.5).floor() / inverse)
}

fn clamp(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let (min, max) = (scalar(ev, &a[1])?, scalar(ev, &a[2])?);
    if max < min {
        return Ok(Value::Vector(Vec::new()));
    }
    map_vector(ev, &a[0], |v| go_max(min, go_min(max, v)))
}

fn quantile_over_time(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let q = scalar(ev, &a[0])?;
    let r = ev.range(&a[1])?;
    Ok(Value::Vector(
        r.series
            .into_iter()
            .map(|(labels, points)| Sample {
                labels: labels.without_name(),
                value: over_time::quantile(q, points.iter().map(|p| p.1).collect()),
            })
            .collect(),
    ))
}

fn predict_linear(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let r = ev.range(&a[0])?;
    let t = scalar(ev, &a[1])?;
    Ok(Value::Vector(
        r.series
            .into_iter()
            .filter_map(|(labels, points)| {
                over_time::predict_linear(&points, ev.ts(), t).map(|value| Sample {
                    labels: labels.without_name(),
                    value,
                })
            })
            .collect(),
    ))
}

fn absent(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    if !vector(ev, &a[0])?.is_empty() {
        return Ok(Value::Vector(Vec::new()));
    }
    Ok(Value::Vector(vec![Sample {
        labels: absent_labels(&a[0]),
        value: 1.0,
    }]))
}

fn absent_over_time(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    if !ev.range(&a[0])?.series.is_empty() {
        return Ok(Value::Vector(Vec::new()));
    }
    Ok(Value::Vector(vec![Sample {
        labels: absent_labels(&a[0]),
        value: 1.0,
    }]))
}

fn histogram_quantile(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let q = scalar(ev, &a[0])?;
    Ok(Value::Vector(histogram_quantile_of(q, vector(ev, &a[1])?)))
}

fn sorted(ev: &dyn Source, a: &[Box<Expr>], desc: bool) -> Result<Value, EvalError> {
    let mut v = vector(ev, &a[0])?;
    // NaN last either way, as Prometheus sorts.
    v.sort_by(|x, y| match (x.value.is_nan(), y.value.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ if desc => y.value.total_cmp(&x.value),
        _ => x.value.total_cmp(&y.value),
    });
    Ok(Value::Vector(v))
}

fn label_replace(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let (dst, repl, src, re) = (
        string(&a[1])?,
        string(&a[2])?,
        string(&a[3])?,
        string(&a[4])?,
    );
    let regex = regex::Regex::new(&format!("^(?:{re})$")).map_err(|_| {
        EvalError(format!(
            "invalid regular expression in label_replace(): {re}"
        ))
    })?;
    if !is_label_name(&dst) {
        return Err(EvalError(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut out = Vec::new();
    for mut s in vector(ev, &a[0])? {
        let value = s.labels.get(&src).unwrap_or("").to_string();
        if let Some(caps) = regex.captures(&value) {
            let mut res = String::new();
            caps.expand(&repl, &mut res);
            s.labels.remove(&dst);
            s.labels.set(dst.clone(), res);
        }
        out.push(s);
    }
    Ok(Value::Vector(out))
}

fn label_join(ev: &dyn Source, a: &[Box<Expr>]) -> Result<Value, EvalError> {
    let (dst, sep) = (string(&a[1])?, string(&a[2])?);
    let srcs = a[3..]
        .iter()
        .map(|e| string(e))
        .collect::<Result<Vec<_>, _>>()?;
    if !is_label_name(&dst) {
        return Err(EvalError(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let mut out = Vec::new();
    for mut s in vector(ev, &a[0])? {
        let joined = srcs
            .iter()
            .map(|l| s.labels.get(l).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&sep);
        s.labels.remove(&dst);
        s.labels.set(dst.clone(), joined);
        out.push(s);
    }
    Ok(Value::Vector(out))
}

/// 2^63, where Go's float-to-int64 conversion stops being exact.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// The date functions: of each sample's value as seconds since the epoch (Go truncates it to
/// an integer), or of the evaluation time when called without an argument.
fn date(ev: &dyn Source, a: &[Box<Expr>], f: fn(&Civil) -> f64) -> Result<Value, EvalError> {
    let Some(arg) = a.first() else {
        return Ok(Value::Vector(vec![Sample {
            labels: Labels::new(),
            value: f(&civil(ev.ts().div_euclid(1000))),
        }]));
    };
    map_vector(ev, arg, |v| {
        // Go's int64 conversion of NaN and out-of-range values gives the minimum (amd64).
        let secs = if v.is_nan() || !(-TWO_63..TWO_63).contains(&v) {
            i64::MIN
        } else {
            v as i64
        };
        f(&civil(secs))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_agrees_with_the_parser_on_argument_kinds() {
        for f in FUNCTIONS {
            let arg = |k: &ValueType| match k {
                M => "x[1m]",
                S => "1",
                Str => "\"a\"",
                _ => "x",
            };
            for n in f.optional..=f.args.len() {
                let call = format!(
                    "{}({})",
                    f.name,
                    f.args[..n].iter().map(arg).collect::<Vec<_>>().join(", ")
                );
                assert!(
                    promql_parser::parser::parse(&call).is_ok(),
                    "{call} does not parse"
                );
            }
        }
        let mut names: Vec<_> = FUNCTIONS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FUNCTIONS.len(), "a function declared twice");
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert_eq!(go_max(f64::NAN, f64::INFINITY), f64::INFINITY);
        assert!(go_min(f64::NAN, 1.0).is_nan());
    }

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // 0, 60, 120 at 0s, 60s, 120s; rate over [5m] at 120s: the zero point limits
        // extrapolation to the start, and the end is reached exactly.
        let pts = [(0, 0.0), (60_000, 60.0), (120_000, 120.0)];
        assert_eq!(
            over_time::extrapolated_rate(&pts, 120_000, 300_000, true, false),
            Some(120.0)
        );
        assert_eq!(
            over_time::extrapolated_rate(&pts, 120_000, 300_000, true, true),
            Some(0.4)
        );
        // A counter reset adds the value before it.
        let pts = [(0, 5.0), (10_000, 8.0), (20_000, 2.0)];
        assert_eq!(
            over_time::extrapolated_rate(&pts, 20_000, 20_000, true, false),
            Some(5.0 * 1.0)
        );
        assert_eq!(
            over_time::extrapolated_rate(&pts[..1], 20_000, 20_000, true, false),
            None
        );
    }
}
