//! The functions templates may call, as Prometheus's template package defines them.

use super::gofmt::{self, Arg};
use crate::store::labels::Labels;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Func {
    Humanize,
    Humanize1024,
    HumanizeDuration,
    HumanizePercentage,
    Printf,
    ToUpper,
    ToLower,
    Title,
    Index,
    HumanizeTimestamp,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Query,
    First,
    Value,
    Label,
}

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("humanize", Func::Humanize),
    ("humanize1024", Func::Humanize1024),
    ("humanizeDuration", Func::HumanizeDuration),
    ("humanizePercentage", Func::HumanizePercentage),
    ("printf", Func::Printf),
    ("toUpper", Func::ToUpper),
    ("toLower", Func::ToLower),
    ("title", Func::Title),
    ("index", Func::Index),
    ("humanizeTimestamp", Func::HumanizeTimestamp),
    ("eq", Func::Eq),
    ("ne", Func::Ne),
    ("lt", Func::Lt),
    ("le", Func::Le),
    ("gt", Func::Gt),
    ("ge", Func::Ge),
    ("query", Func::Query),
    ("first", Func::First),
    ("value", Func::Value),
    ("label", Func::Label),
];

/// A value while a pipeline runs.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Str(String),
    Float(f64),
    Int(i64),
    Bool(bool),
    Map(&'a Labels),
    /// What `query` gives: labels and value of each sample.
    Samples(Vec<(Labels, f64)>),
    /// One of them.
    Sample(Labels, f64),
    /// What an empty pipeline gives.
    Missing,
}

impl Val<'_> {
    /// The Go type the value has in Prometheus, for error messages.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "string",
            Val::Float(_) => "float64",
            Val::Int(_) => "int",
            Val::Bool(_) => "bool",
            Val::Map(_) => "map[string]string",
            Val::Samples(_) => "template.queryResult",
            Val::Sample(..) => "*template.sample",
            Val::Missing => "<nil>",
        }
    }
}

/// A missing label reads as the empty string, as in Prometheus.
pub(super) fn lookup<'a>(m: &Labels, k: &str) -> Val<'a> {
    Val::Str(m.get(k).unwrap_or_default().to_string())
}

pub(super) fn print(v: &Val<'_>) -> String {
    match v {
        Val::Str(s) => s.clone(),
        Val::Float(f) => gofmt::format_g(*f, None),
        Val::Int(i) => i.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Missing => "<no value>".into(),
        Val::Samples(v) => format!(
            "[{}]",
            v.iter()
                .map(|(l, v)| sample_text(l, *v))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Val::Sample(l, v) => sample_text(l, *v),
        Val::Map(m) => {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", pairs.join(" "))
        }
    }
}

/// Go's `%v` of a `*template.sample`, as far as it matters: its labels and value.
fn sample_text(l: &Labels, v: f64) -> String {
    let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("&{{map[{}] {}}}", pairs.join(" "), gofmt::format_g(v, None))
}

/// Prometheus's `convertToFloat`: numbers, and strings that parse as one.
fn float(v: &Val<'_>) -> Result<f64, String> {
    match v {
        Val::Float(f) => Ok(*f),
        Val::Int(i) => Ok(*i as f64),
        Val::Str(s) => s
            .parse()
            .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")),
        _ => Err("can't convert to float".into()),
    }
}

fn arity(f: Func, args: &[Val<'_>], n: usize) -> Result<(), String> {
    if args.len() != n {
        let name = FUNCS.iter().find(|(_, g)| *g == f).map_or("?", |(n, _)| n);
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

/// Calls `f` with `args` (a piped value comes last).
pub(super) fn call<'a>(f: Func, args: Vec<Val<'a>>) -> Result<Val<'a>, String> {
    let s = |v: String| Ok(Val::Str(v));
    match f {
        Func::Printf => {
            let Some(Val::Str(format)) = args.first() else {
                return Err("printf needs a format string".into());
            };
            let rest: Vec<Arg> = args[1..]
                .iter()
                .map(|a| match a {
                    Val::Float(v) => Arg::Float(*v),
                    Val::Int(i) => Arg::Float(*i as f64),
                    other => Arg::Str(print(other)),
                })
                .collect();
            s(gofmt::sprintf(format, &rest))
        }
        Func::Index => {
            arity(f, &args, 2)?;
            match (&args[0], &args[1]) {
                (Val::Map(m), Val::Str(k)) => Ok(lookup(m, k)),
                _ => Err("index of non-map or with a non-string key".into()),
            }
        }
        Func::ToUpper | Func::ToLower | Func::Title => {
            arity(f, &args, 1)?;
            let text = print(&args[0]);
            s(match f {
                Func::ToUpper => text.to_uppercase(),
                Func::ToLower => text.to_lowercase(),
                _ => title(&text),
            })
        }
        Func::Humanize => {
            arity(f, &args, 1)?;
            s(humanize(float(&args[0])?))
        }
        Func::Humanize1024 => {
            arity(f, &args, 1)?;
            s(humanize1024(float(&args[0])?))
        }
        Func::HumanizeDuration => {
            arity(f, &args, 1)?;
            s(humanize_duration(float(&args[0])?))
        }
        Func::HumanizeTimestamp => {
            arity(f, &args, 1)?;
            humanize_timestamp(float(&args[0])?).map(Val::Str)
        }
        Func::Eq | Func::Ne => {
            let err = |e: String| format!("error calling {}: {e}", name(f));
            if args.len() < 2 {
                return Err(err("missing argument for comparison".into()));
            }
            if f == Func::Ne {
                arity(f, &args, 2)?;
            }
            let mut any = false;
            for b in &args[1..] {
                any |= compare(&args[0], b).map_err(err)?.0;
            }
            Ok(Val::Bool(any == (f == Func::Eq)))
        }
        Func::Lt | Func::Le | Func::Gt | Func::Ge => {
            arity(f, &args, 2)?;
            let err = |e: String| format!("error calling {}: {e}", name(f));
            let (eq, lt) = compare(&args[0], &args[1]).map_err(err)?;
            let lt = lt.ok_or_else(|| err("invalid type for comparison".into()))?;
            Ok(Val::Bool(match f {
                Func::Lt => lt,
                Func::Le => lt || eq,
                Func::Gt => !(lt || eq),
                _ => !lt,
            }))
        }
        Func::Query => Err("query needs the rule's evaluator".into()),
        Func::First => {
            arity(f, &args, 1)?;
            match &args[0] {
                Val::Samples(v) => v
                    .first()
                    .map(|(l, x)| Val::Sample(l.clone(), *x))
                    .ok_or_else(|| {
                        "error calling first: first() called on vector with no elements".into()
                    }),
                other => Err(format!(
                    "error calling first: first() of a {}",
                    other.type_name()
                )),
            }
        }
        Func::Value => {
            arity(f, &args, 1)?;
            match &args[0] {
                Val::Sample(_, v) => Ok(Val::Float(*v)),
                other => Err(format!(
                    "error calling value: value() of a {}",
                    other.type_name()
                )),
            }
        }
        Func::Label => {
            arity(f, &args, 2)?;
            match (&args[0], &args[1]) {
                (Val::Str(k), Val::Sample(l, _)) => Ok(Val::Str(l.get(k).unwrap_or("").into())),
                _ => Err("error calling label: label(name, sample)".into()),
            }
        }
        Func::HumanizePercentage => {
            arity(f, &args, 1)?;
            s(format!("{}%", g4(float(&args[0])? * 100.0)))
        }
    }
}

fn name(f: Func) -> &'static str {
    FUNCS.iter().find(|(_, g)| *g == f).map_or("?", |(n, _)| n)
}

/// Go's template comparison of two basic values: whether they are equal, and whether the
/// first is less (None for booleans, which have no order). Values of different kinds are an
/// error (an integer constant and a float are different kinds, as in Go); NaN is neither
/// equal nor less, so `gt` and `ge` hold for it, as Go's `!le` and `!lt` do.
fn compare(a: &Val<'_>, b: &Val<'_>) -> Result<(bool, Option<bool>), String> {
    Ok(match (a, b) {
        (Val::Float(x), Val::Float(y)) => (x == y, Some(x < y)),
        (Val::Int(x), Val::Int(y)) => (x == y, Some(x < y)),
        (Val::Str(x), Val::Str(y)) => (x == y, Some(x < y)),
        (Val::Bool(x), Val::Bool(y)) => (x == y, None),
        (Val::Missing | Val::Map(_), _) | (_, Val::Missing | Val::Map(_)) => {
            return Err("invalid type for comparison".into());
        }
        _ => return Err("incompatible types for comparison".into()),
    })
}

/// Prometheus's `humanizeTimestamp`: the time in UTC as Go prints a `time.Time`, to the
/// millisecond; NaN and infinities as numbers.
fn humanize_timestamp(v: f64) -> Result<String, String> {
    if !v.is_finite() {
        return Ok(g4(v));
    }
    let ns = v * 1e9;
    if ns > i64::MAX as f64 || ns < i64::MIN as f64 {
        return Err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            gofmt::format_g(v, None)
        ));
    }
    let ms = (ns as i64) / 1_000_000;
    let d = crate::rules::promql::dates::civil(ms.div_euclid(1000));
    let frac = ms.rem_euclid(1000);
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{frac:03}").trim_end_matches('0').to_string()
    };
    Ok(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        d.year, d.month, d.day, d.hour, d.minute, d.second
    ))
}

fn g4(v: f64) -> String {
    gofmt::format_g(v, Some(4))
}

/// Go's `strings.Title`: upper-cases the first letter of each word.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        if !prev_letter && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_letter = c.is_alphanumeric() || c == '_' || c == '\'';
    }
    out
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    if v.abs() >= 1.0 {
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", g4(v));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}", g4(v))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", g4(v))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let d = v as i64;
        let (seconds, minutes, hours, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", g4(v))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", g4(v))
}
