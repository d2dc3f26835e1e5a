//! Signal sources backed by the kernel. Each probe is one file here (and one in `agent-ebpf/`);
//! adding one is that file plus one line in [`ALL`].

use std::fmt;

use nodewatch_common::tcp_retransmits::OTHER_PORT;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::config::Config;

pub mod accept_queue;
pub mod gpu_ioctl;
pub mod tcp_retransmits;

/// Every probe, in the order they start. Plain collectors that fit the same shape (the Xid
/// counter reads the kernel log) are listed here too.
pub const ALL: &[ProbeDef] = &[
    tcp_retransmits::DEF,
    accept_queue::DEF,
    gpu_ioctl::DEF,
    crate::xid::DEF,
];

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
            Mode::Off => "off",
        }
    }

    /// What `nodewatch probes` says about support: full, degraded, or none.
    pub fn support(self) -> &'static str {
        match self {
            Mode::Ebpf | Mode::Kmsg => "yes",
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

/// A running probe. It owns its kernel objects: dropping it detaches them.
pub trait Probe: Send {
    /// The probe's name, as in the config and the `probe` label.
    fn name(&self) -> &'static str;
    /// The mode it ended up running in.
    fn mode(&self) -> Mode;
    /// How it is attached, for `nodewatch probes` and the start-up log.
    fn attach_method(&self) -> String;
    /// Reads the probe's current values into its metric families. Called once per tick.
    fn collect(&mut self) -> Result<(), ProbeError>;
    /// True while the probe still has programs to attach (and so needs CAP_BPF and
    /// CAP_PERFMON on the tick thread).
    fn awaiting_attach(&self) -> bool {
        false
    }
    /// Events the kernel skipped delivering to the probe's programs since it started.
    fn missed_events(&self) -> u64 {
        0
    }
}

/// A probe this host cannot run (no eBPF, no access to the kernel log): it reports mode
/// `off` and why, and measures nothing.
pub struct Off {
    pub name: &'static str,
    pub reason: String,
}

impl Probe for Off {
    fn name(&self) -> &'static str {
        self.name
    }
    fn mode(&self) -> Mode {
        Mode::Off
    }
    fn attach_method(&self) -> String {
        format!("none ({})", self.reason)
    }
    fn collect(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }
}

/// How to start one probe.
pub struct ProbeDef {
    pub name: &'static str,
    /// Whether the config switches it on.
    pub enabled: fn(&Config) -> bool,
    /// Registers the probe's metric families and starts it in the best mode this host allows,
    /// degrading (eBPF → procfs, or off) with one WARN line.
    pub start: fn(&Config, &mut Registry) -> Box<dyn Probe>,
}

/// A failed collection; the probe stays in place and tries again next tick.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
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
    #[error("attaching {program}: {source}")]
    Attach {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Why a probe's eBPF path could not start (the probe then degrades, saying why).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("object lacks {0}")]
    Missing(&'static str),
    #[error("counting CPUs: {0}")]
    Cpus(String),
    #[error("no cgroup v2 mount in {0}")]
    NoCgroup2(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to {path}: {errors}")]
    Attach { path: String, errors: String },
}

/// Labels `{port}`: a watched port, `other` (the rest), or `all` (a host-wide fallback).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: String,
}

impl PortLabels {
    /// A watched port; `OTHER_PORT` (0) is the `other` slot.
    pub fn of(port: u16) -> Self {
        let port = if port == OTHER_PORT {
            "other".to_string()
        } else {
            port.to_string()
        };
        Self { port }
    }

    /// The host-wide series of a procfs fallback.
    pub fn all() -> Self {
        Self { port: "all".into() }
    }
}

/// Sets a counter to a total kept elsewhere (a kernel map, a kernel counter).
pub fn set_counter(family: &Family<PortLabels, Counter>, labels: PortLabels, total: u64) {
    family
        .get_or_create(&labels)
        .inner()
        .store(total, std::sync::atomic::Ordering::Relaxed);
}

/// A value from `/proc/net/snmp` or `/proc/net/netstat` text: a header line and a value line
/// per protocol (`Tcp:`, `TcpExt:`).
pub fn snmp_value(text: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let idx = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(idx)?.parse().ok()
}

/// Events the kernel skipped for the named programs of `ebpf`, summed (see
/// [`recursion_misses`]); programs not loaded count nothing.
pub fn programs_missed(ebpf: &aya::Ebpf, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|name| {
            let fd = ebpf.program(name)?.fd().ok()?;
            recursion_misses(std::os::fd::AsFd::as_fd(fd)).ok()
        })
        .sum()
}

/// How often the kernel skipped program `fd` because a BPF program was already running on
/// that CPU (`bpf_prog_info.recursion_misses`): events the probe did not see.
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut info: aya_obj::generated::bpf_prog_info =
        // SAFETY: plain old data; all zeros is a valid value.
        unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as i32,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
