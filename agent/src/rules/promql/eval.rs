//! Evaluates the supported PromQL subset at one instant over the [`History`], with
//! Prometheus 2.x semantics: 5-minute lookback for instant selectors, closed `[t-range, t]`
//! windows, `offset`, subqueries stepped as Prometheus aligns them, staleness markers, metric
//! names dropped where Prometheus drops them, vector matching with `on`/`ignoring` and
//! `group_left`/`group_right`, and the same errors for ambiguous matching.

use crate::store::hash::{HashMap, HashSet};

use promql_parser::parser::{
    BinaryExpr, Expr, LabelModifier, MatrixSelector, Offset, SubqueryExpr, VectorMatchCardinality,
    VectorSelector,
    token::{
        T_ADD, T_ATAN2, T_COUNT_VALUES, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE,
        T_LUNLESS, T_MOD, T_MUL, T_NEQ, T_POW, T_SUB,
    },
};

use super::{
    aggregate::{self, Param},
    functions,
    value::{Range, Source},
};
use crate::store::{history::History, labels::Labels};

pub use crate::store::history::LOOKBACK_MS;

pub use super::value::{EvalError, Matrix, Sample, Value};

/// Evaluates expressions at `ts` (milliseconds since the epoch).
pub struct Evaluator<'a> {
    pub history: &'a History,
    pub ts: i64,
    /// The step of a subquery that names none: the group's evaluation interval, as
    /// Prometheus takes its global one.
    pub step_ms: i64,
}

/// The most steps a subquery may take (Prometheus's bound on the points of a range query).
pub const MAX_SUBQUERY_STEPS: i64 = 11_000;

/// An `offset` in milliseconds (negative ones look ahead).
pub fn offset_ms(o: Option<&Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

impl Evaluator<'_> {
    /// Evaluates an expression that passed [`super::subset::check`].
    pub fn eval(&self, e: &Expr) -> Result<Value, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant(vs))),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(vec) => {
                    let out = vec
                        .into_iter()
                        .map(|s| Sample {
                            labels: s.labels.without_name(),
                            value: -s.value,
                        })
                        .collect();
                    no_duplicates(out).map(Value::Vector)
                }
            },
            Expr::Binary(b) => self.binary(b),
            Expr::Call(c) => match functions::call(self as &dyn Source, c.func.name, &c.args.args)?
            {
                Value::Vector(v) => no_duplicates(v).map(Value::Vector),
                scalar => Ok(scalar),
            },
            Expr::Aggregate(a) => {
                let param = match a.param.as_deref() {
                    None => Param::None,
                    Some(Expr::StringLiteral(s)) => Param::Label(s.val.clone()),
                    Some(p) => match self.eval(p)? {
                        Value::Scalar(v) => Param::Scalar(v),
                        Value::Vector(_) => {
                            return Err(EvalError("aggregation parameter must be a scalar".into()));
                        }
                    },
                };
                let Value::Vector(v) = self.eval(&a.expr)? else {
                    return Err(EvalError("aggregation over a scalar".into()));
                };
                let out = aggregate::aggregate(a.op.id(), a.modifier.as_ref(), param, v)?;
                if a.op.id() == T_COUNT_VALUES {
                    no_duplicates(out).map(Value::Vector)
                } else {
                    Ok(Value::Vector(out))
                }
            }
            other => Err(EvalError(format!("unsupported expression: {other}"))),
        }
    }

    fn selector_matchers(vs: &VectorSelector) -> (Option<&str>, &[promql_parser::label::Matcher]) {
        (vs.name.as_deref(), &vs.matchers.matchers)
    }

    /// An instant vector selector: the newest sample of each series within the lookback.
    pub fn instant(&self, vs: &VectorSelector) -> Vec<Sample> {
        let (name, matchers) = Self::selector_matchers(vs);
        let ts = self.ts - offset_ms(vs.offset.as_ref());
        self.history
            .select(name, matchers)
            .into_iter()
            .filter_map(|(labels, s)| {
                s.instant(ts, LOOKBACK_MS).map(|value| Sample {
                    labels: labels.clone(),
                    value,
                })
            })
            .collect()
    }

    /// A range selector: the samples of each series in `[ts - range, ts]`; series without any
    /// are left out.
    pub fn matrix(&self, ms: &MatrixSelector) -> Range {
        let (name, matchers) = Self::selector_matchers(&ms.vs);
        let end = self.ts - offset_ms(ms.vs.offset.as_ref());
        let start = end - ms.range.as_millis() as i64;
        let series = self
            .history
            .select(name, matchers)
            .into_iter()
            .filter_map(|(labels, s)| {
                let points = s.range(start, end);
                (!points.is_empty()).then(|| (labels.clone(), points))
            })
            .collect();
        Range { series, start, end }
    }

    /// A subquery: its expression evaluated at every step in the window, the steps aligned to
    /// multiples of the step as Prometheus aligns them.
    pub fn subquery(&self, sq: &SubqueryExpr) -> Result<Range, EvalError> {
        let step = sq
            .step
            .map_or(self.step_ms, |d| d.as_millis() as i64)
            .max(1);
        let end = self.ts - offset_ms(sq.offset.as_ref());
        let start = end - sq.range.as_millis() as i64;
        // A bound of nodewatch's own: each tick evaluates the rule again.
        if (end - start) / step > MAX_SUBQUERY_STEPS {
            return Err(EvalError(format!(
                "subquery of {} steps: at most {MAX_SUBQUERY_STEPS} (give it a larger step)",
                (end - start) / step
            )));
        }
        let mut t = step * start.div_euclid(step);
        if t < start {
            t += step;
        }
        let mut index: HashMap<Labels, usize> = HashMap::default();
        let mut series: Matrix = Vec::new();
        while t <= end {
            let inner = Evaluator {
                history: self.history,
                ts: t,
                step_ms: self.step_ms,
            };
            for s in inner.eval(&sq.expr)?.into_vector() {
                let i = *index.entry(s.labels.clone()).or_insert_with(|| {
                    series.push((s.labels, Vec::new()));
                    series.len() - 1
                });
                series[i].1.push((t, s.value));
            }
            t += step;
        }
        Ok(Range { series, start, end })
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Value, EvalError> {
        let op = b.op.id();
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        let return_bool = b.return_bool();
        let (on, names) = match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let card = match b.modifier.as_ref().map(|m| &m.card) {
            Some(VectorMatchCardinality::ManyToOne(l)) => Card::ManyToOne(l.labels.clone()),
            Some(VectorMatchCardinality::OneToMany(l)) => Card::OneToMany(l.labels.clone()),
            _ => Card::OneToOne,
        };
        let out = match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = elem_binop(op, l, r);
                return Ok(Value::Scalar(if is_comparison(op) {
                    f64::from(u8::from(keep))
                } else {
                    v
                }));
            }
            (Value::Vector(l), Value::Scalar(r)) => vector_scalar(op, l, r, false, return_bool),
            (Value::Scalar(l), Value::Vector(r)) => vector_scalar(op, r, l, true, return_bool),
            (Value::Vector(l), Value::Vector(r)) => match op {
                T_LAND => set_op(l, r, on, &names, SetOp::And),
                T_LOR => set_op(l, r, on, &names, SetOp::Or),
                T_LUNLESS => set_op(l, r, on, &names, SetOp::Unless),
                _ => vector_vector(op, l, r, on, &names, &card, return_bool)?,
            },
        };
        no_duplicates(out).map(Value::Vector)
    }
}

impl Source for Evaluator<'_> {
    fn ts(&self) -> i64 {
        self.ts
    }
    fn eval(&self, e: &Expr) -> Result<Value, EvalError> {
        Evaluator::eval(self, e)
    }
    fn timed(&self, e: &Expr) -> Result<Vec<(Sample, i64)>, EvalError> {
        match e {
            Expr::Paren(p) => self.timed(&p.expr),
            Expr::VectorSelector(vs) => {
                let (name, matchers) = Self::selector_matchers(vs);
                let ts = self.ts - offset_ms(vs.offset.as_ref());
                Ok(self
                    .history
                    .select(name, matchers)
                    .into_iter()
                    .filter_map(|(labels, s)| {
                        s.instant_sample(ts, LOOKBACK_MS).map(|(t, value)| {
                            (
                                Sample {
                                    labels: labels.clone(),
                                    value,
                                },
                                t,
                            )
                        })
                    })
                    .collect())
            }
            other => Ok(self
                .eval(other)?
                .into_vector()
                .into_iter()
                .map(|s| (s, self.ts))
                .collect()),
        }
    }

    fn range(&self, e: &Expr) -> Result<Range, EvalError> {
        match e {
            Expr::MatrixSelector(ms) => Ok(self.matrix(ms)),
            Expr::Subquery(sq) => self.subquery(sq),
            Expr::Paren(p) => self.range(&p.expr),
            other => Err(EvalError(format!("expected a range: {other}"))),
        }
    }
}

/// Prometheus refuses a result with two samples of the same label set.
pub fn no_duplicates(v: Vec<Sample>) -> Result<Vec<Sample>, EvalError> {
    let mut seen = HashSet::with_capacity_and_hasher(v.len(), Default::default());
    if v.iter().all(|s| seen.insert(&s.labels)) {
        Ok(v)
    } else {
        Err(EvalError(
            "vector cannot contain metrics with the same labelset".into(),
        ))
    }
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name; comparisons (without `bool`) keep it.
fn drops_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW)
}

/// The cardinality of a vector match, with the labels `group_x(...)` copies from the one side.
enum Card {
    OneToOne,
    ManyToOne(Vec<String>),
    OneToMany(Vec<String>),
}

/// Prometheus's `vectorElemBinop`: the value, and for comparisons whether it holds.
fn elem_binop(op: u16, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

fn vector_scalar(op: u16, v: Vec<Sample>, s: f64, swap: bool, return_bool: bool) -> Vec<Sample> {
    v.into_iter()
        .filter_map(|mut sample| {
            let (l, r) = if swap {
                (s, sample.value)
            } else {
                (sample.value, s)
            };
            let (mut value, mut keep) = elem_binop(op, l, r);
            // A comparison keeps the vector's value even when the scalar is on the left.
            if is_comparison(op) && swap {
                value = r;
            }
            if return_bool {
                value = f64::from(u8::from(keep));
                keep = true;
            }
            keep.then(|| {
                sample.value = value;
                if drops_name(op) || return_bool {
                    sample.labels = sample.labels.without_name();
                }
                sample
            })
        })
        .collect()
}

/// Prometheus's `VectorBinop` for arithmetic and comparisons: one-to-one, many-to-one
/// (`group_left`) and one-to-many (`group_right`, computed as many-to-one with the sides
/// swapped), with Prometheus's errors for matches that are not unique.
fn vector_vector(
    op: u16,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    on: bool,
    names: &[String],
    card: &Card,
    return_bool: bool,
) -> Result<Vec<Sample>, EvalError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let (many, one, swapped, include) = match card {
        Card::OneToMany(inc) => (rhs, lhs, true, Some(inc)),
        Card::ManyToOne(inc) => (lhs, rhs, false, Some(inc)),
        Card::OneToOne => (lhs, rhs, false, None),
    };
    let mut right: HashMap<Vec<(String, String)>, &Sample> =
        HashMap::with_capacity_and_hasher(one.len(), Default::default());
    for rs in &one {
        let sig = rs.labels.signature(on, names);
        if let Some(dup) = right.get(&sig) {
            let matched = Labels::from_pairs(sig.clone());
            let side = if swapped { "left" } else { "right" };
            return Err(EvalError(format!(
                "found duplicate series for the match group {matched} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                rs.labels, dup.labels
            )));
        }
        right.insert(sig, rs);
    }
    let mut matched: HashMap<Vec<(String, String)>, HashSet<Labels>> = HashMap::default();
    let mut out = Vec::new();
    for ls in many {
        let sig = ls.labels.signature(on, names);
        let Some(rs) = right.get(&sig) else { continue };
        let (vl, vr) = if swapped {
            (rs.value, ls.value)
        } else {
            (ls.value, rs.value)
        };
        let (mut value, keep) = elem_binop(op, vl, vr);
        if return_bool {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let mut labels = ls.labels;
        if drops_name(op) || return_bool {
            labels = labels.without_name();
        }
        match include {
            None => {
                if on {
                    labels.keep(names);
                } else {
                    labels.drop_all(names);
                }
            }
            Some(inc) => {
                for l in inc {
                    match rs.labels.get(l) {
                        Some(v) => labels.set(l.clone(), v.to_string()),
                        None => labels.remove(l),
                    }
                }
            }
        }
        match include {
            None => {
                if matched.insert(sig, HashSet::default()).is_some() {
                    return Err(EvalError(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
            }
            Some(_) => {
                if !matched.entry(sig).or_default().insert(labels.clone()) {
                    return Err(EvalError(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

enum SetOp {
    And,
    Or,
    Unless,
}

fn set_op(
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    on: bool,
    names: &[String],
    op: SetOp,
) -> Vec<Sample> {
    let sigs = |v: &[Sample]| -> HashSet<Vec<(String, String)>> {
        v.iter().map(|s| s.labels.signature(on, names)).collect()
    };
    match op {
        SetOp::And => {
            if lhs.is_empty() || rhs.is_empty() {
                return Vec::new();
            }
            let right = sigs(&rhs);
            lhs.into_iter()
                .filter(|s| right.contains(&s.labels.signature(on, names)))
                .collect()
        }
        SetOp::Or => {
            let left = sigs(&lhs);
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !left.contains(&s.labels.signature(on, names))),
            );
            out
        }
        SetOp::Unless => {
            if lhs.is_empty() || rhs.is_empty() {
                return lhs;
            }
            let right = sigs(&rhs);
            lhs.into_iter()
                .filter(|s| !right.contains(&s.labels.signature(on, names)))
                .collect()
        }
    }
}
