//! TCP retransmits per watched port, counted in segments as the kernel counts them.
//!
//! eBPF: raw tracepoints `tcp_retransmit_skb` and `tcp_retransmit_synack` add to a per-CPU
//! map keyed by port; the kernel's count of times it had to skip them is exported too. Fallback: the host-wide `Tcp: RetransSegs` of `/proc/net/snmp`,
//! exported under `port="all"`.

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuHashMap, PerCpuValues},
    programs::RawTracePoint,
};
use nodewatch_common::{
    RetransOffsets,
    tcp_retransmits::{COUNTS_MAP, OTHER_PORT, PROG_SKB, PROG_SYNACK},
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{AttachError, Mode, PortLabels, Probe, ProbeDef, ProbeError, set_counter, snmp_value};
use crate::{config::Config, kernel, store::names};

const NAME: &str = "tcp_retransmits";

/// The kernel object, built by `agent/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_retransmits"));

pub const DEF: ProbeDef = ProbeDef {
    name: NAME,
    enabled: |c| c.probes.tcp_retransmits.enabled,
    start,
};

type Segments = Family<PortLabels, Counter>;

fn start(cfg: &Config, registry: &mut Registry) -> Box<dyn Probe> {
    let segments = Segments::default();
    registry.register(
        names::TCP_RETRANSMITS,
        "TCP segments retransmitted, by watched port at either end of the connection (other: the rest; all: host-wide, procfs mode)",
        segments.clone(),
    );
    match Kernel::attach(&cfg.probes.tcp_retransmits.ports.0, segments.clone()) {
        Ok(k) => Box::new(k),
        Err(e) => {
            tracing::warn!(
                probe = NAME,
                error = %e,
                "eBPF unavailable; counting host-wide RetransSegs from /proc/net/snmp under port=\"all\""
            );
            Box::new(Procfs {
                path: cfg.proc_root.join("net/snmp"),
                segments,
            })
        }
    }
}

/// The eBPF mode: owns the loaded object, so dropping it detaches both programs.
struct Kernel {
    _ebpf: Ebpf,
    counts: PerCpuHashMap<aya::maps::MapData, u16, u64>,
    segments: Segments,
}

impl Kernel {
    fn attach(ports: &[u16], segments: Segments) -> Result<Self, AttachError> {
        let offsets = offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("RETRANS_OFFSETS", &offsets, true)
            .load(OBJECT)?;
        let mut counts: PerCpuHashMap<_, u16, u64> = ebpf
            .take_map(COUNTS_MAP)
            .ok_or(AttachError::Missing(COUNTS_MAP))?
            .try_into()?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
        // Every slot exists before the programs run, so they never insert.
        for &port in ports.iter().chain([&OTHER_PORT]) {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                .map_err(|e| AttachError::Cpus(e.to_string()))?;
            counts.insert(port, zeros, 0)?;
            let _ = segments.get_or_create(&PortLabels::of(port));
        }
        for prog in [PROG_SKB, PROG_SYNACK] {
            let err = |source| AttachError::Program { name: prog, source };
            let tp: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or(AttachError::Missing(prog))?
                .try_into()
                .map_err(err)?;
            tp.load().map_err(err)?;
            // The program is named after its tracepoint.
            tp.attach(prog).map_err(err)?;
        }
        Ok(Self {
            _ebpf: ebpf,
            counts,
            segments,
        })
    }
}

/// Where the programs find their fields on this kernel, from its BTF.
fn offsets() -> Result<RetransOffsets, kernel::KernelError> {
    // tcp_skb_pcount(skb) is TCP_SKB_CB(skb)->tcp_gso_segs, and TCP_SKB_CB is skb->cb.
    let gso_segs = kernel::member_offset("sk_buff", "cb")?
        + kernel::member_offset("tcp_skb_cb", "tcp_gso_segs")?;
    // A sock starts with its sock_common; a request_sock has one at __req_common.
    Ok(RetransOffsets {
        skc_num: kernel::member_offset("sock", "__sk_common")?
            + kernel::member_offset("sock_common", "skc_num")?,
        skc_dport: kernel::member_offset("sock", "__sk_common")?
            + kernel::member_offset("sock_common", "skc_dport")?,
        req_common: kernel::member_offset("request_sock", "__req_common")?,
        skb_gso_segs: gso_segs,
        valid: 1,
    })
}

impl Probe for Kernel {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }
    fn attach_method(&self) -> String {
        "raw tracepoint tcp_retransmit_skb, tcp_retransmit_synack".into()
    }
    fn missed_events(&self) -> u64 {
        super::programs_missed(&self._ebpf, &[PROG_SKB, PROG_SYNACK])
    }
    fn collect(&mut self) -> Result<(), ProbeError> {
        for entry in self.counts.iter() {
            let (port, per_cpu) = entry.map_err(|source| ProbeError::Map {
                map: COUNTS_MAP,
                source,
            })?;
            let total: u64 = per_cpu.iter().sum();
            set_counter(&self.segments, PortLabels::of(port), total);
        }
        Ok(())
    }
}

/// The procfs mode: host-wide, from the kernel's SNMP counters.
struct Procfs {
    path: PathBuf,
    segments: Segments,
}

impl Probe for Procfs {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Mode {
        Mode::Procfs
    }
    fn attach_method(&self) -> String {
        format!(
            "procfs {} Tcp: RetransSegs (host-wide)",
            self.path.display()
        )
    }
    fn collect(&mut self) -> Result<(), ProbeError> {
        let path = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|source| ProbeError::Read {
            path: path.clone(),
            source,
        })?;
        let value = snmp_value(&text, "Tcp", "RetransSegs").ok_or_else(|| ProbeError::Parse {
            path,
            message: "no Tcp: RetransSegs".into(),
        })?;
        set_counter(&self.segments, PortLabels::all(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\nTcp: 1 200 120000 -1 10 5 0 1 3 1000 900 42 0 7 0\nUdp: InDatagrams\nUdp: 5\n";

    #[test]
    fn reads_retrans_segs() {
        assert_eq!(snmp_value(SNMP, "Tcp", "RetransSegs"), Some(42));
        assert_eq!(
            snmp_value(SNMP, "Tcp", "MaxConn"),
            None,
            "-1 is not a counter"
        );
        assert_eq!(snmp_value(SNMP, "Udp", "InDatagrams"), Some(5));
        assert_eq!(snmp_value(SNMP, "Tcp", "Nope"), None);
        assert_eq!(snmp_value("", "Tcp", "RetransSegs"), None);
    }

    #[test]
    fn procfs_mode_exports_port_all() {
        let dir = std::env::temp_dir().join(format!("nw-snmp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(dir.join("net/snmp"), SNMP).unwrap();
        let segments = Segments::default();
        let mut p = Procfs {
            path: dir.join("net/snmp"),
            segments: segments.clone(),
        };
        p.collect().unwrap();
        assert_eq!(
            segments
                .get_or_create(&PortLabels { port: "all".into() })
                .get(),
            42
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            p.collect().is_err(),
            "a vanished file is an error, not a panic"
        );
    }
}
