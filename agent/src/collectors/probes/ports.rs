//! What both TCP probes share: the `{port}` label, the per-CPU counters their programs keep
//! per watched port, and the host-wide `/proc` counter they fall back to.

use std::path::Path;

use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use nodewatch_common::tcp_retransmits::OTHER_PORT;
use prometheus_client::metrics::counter::Counter;

use super::ebpf::AttachError;
use crate::{
    collectors::collector::CollectError,
    store::{Family, label_set, set_total},
};

label_set! {
    /// Labels `{port}`: a watched port, `other` (the rest), or `all` (a host-wide fallback).
    pub struct PortLabels { pub port }
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

/// Counters per port.
pub type PortFamily = Family<PortLabels, Counter>;

/// Sets the counter of `labels` to a total kept elsewhere.
pub fn set_counter(family: &PortFamily, labels: PortLabels, total: u64) {
    set_total(&family.get_or_create(&labels), total);
}

/// A per-CPU kernel map of counts by port, which a probe's program adds to.
pub struct PortCounts {
    map: PerCpuHashMap<MapData, u16, u64>,
    name: &'static str,
}

impl PortCounts {
    /// Takes map `name` from `ebpf` and creates a zeroed slot for each of `ports`, so the
    /// programs never insert (and every watched port has a series from the start).
    pub fn take(
        ebpf: &mut aya::Ebpf,
        name: &'static str,
        ports: &[u16],
    ) -> Result<Self, AttachError> {
        let mut map: PerCpuHashMap<_, u16, u64> = ebpf
            .take_map(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
        for &port in ports {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                .map_err(|e| AttachError::Cpus(e.to_string()))?;
            map.insert(port, zeros, 0)?;
        }
        Ok(Self { map, name })
    }

    /// Copies every port's total, summed over the CPUs, into `family`.
    pub fn export(&self, family: &PortFamily) -> Result<(), CollectError> {
        for entry in self.map.iter() {
            let (port, per_cpu) = entry.map_err(|source| CollectError::Map {
                map: self.name,
                source,
            })?;
            set_counter(family, PortLabels::of(port), per_cpu.iter().sum());
        }
        Ok(())
    }
}

/// A host-wide counter of `/proc/net/snmp` or `/proc/net/netstat` (`proto: field`), the
/// fallback of a probe without eBPF, exported under `port="all"`.
pub fn export_procfs(
    path: &Path,
    proto: &str,
    field: &str,
    family: &PortFamily,
) -> Result<(), CollectError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CollectError::Read {
        path: shown.clone(),
        source,
    })?;
    let value = snmp_value(&text, proto, field).ok_or_else(|| CollectError::Parse {
        path: shown,
        message: format!("no {proto}: {field}"),
    })?;
    set_counter(family, PortLabels::all(), value);
    Ok(())
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
