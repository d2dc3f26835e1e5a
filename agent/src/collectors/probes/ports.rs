//! What both TCP probes share: the `{port}` label (with the owner's), the counters their
//! programs keep per watched port and cgroup, and the host-wide `/proc` counter they fall
//! back to.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use nodewatch_common::{FULL_CGROUP, PortCgroup, PortSlot, tcp_retransmits::OTHER_PORT};
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
    /// Per-port slots the program counts one cgroup in, beside the hash.
    slots: Option<PortSlots>,
}

/// A per-CPU array of [`PortSlot`]s, one per watched port: the program counts there the
/// segments of the one cgroup this side gave the slot (none at first), and the rest of the
/// port's cgroups in the hash. Each export adds a slot's count to its (port, cgroup) entry,
/// then gives each free slot the cgroup with the most counted in the hash for its port. A
/// slot is given back when its cgroup goes: the series keeps its total, and a packet still
/// sent from a socket of the gone cgroup counts in the hash again.
struct PortSlots {
    map: PerCpuArray<MapData, PortSlot>,
    /// Port → (slot, its cgroup, or FULL_CGROUP while free).
    ports: BTreeMap<u16, (u32, u64)>,
    cpus: usize,
}

impl PortSlots {
    fn set(&mut self, port: u16, cgroup: u64) -> Result<(), aya::maps::MapError> {
        let Some(&mut (slot, ref mut owner)) = self.ports.get_mut(&port) else {
            return Ok(());
        };
        let values = PerCpuValues::try_from(vec![PortSlot { cgroup, segs: 0 }; self.cpus])
            .map_err(|e| {
                aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "slot values",
                    io_error: e,
                })
            })?;
        self.map.set(slot, values, 0)?;
        *owner = cgroup;
        Ok(())
    }
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
            slots: None,
        })
    }

    /// Takes the per-port slot array `name` too (slot `i` for `ports[i]`), every slot free.
    pub fn with_slots(
        mut self,
        ebpf: &mut aya::Ebpf,
        name: &'static str,
        ports: &[u16],
    ) -> Result<Self, AttachError> {
        let map = ebpf
            .take_map(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
        let mut slots = PortSlots {
            map,
            ports: ports
                .iter()
                .enumerate()
                .map(|(i, &p)| (p, (i as u32, FULL_CGROUP)))
                .collect(),
            cpus,
        };
        for &p in ports {
            slots.set(p, FULL_CGROUP)?;
        }
        self.slots = Some(slots);
        Ok(self)
    }

    /// Copies every (port, owner)'s total into `family`; removes the series of containers
    /// gone past the retention, and deletes their keys from the kernel map.
    pub fn export(&mut self, family: &PortFamily) -> Result<(), CollectError> {
        let name = self.name;
        let map_err = |source| CollectError::Map { map: name, source };
        // By key: a slot's count adds to its (port, cgroup)'s hash entry.
        let mut values: BTreeMap<PortCgroup, u64> = BTreeMap::new();
        match &self.map {
            CountMap::Shared(map) => {
                for entry in map.iter() {
                    let (key, value) = entry.map_err(map_err)?;
                    values.insert(key, value);
                }
            }
            CountMap::PerCpu(map) => {
                for entry in map.iter() {
                    let (key, per_cpu) = entry.map_err(map_err)?;
                    values.insert(key, per_cpu.iter().sum());
                }
            }
        }
        if let Some(slots) = &mut self.slots {
            let slot_err = |source| CollectError::Map {
                map: "port slots",
                source,
            };
            for (&port, &(slot, cgroup)) in &slots.ports {
                if cgroup == FULL_CGROUP {
                    continue;
                }
                let per_cpu = slots.map.get(&slot, 0).map_err(slot_err)?;
                // Only this side writes a slot's cgroup, the same on every CPU.
                let n: u64 = per_cpu
                    .iter()
                    .filter(|s| s.cgroup == cgroup)
                    .map(|s| s.segs)
                    .sum();
                *values.entry(PortCgroup::new(port, cgroup)).or_default() += n;
            }
            // Each free slot to the cgroup with the most segments on its port so far.
            let free: Vec<u16> = slots
                .ports
                .iter()
                .filter(|(_, (_, c))| *c == FULL_CGROUP)
                .map(|(&p, _)| p)
                .collect();
            for port in free {
                let best = values
                    .iter()
                    .filter(|(k, _)| k.port == port && k.cgroup != FULL_CGROUP)
                    .max_by_key(|(_, v)| **v)
                    .map(|(k, _)| k.cgroup);
                if let Some(cgroup) = best {
                    slots.set(port, cgroup).map_err(slot_err)?;
                }
            }
        }
        let mut entries = Vec::new();
        for (key, value) in values {
            // The FULL_CGROUP slots only count when the map is full: unused, they are not
            // a series of their own.
            if key.cgroup == FULL_CGROUP && value == 0 {
                continue;
            }
            entries.push(Entry {
                key,
                cgroup: key.cgroup,
                value,
            });
        }
        let (map, slots) = (&mut self.map, &mut self.slots);
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
                if let Some(slots) = slots
                    && slots
                        .ports
                        .get(&k.port)
                        .is_some_and(|&(_, c)| c == k.cgroup)
                {
                    let _ = slots.set(k.port, FULL_CGROUP);
                }
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
