//! InfiniBand and RoCE ports from sysfs (`/sys/class/infiniband/<device>/ports/<port>/`):
//! whether each port is up (`state` ACTIVE and `phys_state` LinkUp), its rate, how often its
//! link went down, and its error counters, every tick. Multi-node serving and training go
//! through these ports; a port that is down breaks them while every GPU looks healthy.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::Deserialize;

use super::collector::{CollectError, Collector, Env, Mode, Off};
use crate::store::{Family, GaugeF64, Store, label_set, names, set_total};

pub const NAME: &str = "infiniband";
/// Where the kernel lists RDMA devices.
pub const SYSFS_ROOT: &str = "/sys/class/infiniband";
/// Most ports followed; more (a misconfigured root) are not read.
pub const MAX_PORTS: usize = 256;

/// The error counters read from `ports/<port>/counters/`, which are also their `counter`
/// labels.
pub const ERROR_COUNTERS: [&str; 6] = [
    "symbol_error",
    "link_error_recovery",
    "port_rcv_errors",
    "excessive_buffer_overrun_errors",
    "local_link_integrity_errors",
    "port_xmit_discards",
];

/// `probes.infiniband:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfinibandConfig {
    /// Whether InfiniBand/RoCE ports are read. Default `true`; a node without RDMA devices
    /// reports the probe off.
    pub enabled: bool,
    /// The sysfs folder of RDMA devices. Default `/sys/class/infiniband`.
    pub sysfs_root: PathBuf,
}

impl Default for InfinibandConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sysfs_root: PathBuf::from(SYSFS_ROOT),
        }
    }
}

label_set! {
    /// Labels `{device, port}`.
    pub struct PortLabels { pub device, pub port }
}

label_set! {
    /// Labels `{device, port, counter}`.
    pub struct CounterLabels { pub device, pub port, pub counter }
}

/// The families.
#[derive(Default)]
struct Metrics {
    up: Family<PortLabels, Gauge>,
    rate: Family<PortLabels, GaugeF64>,
    downed: Family<PortLabels, Counter>,
    errors: Family<CounterLabels, Counter>,
}

/// Registers the families; without the sysfs folder (no RDMA device) the probe is off.
pub fn start(cfg: &InfinibandConfig, _env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    if !cfg.sysfs_root.is_dir() {
        tracing::info!(probe = NAME, root = %cfg.sysfs_root.display(), "no InfiniBand/RoCE devices: ports are not read");
        return Box::new(Off {
            name: NAME,
            reason: format!("no {}", cfg.sysfs_root.display()),
        });
    }
    let m = Metrics::default();
    store.register(
        names::INFINIBAND_PORT_UP,
        "1 while the InfiniBand/RoCE port's state is ACTIVE and its physical state LinkUp, else 0",
        m.up.clone(),
    );
    store.register(
        names::INFINIBAND_PORT_RATE,
        "The port's signalling rate in Gb/s, as sysfs reports it",
        m.rate.clone(),
    );
    store.register(
        names::INFINIBAND_LINK_DOWNED,
        "Times the port's link went down (the port's link_downed counter)",
        m.downed.clone(),
    );
    store.register(
        names::INFINIBAND_PORT_ERRORS,
        "The port's error counters (symbol_error, link_error_recovery, port_rcv_errors, excessive_buffer_overrun_errors, local_link_integrity_errors, port_xmit_discards)",
        m.errors.clone(),
    );
    Box::new(Infiniband {
        root: cfg.sysfs_root.clone(),
        m,
        ports: BTreeMap::new(),
    })
}

/// The handles of one port's series.
struct PortSeries {
    up: Gauge,
    rate: Option<GaugeF64>,
    downed: Option<Counter>,
    errors: [Option<Counter>; 6],
}

struct Infiniband {
    root: PathBuf,
    m: Metrics,
    ports: BTreeMap<(String, String), PortSeries>,
}

/// What one port's folder says.
#[derive(Debug, Default, PartialEq)]
struct Port {
    up: bool,
    rate_gbps: Option<f64>,
    link_downed: Option<u64>,
    errors: [Option<u64>; 6],
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `4: ACTIVE` → `ACTIVE`.
fn state_name(s: &str) -> &str {
    s.split_once(':').map_or(s, |(_, n)| n).trim()
}

/// One port's folder.
fn read_port(dir: &Path) -> Port {
    let state = read(&dir.join("state")).unwrap_or_default();
    let phys = read(&dir.join("phys_state")).unwrap_or_default();
    let counter = |name: &str| read(&dir.join("counters").join(name))?.parse().ok();
    let mut errors = [None; 6];
    for (slot, name) in errors.iter_mut().zip(ERROR_COUNTERS) {
        *slot = counter(name);
    }
    Port {
        up: state_name(&state).eq_ignore_ascii_case("ACTIVE")
            && state_name(&phys).eq_ignore_ascii_case("LinkUp"),
        // `400 Gb/sec (4X NDR)`
        rate_gbps: read(&dir.join("rate"))
            .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse().ok())),
        link_downed: counter("link_downed"),
        errors,
    }
}

/// Keeps `slot` in step with whether its value is there.
fn keep<L: crate::store::LabelSet, M: Clone + Default>(
    family: &Family<L, M>,
    labels: &L,
    slot: &mut Option<M>,
    present: bool,
) {
    match (present, slot.is_some()) {
        (true, false) => *slot = Some(family.get_or_create(labels)),
        (false, true) => {
            family.remove(labels);
            *slot = None;
        }
        _ => {}
    }
}

impl Infiniband {
    /// `(device, port, folder)` of every port now.
    fn list(&self) -> std::io::Result<Vec<(String, String, PathBuf)>> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(&self.root)? {
            let d = d?;
            let device = d.file_name().to_string_lossy().into_owned();
            let Ok(ports) = std::fs::read_dir(d.path().join("ports")) else {
                continue;
            };
            for p in ports.flatten() {
                if out.len() >= MAX_PORTS {
                    return Ok(out);
                }
                out.push((
                    device.clone(),
                    p.file_name().to_string_lossy().into_owned(),
                    p.path(),
                ));
            }
        }
        Ok(out)
    }

    fn remove(&self, device: &str, port: &str, mut s: PortSeries) {
        let l = PortLabels {
            device: device.into(),
            port: port.into(),
        };
        self.m.up.remove(&l);
        keep(&self.m.rate, &l, &mut s.rate, false);
        keep(&self.m.downed, &l, &mut s.downed, false);
        for (slot, counter) in s.errors.iter_mut().zip(ERROR_COUNTERS) {
            let cl = CounterLabels {
                device: device.into(),
                port: port.into(),
                counter: counter.into(),
            };
            keep(&self.m.errors, &cl, slot, false);
        }
    }
}

impl Collector for Infiniband {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Sysfs)
    }
    fn attach_method(&self) -> String {
        format!("{} (every tick)", self.root.display())
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        let ports = self.list().map_err(|source| CollectError::Read {
            path: self.root.display().to_string(),
            source,
        })?;
        let mut gone = std::mem::take(&mut self.ports);
        for (device, port, dir) in ports {
            let p = read_port(&dir);
            let key = (device, port);
            let l = PortLabels {
                device: key.0.clone(),
                port: key.1.clone(),
            };
            let mut s = gone.remove(&key).unwrap_or_else(|| PortSeries {
                up: self.m.up.get_or_create(&l),
                rate: None,
                downed: None,
                errors: [None, None, None, None, None, None],
            });
            s.up.set(i64::from(p.up));
            keep(&self.m.rate, &l, &mut s.rate, p.rate_gbps.is_some());
            if let (Some(g), Some(v)) = (&s.rate, p.rate_gbps) {
                g.set(v);
            }
            keep(&self.m.downed, &l, &mut s.downed, p.link_downed.is_some());
            if let (Some(c), Some(v)) = (&s.downed, p.link_downed) {
                set_total(c, v);
            }
            for ((slot, value), counter) in s.errors.iter_mut().zip(p.errors).zip(ERROR_COUNTERS) {
                let cl = CounterLabels {
                    device: key.0.clone(),
                    port: key.1.clone(),
                    counter: counter.into(),
                };
                keep(&self.m.errors, &cl, slot, value.is_some());
                if let (Some(c), Some(v)) = (slot.as_ref(), value) {
                    set_total(c, v);
                }
            }
            self.ports.insert(key, s);
        }
        for ((device, port), s) in gone {
            self.remove(&device, &port, s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_folder_is_read_as_sysfs_writes_it() {
        let dir = std::env::temp_dir().join(format!("nodewatch-ib-{}", std::process::id()));
        let port = dir.join("mlx5_0/ports/1");
        std::fs::create_dir_all(port.join("counters")).unwrap();
        std::fs::write(port.join("state"), "4: ACTIVE\n").unwrap();
        std::fs::write(port.join("phys_state"), "5: LinkUp\n").unwrap();
        std::fs::write(port.join("rate"), "400 Gb/sec (4X NDR)\n").unwrap();
        std::fs::write(port.join("counters/link_downed"), "3\n").unwrap();
        std::fs::write(port.join("counters/symbol_error"), "17\n").unwrap();
        let p = read_port(&port);
        assert_eq!(
            p,
            Port {
                up: true,
                rate_gbps: Some(400.0),
                link_downed: Some(3),
                errors: [Some(17), None, None, None, None, None],
            }
        );
        std::fs::write(port.join("phys_state"), "3: Disabled\n").unwrap();
        assert!(!read_port(&port).up);
        std::fs::write(port.join("phys_state"), "5: LinkUp\n").unwrap();
        std::fs::write(port.join("state"), "1: DOWN\n").unwrap();
        assert!(!read_port(&port).up);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
