//! `probes.accept_queue:` in the configuration.

use nodewatch_common::accept_queue::MAX_PORTS;
use serde::Deserialize;

use crate::yaml::Ports;

/// `probes.accept_queue:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcceptQueueConfig {
    /// Whether the probe runs. Default `true`.
    pub enabled: bool,
    /// Listening ports to watch: overflows are counted and queue length and limit exported
    /// for each. Default `[8000, 8001, 8080]`; at most 256 ports, each 1–65535, no duplicates.
    pub ports: Ports<{ MAX_PORTS as usize }>,
    /// Where overflow counts come from: `auto` (eBPF, else sock_diag, else procfs), or one of
    /// `ebpf`, `sock_diag` (per-listener drops), `procfs` (host-wide `ListenOverflows`).
    /// Default `auto`.
    pub mode: AcceptQueueMode,
}

impl Default for AcceptQueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Ports(vec![8000, 8001, 8080]),
            mode: AcceptQueueMode::Auto,
        }
    }
}

/// `probes.accept_queue.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptQueueMode {
    /// The best this host allows: eBPF, then sock_diag, then procfs.
    Auto,
    /// eBPF only; if it cannot attach, the probe degrades as in `auto`, with a WARN line.
    Ebpf,
    /// Per-listener drops from sock_diag, no eBPF.
    SockDiag,
    /// Host-wide `TcpExt: ListenOverflows` from `/proc/net/netstat`.
    Procfs,
}
