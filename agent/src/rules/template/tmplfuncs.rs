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
];

/// A value while a pipeline runs.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Str(String),
    Float(f64),
    Bool(bool),
    Map(&'a Labels),
    /// What an empty pipeline gives.
    Missing,
}

impl Val<'_> {
    /// The Go type the value has in Prometheus, for error messages.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "string",
            Val::Float(_) => "float64",
            Val::Bool(_) => "bool",
            Val::Map(_) => "map[string]string",
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
        Val::Bool(b) => b.to_string(),
        Val::Missing => "<no value>".into(),
        Val::Map(m) => {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", pairs.join(" "))
        }
    }
}

/// Prometheus's `convertToFloat`: numbers, and strings that parse as one.
fn float(v: &Val<'_>) -> Result<f64, String> {
    match v {
        Val::Float(f) => Ok(*f),
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
        Func::HumanizePercentage => {
            arity(f, &args, 1)?;
            s(format!("{}%", g4(float(&args[0])? * 100.0)))
        }
    }
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
