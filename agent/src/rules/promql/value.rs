//! What expressions evaluate to, and what a function needs of the evaluator (its arguments,
//! evaluated), so the functions do not depend on the evaluator that calls them.

use promql_parser::parser::Expr;

use crate::store::labels::Labels;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// The value of an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<Sample>),
}

impl Value {
    /// The value as a rule result: a scalar becomes one sample without labels.
    pub fn into_vector(self) -> Vec<Sample> {
        match self {
            Value::Scalar(v) => vec![Sample {
                labels: Labels::new(),
                value: v,
            }],
            Value::Vector(v) => v,
        }
    }
}

/// Why an evaluation failed; the texts are Prometheus's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// The series of one range selector: labels and the samples in the window.
pub type Matrix = Vec<(Labels, Vec<(i64, f64)>)>;

/// A range argument (a range selector or a subquery), evaluated: its series and its window
/// `[start, end]` in milliseconds (the range and the offset applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub series: Matrix,
    pub start: i64,
    pub end: i64,
}

/// What a function call may ask of the evaluator running it.
pub trait Source {
    /// The instant being evaluated, in milliseconds since the epoch.
    fn ts(&self) -> i64;
    /// Evaluates an argument.
    fn eval(&self, e: &Expr) -> Result<Value, EvalError>;
    /// Evaluates a range argument: a range selector or a subquery.
    fn range(&self, e: &Expr) -> Result<Range, EvalError>;
    /// Evaluates a vector argument with the time of each sample in milliseconds: a selector's
    /// own sample times, the evaluation time for anything computed.
    fn timed(&self, e: &Expr) -> Result<Vec<(Sample, i64)>, EvalError>;
}
