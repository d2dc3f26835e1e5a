//! The PromQL subset nodewatch evaluates, checked on the parsed expression at load: anything
//! else is refused, naming the construct and where it is written.

use promql_parser::parser::{
    Expr, VectorMatchCardinality,
    token::{
        T_ADD, T_AVG, T_COUNT, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS,
        T_MAX, T_MIN, T_MOD, T_MUL, T_NEQ, T_SUB, T_SUM,
    },
    value::ValueType,
};

use super::functions::SUPPORTED;

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

const HELP: &str = "nodewatch evaluates selectors, rate, irate, increase, delta, idelta, avg/max/min/count_over_time, histogram_quantile, absent, sum/max/min/avg/count with by/without, + - * / %, comparisons (with bool), and/or/unless";

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
    walk(e, &mut info)?;
    Ok(info)
}

fn walk(e: &Expr, info: &mut Info) -> Result<(), Unsupported> {
    match e {
        Expr::NumberLiteral(_) => Ok(()),
        Expr::Paren(p) => walk(&p.expr, info),
        Expr::Unary(u) => walk(&u.expr, info),
        Expr::StringLiteral(s) => Err(unsupported(
            format!("unsupported string literal {:?}: {HELP}", s.val),
            "\"",
            false,
        )),
        Expr::Subquery(_) => Err(unsupported(
            format!("unsupported subquery `{e}`: {HELP}"),
            ":",
            false,
        )),
        Expr::Extension(_) => Err(Unsupported {
            message: format!("unsupported expression `{e}`"),
            needle: None,
        }),
        Expr::VectorSelector(vs) => {
            if vs.offset.is_some() {
                return Err(unsupported(
                    format!(
                        "unsupported `offset` modifier in `{e}`: rules look at the latest samples only"
                    ),
                    "offset",
                    true,
                ));
            }
            if vs.at.is_some() {
                return Err(unsupported(
                    format!("unsupported `@` modifier in `{e}`"),
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
            Ok(())
        }
        Expr::MatrixSelector(ms) => {
            let vs = Expr::VectorSelector(ms.vs.clone());
            walk(&vs, info)?;
            let range = ms.range.as_millis() as i64;
            let name = ms.vs.name.clone().or_else(|| {
                ms.vs.matchers.matchers.iter().find_map(|m| {
                    (m.name == crate::store::labels::METRIC_NAME
                        && matches!(m.op, promql_parser::label::MatchOp::Equal))
                    .then(|| m.value.clone())
                })
            });
            info.ranges.push((name, range));
            Ok(())
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if !SUPPORTED.contains(&name) {
                return Err(unsupported(
                    format!("unsupported function `{name}`: {HELP}"),
                    name,
                    true,
                ));
            }
            for (i, a) in c.args.args.iter().enumerate() {
                let range_fn = name != "histogram_quantile" && name != "absent";
                if range_fn
                    && i == 0
                    && !matches!(a.as_ref(), Expr::MatrixSelector(_) | Expr::Subquery(_))
                {
                    return Err(unsupported(
                        format!(
                            "`{name}` needs a range selector such as `metric[1m]` as its argument, not `{a}`"
                        ),
                        name,
                        true,
                    ));
                }
                walk(a, info)?;
            }
            Ok(())
        }
        Expr::Aggregate(a) => {
            let op = a.op.id();
            if !matches!(op, T_SUM | T_MAX | T_MIN | T_AVG | T_COUNT) || a.param.is_some() {
                let name = a.op.to_string();
                return Err(unsupported(
                    format!("unsupported aggregation `{name}`: {HELP}"),
                    &name,
                    true,
                ));
            }
            walk(&a.expr, info)
        }
        Expr::Binary(b) => {
            let op = b.op.id();
            let ok = matches!(
                op,
                T_ADD
                    | T_SUB
                    | T_MUL
                    | T_DIV
                    | T_MOD
                    | T_EQLC
                    | T_NEQ
                    | T_GTR
                    | T_LSS
                    | T_GTE
                    | T_LTE
                    | T_LAND
                    | T_LOR
                    | T_LUNLESS
            );
            if !ok {
                let name = b.op.to_string();
                let word = name.chars().all(char::is_alphanumeric);
                return Err(unsupported(
                    format!("unsupported operator `{name}`: {HELP}"),
                    &name,
                    word,
                ));
            }
            if let Some(m) = &b.modifier {
                match &m.card {
                    VectorMatchCardinality::ManyToOne(_) => {
                        return Err(unsupported(
                            "unsupported `group_left`: only one-to-one matching (with on/ignoring) is evaluated".into(),
                            "group_left",
                            true,
                        ));
                    }
                    VectorMatchCardinality::OneToMany(_) => {
                        return Err(unsupported(
                            "unsupported `group_right`: only one-to-one matching (with on/ignoring) is evaluated".into(),
                            "group_right",
                            true,
                        ));
                    }
                    _ => {}
                }
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(unsupported(
                        "unsupported `fill` modifier (not in Prometheus 2.x)".into(),
                        "fill",
                        false,
                    ));
                }
            }
            walk(&b.lhs, info)?;
            walk(&b.rhs, info)
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
            ("topk(3, x)", "aggregation `topk`", "topk"),
            (
                "predict_linear(x[5m], 60)",
                "function `predict_linear`",
                "predict_linear",
            ),
            ("x offset 5m", "`offset`", "offset"),
            ("x @ 100", "`@`", "@"),
            ("max_over_time(x[5m:1m])", "subquery", ":"),
            ("x + on(a) group_left(b) y", "group_left", "group_left"),
            ("x ^ 2", "operator `^`", "^"),
            ("quantile(0.9, x)", "aggregation `quantile`", "quantile"),
            ("x[5m]", "vector or a scalar", ""),
            ("\"s\"", "vector or a scalar", ""),
        ] {
            let e = check_text(q).unwrap_err();
            assert!(e.message.contains(what), "{q}: {e:?}");
            assert_eq!(e.needle.map(|n| n.text).unwrap_or_default(), needle, "{q}");
        }
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
