//! Accept-queue overflows and queue depth per watched listening port.
//!
//! eBPF: a `cgroup_skb` ingress program on the cgroup v2 root counts, per listening port, the
//! SYNs and handshake ACKs that arrive while the listener's accept queue is full — the packets
//! the kernel is about to drop and count as `ListenOverflows`. Every tick, sock_diag gives
//! each watched listener's queue length and limit. Fallbacks: per-listener drops from
//! sock_diag (`mode="sock_diag"`), then the host-wide `TcpExt: ListenOverflows` of
//! `/proc/net/netstat` under `port="all"` (`mode="procfs"`).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuHashMap, PerCpuValues},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use nodewatch_common::{
    AcceptqOffsets,
    accept_queue::{OVERFLOWS_MAP, PROG},
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{AttachError, Mode, PortLabels, Probe, ProbeDef, ProbeError, set_counter, snmp_value};
use crate::{
    config::{AcceptQueueMode, Config},
    kernel,
    resources::disk::parse_mountinfo,
    sockdiag::{Listener, SockDiag},
    store::names,
};

const NAME: &str = "accept_queue";

/// The kernel object, built by `agent/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/accept_queue"));

pub const DEF: ProbeDef = ProbeDef {
    name: NAME,
    enabled: |c| c.probes.accept_queue.enabled,
    start,
};

/// The probe's metric families.
#[derive(Clone, Default)]
struct Metrics {
    overflows: Family<PortLabels, Counter>,
    length: Family<PortLabels, Gauge>,
    max: Family<PortLabels, Gauge>,
}

fn start(cfg: &Config, registry: &mut Registry) -> Box<dyn Probe> {
    let metrics = Metrics::default();
    registry.register(
        names::TCP_LISTEN_OVERFLOWS,
        "Connections dropped because the listener's accept queue was full, by listening port (all: host-wide, procfs mode)",
        metrics.overflows.clone(),
    );
    registry.register(
        names::TCP_LISTEN_QUEUE_LENGTH,
        "Connections waiting in the listener's accept queue (ss Recv-Q), by listening port",
        metrics.length.clone(),
    );
    registry.register(
        names::TCP_LISTEN_QUEUE_MAX,
        "Limit of the listener's accept queue (listen() backlog, ss Send-Q), by listening port",
        metrics.max.clone(),
    );
    let conf = &cfg.probes.accept_queue;
    let ports = conf.ports.0.clone();
    let diag = SockDiag::open();
    let netstat = cfg.proc_root.join("net/netstat");

    let mut source = None;
    if matches!(conf.mode, AcceptQueueMode::Auto | AcceptQueueMode::Ebpf) {
        match Kernel::attach(&ports, &cfg.proc_root) {
            Ok(k) => source = Some(Source::Ebpf(k)),
            Err(e) if diag.is_ok() => tracing::warn!(
                probe = NAME, error = %e,
                "eBPF unavailable; counting per-listener drops from sock_diag instead"
            ),
            Err(e) => tracing::warn!(
                probe = NAME, error = %e,
                "eBPF unavailable; counting host-wide ListenOverflows from /proc/net/netstat under port=\"all\""
            ),
        }
    }
    let source = source.unwrap_or_else(|| match (&diag, conf.mode) {
        (Ok(_), AcceptQueueMode::Auto | AcceptQueueMode::Ebpf | AcceptQueueMode::SockDiag) => {
            Source::SockDiag(DropTracker::default())
        }
        (Err(e), AcceptQueueMode::SockDiag) => {
            tracing::warn!(
                probe = NAME, error = %e,
                "sock_diag unavailable; counting host-wide ListenOverflows from /proc/net/netstat under port=\"all\""
            );
            Source::Procfs(netstat.clone())
        }
        _ => Source::Procfs(netstat.clone()),
    });
    // Queue gauges come from sock_diag in every mode where it works.
    let diag = match diag {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(probe = NAME, error = %e, "sock_diag unavailable; no queue-length gauges");
            None
        }
    };
    if !matches!(source, Source::Procfs(_)) {
        for &port in &ports {
            let _ = metrics.overflows.get_or_create(&PortLabels::of(port));
        }
    }
    Box::new(AcceptQueue {
        ports,
        metrics,
        diag,
        source,
    })
}

/// Where the overflow counts come from.
enum Source {
    Ebpf(Kernel),
    SockDiag(DropTracker),
    Procfs(PathBuf),
}

struct AcceptQueue {
    ports: Vec<u16>,
    metrics: Metrics,
    diag: Option<SockDiag>,
    source: Source,
}

impl Probe for AcceptQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mode(&self) -> Mode {
        match self.source {
            Source::Ebpf(_) => Mode::Ebpf,
            Source::SockDiag(_) => Mode::SockDiag,
            Source::Procfs(_) => Mode::Procfs,
        }
    }

    fn attach_method(&self) -> String {
        match &self.source {
            Source::Ebpf(k) => k.attach.clone(),
            Source::SockDiag(_) => "sock_diag inet_diag: per-listener drops (sk_drops)".into(),
            Source::Procfs(p) => {
                format!("procfs {} TcpExt: ListenOverflows (host-wide)", p.display())
            }
        }
    }

    fn collect(&mut self) -> Result<(), ProbeError> {
        let listeners = match self.diag.as_mut() {
            Some(d) => Some(d.listeners().map_err(|e| ProbeError::Parse {
                path: "sock_diag".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        if let Some(listeners) = &listeners {
            self.set_queues(listeners);
        }
        match &mut self.source {
            Source::Ebpf(k) => {
                for entry in k.counts.iter() {
                    let (port, per_cpu) = entry.map_err(|source| ProbeError::Map {
                        map: OVERFLOWS_MAP,
                        source,
                    })?;
                    set_counter(
                        &self.metrics.overflows,
                        PortLabels::of(port),
                        per_cpu.iter().sum(),
                    );
                }
            }
            Source::SockDiag(tracker) => {
                let listeners = listeners.as_deref().unwrap_or_default();
                for (port, total) in tracker.update(&self.ports, listeners) {
                    set_counter(&self.metrics.overflows, PortLabels::of(port), total);
                }
            }
            Source::Procfs(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(&*path).map_err(|source| ProbeError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let value = snmp_value(&text, "TcpExt", "ListenOverflows").ok_or_else(|| {
                    ProbeError::Parse {
                        path: shown,
                        message: "no TcpExt: ListenOverflows".into(),
                    }
                })?;
                set_counter(&self.metrics.overflows, PortLabels::all(), value);
            }
        }
        Ok(())
    }
}

impl AcceptQueue {
    /// Queue length and limit per watched port, summed over its listeners (IPv4 and IPv6,
    /// SO_REUSEPORT groups); a port without a listener has no gauge.
    fn set_queues(&self, listeners: &[Listener]) {
        let mut per_port: BTreeMap<u16, (i64, i64)> = BTreeMap::new();
        for l in listeners.iter().filter(|l| self.ports.contains(&l.port)) {
            let e = per_port.entry(l.port).or_default();
            e.0 += i64::from(l.queue_length);
            e.1 += i64::from(l.queue_max);
        }
        for &port in &self.ports {
            let labels = PortLabels::of(port);
            match per_port.get(&port) {
                Some(&(length, max)) => {
                    self.metrics.length.get_or_create(&labels).set(length);
                    self.metrics.max.get_or_create(&labels).set(max);
                }
                None => {
                    self.metrics.length.remove(&labels);
                    self.metrics.max.remove(&labels);
                }
            }
        }
    }
}

/// Turns per-listener drop counts, which restart at 0 with each new listener, into one
/// monotonic total per port. Listeners present at the first reading are a baseline.
#[derive(Default)]
struct DropTracker {
    seen_once: bool,
    last: HashMap<(u16, u32), u32>,
    totals: BTreeMap<u16, u64>,
}

impl DropTracker {
    fn update(&mut self, ports: &[u16], listeners: &[Listener]) -> Vec<(u16, u64)> {
        let mut now = HashMap::new();
        for l in listeners.iter().filter(|l| ports.contains(&l.port)) {
            let key = (l.port, l.inode);
            let before = match self.last.get(&key) {
                Some(&b) => b,
                None if self.seen_once => 0,
                None => l.drops,
            };
            *self.totals.entry(l.port).or_default() += u64::from(l.drops.wrapping_sub(before));
            now.insert(key, l.drops);
        }
        self.last = now;
        self.seen_once = true;
        ports
            .iter()
            .map(|&p| (p, self.totals.get(&p).copied().unwrap_or(0)))
            .collect()
    }
}

/// The eBPF mode: owns the loaded object, so dropping it detaches the program.
struct Kernel {
    _ebpf: Ebpf,
    counts: PerCpuHashMap<MapData, u16, u64>,
    attach: String,
}

impl Kernel {
    fn attach(ports: &[u16], proc_root: &Path) -> Result<Self, AttachError> {
        let offsets = offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("ACCEPTQ_OFFSETS", &offsets, true)
            .load(OBJECT)?;
        let mut counts: PerCpuHashMap<_, u16, u64> = ebpf
            .take_map(OVERFLOWS_MAP)
            .ok_or(AttachError::Missing(OVERFLOWS_MAP))?
            .try_into()?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
        for &port in ports {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                .map_err(|e| AttachError::Cpus(e.to_string()))?;
            counts.insert(port, zeros, 0)?;
        }
        let root = cgroup2_root(proc_root)?;
        let path = root.display().to_string();
        let program = |source| AttachError::Program { name: PROG, source };
        let prog: &mut CgroupSkb = ebpf
            .program_mut(PROG)
            .ok_or(AttachError::Missing(PROG))?
            .try_into()
            .map_err(program)?;
        prog.load().map_err(program)?;
        // Other cgroup programs (systemd's IP accounting and firewalling, ...) must keep
        // working below the root, so the program is attached in multi mode. From 5.7 aya
        // attaches through a bpf_link, which takes no flags and which the kernel always
        // attaches as multi; before that, prog_attach with BPF_F_ALLOW_MULTI, and exclusive
        // mode only where the kernel refuses multi.
        let links = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 7, 0));
        let modes: &[(CgroupAttachMode, &str)] = if links {
            &[(CgroupAttachMode::Single, "bpf_link, multi")]
        } else {
            &[
                (CgroupAttachMode::AllowMultiple, "prog_attach, multi"),
                (CgroupAttachMode::Single, "prog_attach, exclusive"),
            ]
        };
        let mut errors = Vec::new();
        let mut how = None;
        for &(mode, label) in modes {
            let cgroup = File::open(&root).map_err(|source| AttachError::Open {
                path: path.clone(),
                source,
            })?;
            match prog.attach(cgroup, CgroupSkbAttachType::Ingress, mode) {
                Ok(_) => {
                    how = Some(label);
                    break;
                }
                Err(e) => errors.push(format!("{label}: {e}")),
            }
        }
        let Some(how) = how else {
            return Err(AttachError::Attach {
                path,
                errors: errors.join("; "),
            });
        };
        Ok(Self {
            _ebpf: ebpf,
            counts,
            attach: format!("cgroup_skb ingress on {path} ({how})"),
        })
    }
}

/// Offsets of the backlog fields from the start of `struct tcp_sock`, which is what
/// `bpf_skc_to_tcp_sock` points at: tcp_sock → inet_connection_sock → inet_sock → sock.
fn offsets() -> Result<AcceptqOffsets, kernel::KernelError> {
    let sock = kernel::member_offset("tcp_sock", "inet_conn")?
        + kernel::member_offset("inet_connection_sock", "icsk_inet")?
        + kernel::member_offset("inet_sock", "sk")?;
    Ok(AcceptqOffsets {
        ack_backlog: sock + kernel::member_offset("sock", "sk_ack_backlog")?,
        max_ack_backlog: sock + kernel::member_offset("sock", "sk_max_ack_backlog")?,
        valid: 1,
    })
}

/// The first cgroup v2 mount in `<proc>/self/mountinfo`.
fn cgroup2_root(proc_root: &Path) -> Result<PathBuf, AttachError> {
    let path = proc_root.join("self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| AttachError::Open {
        path: path.display().to_string(),
        source,
    })?;
    cgroup2_mount(&text).ok_or_else(|| AttachError::NoCgroup2(path.display().to_string()))
}

/// The mount point of the first `cgroup2` line of mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    35 24 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
                    36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                    37 35 0:32 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let odd = "36 35 0:31 / /mnt/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(odd), Some(PathBuf::from("/mnt/my cgroup")));
        assert_eq!(cgroup2_mount("garbage\n - \n"), None);
    }

    fn l(port: u16, inode: u32, drops: u32) -> Listener {
        Listener {
            port,
            queue_length: 0,
            queue_max: 0,
            drops,
            inode,
        }
    }

    #[test]
    fn drop_tracker_follows_restarted_listeners() {
        let mut t = DropTracker::default();
        // Listeners already there at start are a baseline.
        assert_eq!(
            t.update(&[80, 81], &[l(80, 1, 5), l(9, 2, 7)]),
            vec![(80, 0), (81, 0)]
        );
        assert_eq!(t.update(&[80, 81], &[l(80, 1, 8)]), vec![(80, 3), (81, 0)]);
        // The server restarts: a new socket starts again at 0 and its drops add on.
        assert_eq!(t.update(&[80, 81], &[]), vec![(80, 3), (81, 0)]);
        assert_eq!(
            t.update(&[80, 81], &[l(80, 3, 2), l(81, 4, 1)]),
            vec![(80, 5), (81, 1)]
        );
        // IPv4 and IPv6 listeners on one port both count.
        assert_eq!(
            t.update(&[80, 81], &[l(80, 3, 4), l(80, 5, 1), l(81, 4, 1)]),
            vec![(80, 8), (81, 1)]
        );
    }
}
