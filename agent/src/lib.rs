//! nodewatch as a library: every module of the agent, so that the binary (`main.rs`), the
//! fuzz targets (`fuzz/`) and tests reach the same code.
//!
//! The modules follow the data, and a module only uses the ones below it:
//!
//! ```text
//! agent            wiring, the tick thread, privileges, systemd
//! http             the HTTP server and its handlers
//! config           the top-level keys; each section's type lives with its user
//! rules            rule files, the PromQL subset, evaluation, unit tests, reloads
//! notify  health   what the alerts drive: receivers, node health (and HAProxy)
//! alerts           the one alert type the rules produce
//! collectors       the Collector trait, the one list, probes/ (eBPF), plain collectors
//! store            metric families, the tick's samples, the per-series history
//! yaml  files  httpc  wake   located YAML and shared validators, atomic writes, outbound
//!                  HTTP, the tick thread's wake-up
//! ```

pub mod agent;
pub mod alerts;
pub mod client;
pub mod collectors;
pub mod config;
pub mod files;
pub mod health;
pub mod http;
pub mod httpc;
pub mod notify;
pub mod rules;
pub mod store;
pub mod wake;
pub mod yaml;
