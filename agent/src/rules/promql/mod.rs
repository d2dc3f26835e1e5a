//! PromQL: the subset checked at load ([`subset`]), evaluated at one instant ([`eval`],
//! [`functions`], [`over_time`], [`aggregate`], [`value`]), with Prometheus's durations ([`duration`]).

pub mod aggregate;
pub mod dates;
pub mod duration;
pub mod eval;
pub mod functions;
pub mod histogram;
pub mod over_time;
pub mod subset;
pub mod value;
