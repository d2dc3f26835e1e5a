//! The input notation of rule unit tests: series as `metric{label="value"}`, values in
//! promtool's expanding notation.

use crate::store::{
    history,
    labels::{Labels, METRIC_NAME},
};

/// A series written as a selector with equality matchers only: `x{a="b"}`, `{__name__="x"}`,
/// or `{}`/empty for no labels.
pub fn parse_metric(text: &str) -> Result<Labels, String> {
    let t = text.trim();
    if t.is_empty() || t == "{}" {
        return Ok(Labels::new());
    }
    let e = promql_parser::parser::parse(t).map_err(|e| format!("parse error: {e}"))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = e else {
        return Err(format!("{t:?} is not a series"));
    };
    let mut labels = Labels::new();
    if let Some(n) = vs.name {
        labels.set(METRIC_NAME.into(), n);
    }
    for m in vs.matchers.matchers {
        if !matches!(m.op, promql_parser::label::MatchOp::Equal) {
            return Err(format!("{t:?}: only `=` matchers describe a series"));
        }
        labels.set(m.name, m.value);
    }
    Ok(labels)
}

/// Most values one series may expand to: a test file cannot ask for more memory than this.
pub const MAX_VALUES: usize = 1_000_000;

/// Expanding notation: `1 2 3`, `0+10x5`, `5-1x3`, `7x2`, `_`, `_x3`, `stale`. None is a
/// missing sample.
pub fn parse_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        let bad = || format!("invalid series value {item:?}");
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| bad())?;
            room(out.len(), n as u64)?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if item == "stale" {
            out.push(Some(history::stale()));
            continue;
        }
        let (start, rest) = take_number(item).ok_or_else(bad)?;
        if rest.is_empty() {
            out.push(Some(start));
            continue;
        }
        let (step, times) = match rest.strip_prefix('x') {
            Some(n) => (0.0, n),
            None => {
                let (step, rest) = take_number(rest)
                    .filter(|_| rest.starts_with(['+', '-']))
                    .ok_or_else(bad)?;
                (step, rest.strip_prefix('x').ok_or_else(bad)?)
            }
        };
        let times: u64 = times.parse().map_err(|_| bad())?;
        room(out.len(), times.saturating_add(1))?;
        let mut v = start;
        for _ in 0..=times {
            out.push(Some(v));
            v += step;
        }
    }
    room(out.len(), 0)?;
    Ok(out)
}

/// Whether `more` values fit after `have`.
fn room(have: usize, more: u64) -> Result<(), String> {
    if (have as u64).saturating_add(more) > MAX_VALUES as u64 {
        return Err(format!("a series expands to more than {MAX_VALUES} values"));
    }
    Ok(())
}

/// A leading number (sign, digits, fraction, exponent, or Inf/NaN) and what follows it.
fn take_number(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first().is_some_and(|c| *c == b'+' || *c == b'-'));
    let lower = s[i..].to_ascii_lowercase();
    for word in ["inf", "nan"] {
        if lower.starts_with(word) {
            let end = i + word.len();
            return Some((s[..end].parse().ok()?, &s[end..]));
        }
    }
    let digits_from = i;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i == digits_from {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let exp_digits = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_digits {
            i = j;
        }
    }
    Some((s[..i].parse().ok()?, &s[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expanding_notation() {
        let v = parse_values("1 _ 0+10x2 5-1x1 7x1 _x2 stale 1e-3 -2+0.5x1").unwrap();
        let f: Vec<String> = v
            .iter()
            .map(|x| {
                x.map_or("_".into(), |v| {
                    if history::is_stale(v) {
                        "S".into()
                    } else {
                        v.to_string()
                    }
                })
            })
            .collect();
        assert_eq!(
            f,
            [
                "1", "_", "0", "10", "20", "5", "4", "7", "7", "_", "_", "S", "0.001", "-2", "-1.5"
            ]
        );
        assert!(parse_values("1+x3").is_err());
        // Expansions are bounded before anything is allocated.
        for huge in [
            "1x99999999999",
            "_x18446744073709551615",
            "0+1x18446744073709551615",
        ] {
            let e = parse_values(huge).unwrap_err();
            assert!(e.contains("more than 1000000 values"), "{huge}: {e}");
        }
        assert_eq!(parse_values("1x999999").unwrap().len(), MAX_VALUES);
        assert!(parse_values("1x999999 2").is_err());
        assert!(parse_values("abc").is_err());
    }

    #[test]
    fn metric_descriptions() {
        assert_eq!(
            parse_metric("x{a=\"b\"}").unwrap().to_string(),
            r#"{__name__="x", a="b"}"#
        );
        assert_eq!(parse_metric("{__name__=\"x\"}").unwrap().name(), Some("x"));
        assert_eq!(parse_metric("{}").unwrap(), Labels::new());
        assert!(parse_metric("x{a=~\"b\"}").is_err());
    }
}
