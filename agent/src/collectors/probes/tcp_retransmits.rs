//! TCP retransmits per watched port, counted in segments as the kernel counts them.
//!
//! eBPF: raw tracepoints `tcp_retransmit_skb` and `tcp_retransmit_synack` add to a map keyed
//! by port and the socket's cgroup (told apart as containers); the kernel's count of times it
//! had to skip them is exported too. A `cgroup_skb` egress program counts the segments sent
//! the same way, so rules can use the kernel's own ratio (retransmitted / sent).
//! Fallback: the host-wide `Tcp: RetransSegs` of `/proc/net/snmp`, exported under
//! `port="all"`.

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSkbAttachType, RawTracePoint},
};
use nodewatch_common::{
    PortBits, PortIndex, RetransOffsets,
    tcp_retransmits::{
        COUNTS_MAP, MAX_PORTS, OTHER_PORT, PORTS_GLOBAL, PROG_SENT, PROG_SKB, PROG_SYNACK,
        SENT_INDEX_GLOBAL, SENT_MAP, SENT_SLOTS_MAP,
    },
};
use serde::Deserialize;

use super::{
    ebpf::{self, AttachError},
    kernel,
    ports::{CountMapName, PortCounts, PortFamily, export_procfs},
};
use crate::{
    collectors::{
        collector::{CollectError, Collector, Env, Mode},
        containers::SharedContainers,
    },
    store::{Store, names},
    yaml::Ports,
};

pub const NAME: &str = "tcp_retransmits";

/// The kernel object, built by `agent/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_retransmits"));

/// `probes.tcp_retransmits:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpRetransmitsConfig {
    /// Whether the probe runs. Default `true`.
    pub enabled: bool,
    /// Ports to count separately; a connection matches when either end uses one. Everything
    /// else is counted under `port="other"`. Default `[8000, 8001, 8080]`; at most 256 ports,
    /// each 1–65535, no duplicates.
    pub ports: Ports<{ MAX_PORTS as usize }>,
}

impl Default for TcpRetransmitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Ports(vec![8000, 8001, 8080]),
        }
    }
}

/// Registers the probe's counter and starts it: eBPF, else the procfs fallback.
pub fn start(cfg: &TcpRetransmitsConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let segments = PortFamily::default();
    store.register(
        names::TCP_RETRANSMITS,
        "TCP segments retransmitted, by watched port at either end of the connection (other: the rest; all: host-wide, procfs mode) and the socket's container",
        segments.clone(),
    );
    let sent = PortFamily::default();
    store.register(
        names::TCP_SEGMENTS_SENT,
        "TCP segments sent on watched ports, retransmits included (the kernel's OutSegs + RetransSegs), by port and container as the retransmits: the denominator of the retransmit ratio",
        sent.clone(),
    );
    match Kernel::attach(&cfg.ports.0, (segments.clone(), sent), env) {
        Ok(k) => Box::new(k),
        Err(e) => {
            tracing::warn!(
                probe = NAME,
                error = %e,
                "eBPF unavailable; counting host-wide RetransSegs from /proc/net/snmp under port=\"all\""
            );
            Box::new(Procfs {
                path: env.proc_root.join("net/snmp"),
                segments,
            })
        }
    }
}

/// The eBPF mode: owns the loaded object, so dropping it detaches the programs.
struct Kernel {
    ebpf: Ebpf,
    counts: PortCounts,
    segments: PortFamily,
    /// Segments sent, where the egress program attached.
    sent: Option<(PortCounts, PortFamily, String)>,
}

impl Kernel {
    fn attach(
        ports: &[u16],
        (segments, sent_family): (PortFamily, PortFamily),
        env: Env<'_>,
    ) -> Result<Self, AttachError> {
        let offsets = offsets()?;
        let watched = PortBits::of(ports);
        let index = Box::new(PortIndex::of(ports));
        let mut ebpf = EbpfLoader::new()
            .override_global("RETRANS_OFFSETS", &offsets, true)
            .override_global(PORTS_GLOBAL, &watched, true)
            .override_global(SENT_INDEX_GLOBAL, index.as_ref(), true)
            .load(OBJECT)?;
        let containers: &SharedContainers = env.containers;
        let counts = PortCounts::take(
            &mut ebpf,
            CountMapName::Shared(COUNTS_MAP),
            ports,
            &[OTHER_PORT],
            containers,
        )?;
        // Segments sent are counted for watched ports only: an unwatched packet's test ends
        // at its ports.
        let sent = PortCounts::take(
            &mut ebpf,
            CountMapName::PerCpu(SENT_MAP),
            ports,
            &[],
            containers,
        )?
        .with_slots(&mut ebpf, SENT_SLOTS_MAP, ports)?;
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
        // Segments sent, for the ratio: without them the retransmits still count.
        let sent = match ebpf::attach_cgroup_skb(
            &mut ebpf,
            PROG_SENT,
            env.proc_root,
            CgroupSkbAttachType::Egress,
        ) {
            Ok(how) => Some((sent, sent_family, how)),
            Err(e) => {
                tracing::warn!(probe = NAME, error = %e, "cannot count segments sent; retransmits are counted, their ratio is not");
                None
            }
        };
        let mut k = Self {
            ebpf,
            counts,
            segments,
            sent,
        };
        // Every watched port (and `other`) has a series from the start.
        k.collect()
            .map_err(|e| AttachError::FirstRead(e.to_string()))?;
        Ok(k)
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
        // sock_cgroup_data.cgroup is the socket's cgroup v2; its kernfs node's id is the
        // cgroup id that bpf_get_current_cgroup_id and cgroupfs inode numbers use.
        sk_cgroup: kernel::member_offset("sock", "sk_cgrp_data")?
            + kernel::member_offset("sock_cgroup_data", "cgroup")?,
        cgroup_kn: kernel::member_offset("cgroup", "kn")?,
        kn_id: kernel::member_offset("kernfs_node", "id")?,
        valid: 1,
    })
}

impl Collector for Kernel {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Ebpf)
    }
    fn attach_method(&self) -> String {
        let tp = "raw tracepoint tcp_retransmit_skb, tcp_retransmit_synack";
        match &self.sent {
            Some((_, _, how)) => format!("{tp}; segments sent: {how}"),
            None => format!("{tp}; segments sent: not counted"),
        }
    }
    fn missed_events(&self) -> u64 {
        ebpf::programs_missed(&self.ebpf, &[PROG_SKB, PROG_SYNACK])
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        self.counts.export(&self.segments)?;
        if let Some((counts, family, _)) = &mut self.sent {
            counts.export(family)?;
        }
        Ok(())
    }
}

/// The procfs mode: host-wide, from the kernel's SNMP counters.
struct Procfs {
    path: PathBuf,
    segments: PortFamily,
}

impl Collector for Procfs {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Procfs)
    }
    fn attach_method(&self) -> String {
        format!(
            "procfs {} Tcp: RetransSegs (host-wide)",
            self.path.display()
        )
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        export_procfs(&self.path, "Tcp", "RetransSegs", &self.segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::probes::ports::{PortLabels, snmp_value};

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
        let segments = PortFamily::default();
        let mut p = Procfs {
            path: dir.join("net/snmp"),
            segments: segments.clone(),
        };
        p.collect().unwrap();
        assert_eq!(segments.get_or_create(&PortLabels::all()).get(), 42);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            p.collect().is_err(),
            "a vanished file is an error, not a panic"
        );
    }
}
