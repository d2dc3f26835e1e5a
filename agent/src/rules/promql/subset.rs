//! The PromQL subset nodewatch evaluates, checked on the parsed expression at load: anything
//! else is refused, naming the construct and where it is written.

use promql_parser::parser::{Expr, value::ValueType};

use super::{
    eval::{LOOKBACK_MS, offset_ms},
    functions,
};

/// A construct outside the subset: what it is, and text to look for to place it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    pub message: String,
    /// Text of the construct in the expression, when it can be found there.
    pub needle: Option<Needle>,
}

/// How to find a construct in the source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Needle {
    pub text: String,
    /// Match only as a whole identifier (`rate` but not `irate`).
    pub word: bool,
}

/// What the checker learned about a supported expression.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    /// Each range selector: the metric it reads (None when it matches names by regex or not
    /// at all) and its range in milliseconds.
    pub ranges: Vec<(Option<String>, i64)>,
}

fn unsupported(message: String, needle: &str, word: bool) -> Unsupported {
    Unsupported {
        message,
        needle: Some(Needle {
            text: needle.to_string(),
            word,
        }),
    }
}

/// Checks that `e` stays inside the subset and evaluates to a vector or a scalar.
pub fn check(e: &Expr) -> Result<Info, Unsupported> {
    match e.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        other => {
            return Err(Unsupported {
                message: format!("a rule must evaluate to a vector or a scalar, this is a {other}"),
                needle: None,
            });
        }
    }
    let mut info = Info::default();
    walk(e, &mut info, 0)?;
    Ok(info)
}

/// The metric a selector names, when it names exactly one.
fn metric_name(vs: &promql_parser::parser::VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers.matchers.iter().find_map(|m| {
            (m.name == crate::store::labels::METRIC_NAME
                && matches!(m.op, promql_parser::label::MatchOp::Equal))
            .then(|| m.value.clone())
        })
    })
}

/// Walks `e`, noting how far back each selector reads: `back_ms` is what the enclosing
/// offsets and subqueries add.
fn walk(e: &Expr, info: &mut Info, back_ms: i64) -> Result<(), Unsupported> {
    match e {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => walk(&p.expr, info, back_ms),
        Expr::Unary(u) => walk(&u.expr, info, back_ms),
        Expr::Subquery(sq) => {
            if sq.at.is_some() {
                return Err(unsupported(
                    format!(
                        "unsupported `@` modifier in `{e}`: rules evaluate at the current time"
                    ),
                    "@",
                    false,
                ));
            }
            let back = back_ms + offset_ms(sq.offset.as_ref()).max(0) + sq.range.as_millis() as i64;
            walk(&sq.expr, info, back)
        }
        Expr::Extension(_) => Err(Unsupported {
            message: format!("unsupported expression `{e}`"),
            needle: None,
        }),
        Expr::VectorSelector(vs) => {
            if vs.at.is_some() {
                return Err(unsupported(
                    format!(
                        "unsupported `@` modifier in `{e}`: rules evaluate at the current time"
                    ),
                    "@",
                    false,
                ));
            }
            if !vs.matchers.or_matchers.is_empty() {
                return Err(unsupported(
                    format!(
                        "unsupported `or` inside the selector `{e}` (not in Prometheus 2.x): write two selectors joined by `or`"
                    ),
                    " or ",
                    false,
                ));
            }
            let back = back_ms + offset_ms(vs.offset.as_ref()).max(0);
            if back > 0 {
                info.ranges.push((metric_name(vs), back + LOOKBACK_MS));
            }
            Ok(())
        }
        Expr::MatrixSelector(ms) => {
            walk(
                &Expr::VectorSelector(ms.vs.clone()),
                &mut Info::default(),
                0,
            )?;
            let back = back_ms + offset_ms(ms.vs.offset.as_ref()).max(0);
            info.ranges
                .push((metric_name(&ms.vs), back + ms.range.as_millis() as i64));
            Ok(())
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if functions::lookup(name).is_none() {
                return Err(unsupported(
                    format!(
                        "unsupported function `{name}`: nodewatch evaluates {} functions, listed in its README under \"The PromQL subset\"",
                        functions::FUNCTIONS.len()
                    ),
                    name,
                    true,
                ));
            }
            for a in &c.args.args {
                walk(a, info, back_ms)?;
            }
            Ok(())
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                walk(p, info, back_ms)?;
            }
            walk(&a.expr, info, back_ms)
        }
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(unsupported(
                    "unsupported `fill` modifier (not in Prometheus 2.x)".into(),
                    "fill",
                    false,
                ));
            }
            walk(&b.lhs, info, back_ms)?;
            walk(&b.rhs, info, back_ms)
        }
    }
}

/// Checks what the parsed tree does not keep: every `[...]` range is a Prometheus 2.x duration
/// (`5m`, `1h30m`), not a number of seconds or an expression that newer parsers accept.
pub fn check_ranges(text: &str) -> Result<(), (usize, String)> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut open: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '[' => open = Some(i),
            ']' => {
                if let Some(start) = open.take() {
                    let inner = text[start + 1..i].trim();
                    if !inner.contains(':') && super::duration::parse(inner).is_err() {
                        return Err((
                            start,
                            format!(
                                "range `[{inner}]` is not a duration such as [30s], [5m] or [1h30m]"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Byte offset of `needle` in `text` at or after `from`, as a whole identifier if asked.
pub fn find(text: &str, from: usize, needle: &Needle) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut at = from;
    while let Some(i) = text.get(at..)?.find(&needle.text) {
        let start = at + i;
        let end = start + needle.text.len();
        let before_ok = text[..start].chars().next_back().is_none_or(|c| !ident(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !ident(c));
        if !needle.word || (before_ok && after_ok) {
            return Some(start);
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(q: &str) -> Result<Info, Unsupported> {
        check(&promql_parser::parser::parse(q).unwrap())
    }

    #[test]
    fn the_subset_passes_with_its_longest_range() {
        for q in [
            "rate(x[5m]) > 1",
            "sum by (port) (increase(x{a=~\"b|c\",d!=\"e\",f!~\"g\"}[1m])) > bool 0",
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[30s])))",
            "absent(up{job=\"x\"}) or vector_like and on(a) other unless ignoring(b) third",
            "-(a / b) % 3 == 1",
            "count without (port) (max_over_time(x[2m]))",
            "1",
        ] {
            let r = check_text(q);
            assert!(r.is_ok(), "{q}: {r:?}");
        }
        assert_eq!(
            check_text("rate(a[5m]) + delta({__name__=\"b\"}[1h]) + max_over_time({x=\"y\"}[1m])")
                .unwrap()
                .ranges,
            vec![
                (Some("a".into()), 300_000),
                (Some("b".into()), 3_600_000),
                (None, 60_000)
            ]
        );
    }

    #[test]
    fn outside_the_subset_is_named() {
        for (q, what, needle) in [
            (
                "histogram_count(x)",
                "function `histogram_count`",
                "histogram_count",
            ),
            ("x @ 100", "`@`", "@"),
            ("x[5m]", "vector or a scalar", ""),
            ("\"s\"", "vector or a scalar", ""),
        ] {
            let e = check_text(q).unwrap_err();
            assert!(e.message.contains(what), "{q}: {e:?}");
            assert_eq!(e.needle.map(|n| n.text).unwrap_or_default(), needle, "{q}");
        }
    }

    #[test]
    fn offsets_and_subqueries_widen_what_the_history_keeps() {
        assert_eq!(
            check_text("x offset 1h + max_over_time(rate(y[1m])[10m:1m] offset 5m)")
                .unwrap()
                .ranges,
            vec![
                (Some("x".into()), 3_600_000 + LOOKBACK_MS),
                (Some("y".into()), 60_000 + 600_000 + 300_000)
            ]
        );
    }

    #[test]
    fn ranges_must_be_prometheus_durations() {
        assert!(check_ranges("rate(x{a=\"[90]\"}[1m30s])").is_ok());
        assert_eq!(check_ranges("rate(x[90])").unwrap_err().0, 6);
    }

    #[test]
    fn finds_whole_identifiers() {
        let n = Needle {
            text: "rate".into(),
            word: true,
        };
        assert_eq!(find("irate(x[1m]) + rate(y[1m])", 0, &n), Some(15));
    }
}
