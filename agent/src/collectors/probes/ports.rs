//! What both TCP probes share: the `{port}` label (with the owner's), the counters their
//! programs keep per watched port and cgroup, and the host-wide `/proc` counter they fall
//! back to.

use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
use nodewatch_common::{FULL_CGROUP, PortCgroup, tcp_retransmits::OTHER_PORT};
use prometheus_client::metrics::counter::Counter;

use super::{
    ebpf::AttachError,
    owners::{Entry, Owners, Totals},
};
use crate::{
    collectors::{collector::CollectError, containers::SharedContainers},
    store::{Family, OwnerLabels, label_set, set_total},
};

label_set! {
    /// Labels `{port}` and the owner (`container`, `pod`; none for the host): a watched
    /// port, `other` (the rest), or `all` (a host-wide fallback).
    pub struct PortLabels { pub port; owner pub owner }
}

impl PortLabels {
    /// A watched port of the host; `OTHER_PORT` (0) is the `other` slot.
    pub fn of(port: u16) -> Self {
        Self::owned(port, OwnerLabels::HOST)
    }

    /// A watched port of `owner`.
    pub fn owned(port: u16, owner: OwnerLabels) -> Self {
        let port = if port == OTHER_PORT {
            "other".to_string()
        } else {
            port.to_string()
        };
        Self { port, owner }
    }

    /// The host-wide series of a procfs fallback.
    pub fn all() -> Self {
        Self {
            port: "all".into(),
            owner: OwnerLabels::HOST,
        }
    }
}

/// Counters per port.
pub type PortFamily = Family<PortLabels, Counter>;

/// Sets the counter of `labels` to a total kept elsewhere.
pub fn set_counter(family: &PortFamily, labels: PortLabels, total: u64) {
    set_total(&family.get_or_create(&labels), total);
}

/// A kernel map of counts by (port, cgroup), which a probe's program adds to.
pub struct PortCounts {
    map: CountMap,
    name: &'static str,
    owners: Owners,
    totals: Totals<PortLabels, u64>,
    /// The host's series of every watched port, exported from the start.
    fixed: Vec<PortLabels>,
}

/// How a program keeps its counts: one value shared by every CPU (rare events), or one per
/// CPU (every packet), summed here.
pub enum CountMap {
    Shared(HashMap<MapData, PortCgroup, u64>),
    PerCpu(PerCpuHashMap<MapData, PortCgroup, u64>),
}

/// Which map a [`PortCounts`] takes, by name.
pub enum CountMapName {
    Shared(&'static str),
    PerCpu(&'static str),
}

impl PortCounts {
    /// Takes the counter map `which` from `ebpf` and creates the zeroed `(port, FULL_CGROUP)`
    /// key of each of `ports` and `extra` (slots the programs use but nobody configures,
    /// like `other`).
    pub fn take(
        ebpf: &mut aya::Ebpf,
        which: CountMapName,
        ports: &[u16],
        extra: &[u16],
        containers: &SharedContainers,
    ) -> Result<Self, AttachError> {
        let all: Vec<u16> = ports.iter().chain(extra).copied().collect();
        let (map, name) = match which {
            CountMapName::Shared(name) => {
                let mut map: HashMap<_, PortCgroup, u64> = ebpf
                    .take_map(name)
                    .ok_or(AttachError::Missing(name))?
                    .try_into()?;
                for &port in &all {
                    map.insert(PortCgroup::new(port, FULL_CGROUP), 0, 0)?;
                }
                (CountMap::Shared(map), name)
            }
            CountMapName::PerCpu(name) => {
                let mut map: PerCpuHashMap<_, PortCgroup, u64> = ebpf
                    .take_map(name)
                    .ok_or(AttachError::Missing(name))?
                    .try_into()?;
                let cpus = aya::util::nr_cpus()
                    .map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
                for &port in &all {
                    let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                        .map_err(|e| AttachError::Cpus(e.to_string()))?;
                    map.insert(PortCgroup::new(port, FULL_CGROUP), zeros, 0)?;
                }
                (CountMap::PerCpu(map), name)
            }
        };
        Ok(Self {
            map,
            name,
            owners: Owners::new(containers),
            totals: Totals::<PortLabels, u64>::default(),
            fixed: all.into_iter().map(PortLabels::of).collect(),
        })
    }

    /// Copies every (port, owner)'s total into `family`; removes the series of containers
    /// gone past the retention, and deletes their keys from the kernel map.
    pub fn export(&mut self, family: &PortFamily) -> Result<(), CollectError> {
        let name = self.name;
        let map_err = |source| CollectError::Map { map: name, source };
        let mut entries = Vec::new();
        let mut push = |key: PortCgroup, value: u64| {
            // The FULL_CGROUP slots only count when the map is full: unused, they are not
            // a series of their own.
            if key.cgroup == FULL_CGROUP && value == 0 {
                return;
            }
            entries.push(Entry {
                key,
                cgroup: key.cgroup,
                value,
            });
        };
        match &self.map {
            CountMap::Shared(map) => {
                for entry in map.iter() {
                    let (key, value) = entry.map_err(map_err)?;
                    push(key, value);
                }
            }
            CountMap::PerCpu(map) => {
                for entry in map.iter() {
                    let (key, values) = entry.map_err(map_err)?;
                    push(key, values.iter().sum());
                }
            }
        }
        let map = &mut self.map;
        let update = self.totals.update(
            std::time::Instant::now(),
            &mut self.owners,
            entries,
            &self.fixed,
            |k: &PortCgroup, owner| PortLabels::owned(k.port, owner),
            |k| {
                let _ = match map {
                    CountMap::Shared(m) => m.remove(k),
                    CountMap::PerCpu(map) => map.remove(k),
                };
            },
        );
        for s in &update.removed {
            family.remove(s);
        }
        for (labels, total) in update.totals {
            set_counter(family, labels, total);
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
