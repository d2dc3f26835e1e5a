//! Resource metrics of the node: CPU, memory, load, disk usage and pressure stall information.
//! Everything is read from the proc filesystem (`proc_root`, so tests use fixture trees) and
//! statvfs, on the tick thread, off the async workers.

pub mod disk;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use self::disk::{DiskConfig, MountTable, StatResult, Statvfs};
use super::collector::{CollectError, Collector, Env};
use crate::store::{Family, GaugeF64, Store, label_set, names};

pub const NAME: &str = "resources";

/// `resources:` in the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    /// Whether resource metrics are collected. Default `true`.
    pub enabled: bool,
    /// Which filesystems `nodewatch_disk_used_ratio` reports.
    pub disk: DiskConfig,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            disk: DiskConfig::default(),
        }
    }
}

label_set! {
    /// Labels `{mount}`.
    pub struct MountLabels { pub mount }
}

label_set! {
    /// Labels `{resource, kind}`.
    pub struct PressureLabels { pub resource, pub kind }
}

/// Registers the resource metrics; they are read from `/proc` and statvfs every tick.
pub fn start(cfg: &ResourcesConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    Box::new(Resources::new(cfg, env.proc_root, store))
}

/// CPU time counters from the `cpu` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The resource collector.
pub struct Resources {
    proc_root: PathBuf,
    disk_cfg: DiskConfig,
    statvfs: Statvfs,
    mount_table: MountTable,
    /// The `/proc` files read every tick, kept open.
    open: std::collections::HashMap<&'static str, ProcFile>,
    prev_cpu: Option<CpuTimes>,
    /// Mounts reported last tick, to drop the series of unmounted ones.
    mounts: HashSet<String>,
    /// Mounts whose statvfs hung or failed, so each is logged once.
    complained: HashSet<String>,
    cpu: GaugeF64,
    memory: GaugeF64,
    load1: GaugeF64,
    disk: Family<MountLabels, GaugeF64>,
    pressure: Family<PressureLabels, GaugeF64>,
}

impl Resources {
    /// Registers the resource metrics.
    pub fn new(cfg: &ResourcesConfig, proc_root: &Path, store: &mut Store) -> Self {
        let r = Self {
            proc_root: proc_root.to_path_buf(),
            disk_cfg: cfg.disk.clone(),
            statvfs: Statvfs::default(),
            mount_table: MountTable::default(),
            open: Default::default(),
            prev_cpu: None,
            mounts: HashSet::new(),
            complained: HashSet::new(),
            cpu: GaugeF64::default(),
            memory: GaugeF64::default(),
            load1: GaugeF64::default(),
            disk: Family::default(),
            pressure: Family::default(),
        };
        store.register(
            names::CPU_USAGE,
            "Share of CPU time not idle (or waiting for IO) since the previous tick, all CPUs",
            r.cpu.clone(),
        );
        store.register(
            names::MEMORY_USED,
            "Share of memory in use: (MemTotal - MemAvailable) / MemTotal",
            r.memory.clone(),
        );
        store.register(names::LOAD1, "One-minute load average", r.load1.clone());
        store.register(
            names::DISK_USED,
            "Share of a filesystem in use, as df shows it: used / (used + available)",
            r.disk.clone(),
        );
        store.register(
            names::PRESSURE,
            "Pressure stall information, avg10 / 100: share of the last 10 s that some or all tasks stalled on the resource",
            r.pressure.clone(),
        );
        if !proc_root.join("pressure").is_dir() {
            tracing::info!(
                path = %proc_root.join("pressure").display(),
                "no pressure stall information (kernel without PSI): nodewatch_pressure_ratio not exported"
            );
        }
        r
    }
}

impl Collector for Resources {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach_method(&self) -> String {
        format!(
            "procfs {}: stat, meminfo, loadavg, pressure/, self/mountinfo; statvfs",
            self.proc_root.display()
        )
    }

    /// Reads every resource once. A file that cannot be read fails this collection after the
    /// others were read.
    fn collect(&mut self) -> Result<(), CollectError> {
        let mut first_error = None;
        let mut note = |r: Result<(), CollectError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        note(self.collect_cpu());
        note(self.collect_memory());
        note(self.collect_load());
        self.collect_pressure();
        note(self.collect_disks());
        first_error.map_or(Ok(()), Err)
    }
}

impl Resources {
    fn read(&mut self, rel: &'static str) -> Result<String, CollectError> {
        let path = self.proc_root.join(rel);
        self.open
            .entry(rel)
            .or_default()
            .read(&path)
            .map_err(|source| CollectError::Read {
                path: path.display().to_string(),
                source,
            })
    }

    fn parse_error(&self, rel: &str, message: &str) -> CollectError {
        CollectError::Parse {
            path: self.proc_root.join(rel).display().to_string(),
            message: message.into(),
        }
    }

    fn collect_cpu(&mut self) -> Result<(), CollectError> {
        let text = self.read("stat")?;
        let now = cpu_times(&text).ok_or_else(|| self.parse_error("stat", "no cpu line"))?;
        if let Some(prev) = self.prev_cpu
            && let Some(ratio) = cpu_usage(prev, now)
        {
            self.cpu.set(ratio);
        }
        self.prev_cpu = Some(now);
        Ok(())
    }

    fn collect_memory(&mut self) -> Result<(), CollectError> {
        let text = self.read("meminfo")?;
        let ratio = memory_used(&text)
            .ok_or_else(|| self.parse_error("meminfo", "no MemTotal or MemAvailable"))?;
        self.memory.set(ratio);
        Ok(())
    }

    fn collect_load(&mut self) -> Result<(), CollectError> {
        let text = self.read("loadavg")?;
        let load = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.parse_error("loadavg", "no load average"))?;
        self.load1.set(load);
        Ok(())
    }

    /// Missing PSI (old kernel, `psi=0`) is not an error: there is simply no series.
    fn collect_pressure(&mut self) {
        for resource in ["cpu", "memory", "io"] {
            let Ok(text) = self.read(match resource {
                "cpu" => "pressure/cpu",
                "memory" => "pressure/memory",
                _ => "pressure/io",
            }) else {
                continue;
            };
            for (kind, avg10) in pressure(&text) {
                self.pressure
                    .get_or_create(&PressureLabels {
                        resource: resource.into(),
                        kind: kind.into(),
                    })
                    .set(avg10 / 100.0);
            }
        }
    }

    fn collect_disks(&mut self) -> Result<(), CollectError> {
        let path = self.proc_root.join("self/mountinfo");
        let table = self
            .mount_table
            .read(&path)
            .map_err(|source| CollectError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let mounts = disk::select(table, &self.disk_cfg);
        let mut now = HashSet::new();
        for m in mounts {
            let label = m.point.display().to_string();
            match self
                .statvfs
                .stat(&m.point, &m.fstype, Duration::from_millis(500))
            {
                StatResult::Ratio(r) => {
                    self.disk
                        .get_or_create(&MountLabels {
                            mount: label.clone(),
                        })
                        .set(r);
                    self.complained.remove(&label);
                    now.insert(label);
                }
                StatResult::Failed(e) => {
                    if self.complained.insert(label.clone()) {
                        tracing::warn!(mount = %label, error = %e, "statvfs failed; mount not reported");
                    }
                }
                StatResult::Hung => {
                    if self.complained.insert(label.clone()) {
                        tracing::warn!(mount = %label, "statvfs did not return in 500ms (hung network filesystem?); mount skipped until it does");
                    }
                }
            }
        }
        for gone in self.mounts.difference(&now) {
            self.disk.remove(&MountLabels {
                mount: gone.clone(),
            });
        }
        self.mounts = now;
        Ok(())
    }
}

/// A `/proc` file read every tick: on procfs it stays open and is read again from its start
/// (no path lookup each time); anywhere else (fixture trees) it is opened each time, so a file
/// that goes away is an error.
#[derive(Default)]
struct ProcFile {
    file: Option<std::fs::File>,
}

impl ProcFile {
    fn read(&mut self, path: &Path) -> std::io::Result<String> {
        use std::io::{Read, Seek};
        let (mut f, kept) = match self.file.take() {
            Some(mut f) => {
                f.rewind()?;
                (f, true)
            }
            None => (std::fs::File::open(path)?, false),
        };
        let mut text = String::with_capacity(4096);
        f.read_to_string(&mut text)?;
        if kept || disk::on_procfs(&f) {
            self.file = Some(f);
        }
        Ok(text)
    }
}

/// Busy and total ticks from `/proc/stat`: total is user..steal (guest time is already in
/// user and nice); idle and iowait are not busy.
pub fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Busy share between two readings; None when no time passed.
pub fn cpu_usage(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// (MemTotal − MemAvailable) / MemTotal from `/proc/meminfo`.
pub fn memory_used(meminfo: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    (total > 0.0).then(|| ((total - available) / total).clamp(0.0, 1.0))
}

/// `(kind, avg10)` for each line of a `/proc/pressure/<resource>` file.
pub fn pressure(text: &str) -> Vec<(&str, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let kind = parts.next().filter(|k| matches!(*k, "some" | "full"))?;
            let avg10 = parts.find_map(|p| p.strip_prefix("avg10="))?.parse().ok()?;
            Some((kind, avg10))
        })
        .collect()
}

#[cfg(test)]
mod tests;
