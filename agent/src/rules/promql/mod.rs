//! PromQL: the subset checked at load ([`subset`]), evaluated at one instant ([`eval`],
//! [`functions`], [`value`]), with Prometheus's durations ([`duration`]).

pub mod duration;
pub mod eval;
pub mod functions;
pub mod subset;
pub mod value;
