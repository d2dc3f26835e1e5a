//! What every collector is: the [`Collector`] trait the tick runs, the modes a probe can run
//! in, and why a collection fails.

use std::{any::Any, fmt, path::Path, time::Instant};

use super::{containers::SharedContainers, gpu_map::GpuMap};
use crate::wake::Wake;

/// A running collector: an eBPF probe, or a plain one (the kernel log, `/proc`, heartbeats).
/// It owns its kernel objects: dropping it detaches them.
pub trait Collector: Send + Any {
    /// Its name, as in the config and the `probe` / `collector` labels.
    fn name(&self) -> &'static str;
    /// The mode it ended up running in, for the collectors that have modes (probes); they are
    /// the ones `nodewatch_probe_up{probe,mode}` reports.
    fn mode(&self) -> Option<Mode> {
        None
    }
    /// How it gets its data, for `nodewatch probes` and the start-up log.
    fn attach_method(&self) -> String;
    /// Reads current values into its metric families. Called once per tick.
    fn collect(&mut self) -> Result<(), CollectError>;
    /// True while it still has programs to attach (and so needs CAP_BPF and CAP_PERFMON on
    /// the tick thread).
    fn awaiting_attach(&self) -> bool {
        false
    }
    /// Events the kernel skipped delivering to its programs since it started.
    fn missed_events(&self) -> u64 {
        0
    }
    /// The next moment something it watches may cross a line between two ticks (a GPU call
    /// still in flight reaching the stall threshold): the tick thread then asks [`due`].
    ///
    /// [`due`]: Collector::due
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// At its [`deadline`](Collector::deadline): whether the line was crossed, so the tick
    /// should run now rather than at its schedule. Forgets the deadlines that have passed.
    fn due(&mut self, _now: Instant) -> bool {
        false
    }
}

/// What a collector may read of the agent's settings besides its own section.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// Root of the proc filesystem (`/proc`, or a fixture tree in tests).
    pub proc_root: &'a Path,
    /// The agent's one cgroup id → container lookup, refreshed each tick before collection.
    pub containers: &'a SharedContainers,
    /// Asks the tick thread for a tick now, from a collector's own tasks (a heartbeat that
    /// has just confirmed a change).
    pub wake: &'a Wake,
    /// PCI bus id → NVML GPU, kept by the NVML probe for the kernel-log readers.
    pub gpus: &'a GpuMap,
    /// Where state that outlives the agent is kept (`spool_dir`).
    pub spool_dir: &'a Path,
}

/// How a probe gets its data; the `mode` label of `nodewatch_probe_up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// eBPF programs in the kernel.
    Ebpf,
    /// Per-socket counters from netlink sock_diag.
    SockDiag,
    /// Host-wide counters from `/proc`.
    Procfs,
    /// Lines of the kernel log, `/dev/kmsg`.
    Kmsg,
    /// NVIDIA's management library, `libnvidia-ml.so`.
    Nvml,
    /// Device attributes the kernel exports in sysfs.
    Sysfs,
    /// Nothing this host allows; the probe reports itself and measures nothing.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::SockDiag => "sock_diag",
            Mode::Procfs => "procfs",
            Mode::Kmsg => "kmsg",
            Mode::Nvml => "nvml",
            Mode::Sysfs => "sysfs",
            Mode::Off => "off",
        }
    }

    /// What `nodewatch probes` says about support: full, degraded, or none.
    pub fn support(self) -> &'static str {
        match self {
            Mode::Ebpf | Mode::Kmsg | Mode::Nvml | Mode::Sysfs => "yes",
            Mode::SockDiag | Mode::Procfs => "degraded",
            Mode::Off => "no",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe this host cannot run (no eBPF, no access to the kernel log, no NVML): it reports mode
/// `off` and why, and measures nothing.
pub struct Off {
    pub name: &'static str,
    pub reason: String,
}

impl Collector for Off {
    fn name(&self) -> &'static str {
        self.name
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Off)
    }
    fn attach_method(&self) -> String {
        format!("none ({})", self.reason)
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        Ok(())
    }
}

/// A failed collection; the collector stays in place and tries again next tick.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{call}: {message}")]
    Library { call: &'static str, message: String },
    #[error("attaching {program}: {source}")]
    Attach {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}
