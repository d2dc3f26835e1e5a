//! nodewatch as a library: every module of the agent, so that the binary (`main.rs`), the
//! fuzz targets (`fuzz/`) and tests reach the same code.

pub mod agent;
pub mod alerts;
pub mod client;
pub mod config;
pub mod devices;
pub mod haproxy;
pub mod health;
pub mod heartbeats;
pub mod http;
pub mod httpc;
pub mod kernel;
pub mod notify;
pub mod privileges;
pub mod probes;
pub mod reload;
pub mod resources;
pub mod rules;
pub mod server;
pub mod sockdiag;
pub mod store;
pub mod systemd;
pub mod xid;
