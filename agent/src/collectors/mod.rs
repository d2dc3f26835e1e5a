//! Every source of samples, and the one list of them. Each collector is its own file or folder
//! here (eBPF-backed ones under `probes/`), owns its config section and its metric families,
//! and implements [`Collector`]; adding one is those files plus its line in [`ALL`] (and its
//! section's line in [`ProbesConfig`] when it is a probe). The tick, `nodewatch probes` and
//! the per-collector accounting (`nodewatch_collector_duration_seconds`, `_errors_total`,
//! `nodewatch_probe_missed_events_total`, `nodewatch_probe_up`) all go through [`ALL`].

pub mod collector;
pub mod containers;
pub mod gpu_map;
pub mod gpu_state;
pub mod gpu_xid;
pub mod heartbeats;
pub mod infiniband;
pub mod probes;
pub mod resources;
pub mod scrape;

use std::{
    any::Any,
    path::Path,
    time::{Duration, Instant},
};

pub use self::collector::{CollectError, Collector, Env, Mode};
use self::{
    containers::{Containers, ContainersConfig, SharedContainers},
    gpu_state::GpuStateConfig,
    gpu_xid::GpuXidConfig,
    heartbeats::config::HeartbeatsConfig,
    infiniband::InfinibandConfig,
    probes::{
        accept_queue::{self, AcceptQueueConfig},
        gpu_ioctl::{self, config::GpuIoctlConfig},
        tcp_retransmits::{self, TcpRetransmitsConfig},
    },
    resources::ResourcesConfig,
    scrape::config::ScrapeConfig,
};
use crate::{
    store::{CollectorLabels, ProbeLabels, SelfMetrics, Store},
    wake::Wake,
    yaml::Document,
};

/// `probes:` — one entry per probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbesConfig {
    /// TCP retransmits per watched port.
    pub tcp_retransmits: TcpRetransmitsConfig,
    /// Accept-queue overflows and queue depth per watched listening port.
    pub accept_queue: AcceptQueueConfig,
    /// GPU-driver ioctl latency, stalls and calls hung right now, per device.
    pub gpu_ioctl: GpuIoctlConfig,
    /// NVIDIA Xid errors counted from the kernel log.
    pub gpu_xid: GpuXidConfig,
    /// Each GPU's state from NVML, and how many GPUs are present against expected.
    pub gpu_state: GpuStateConfig,
    /// InfiniBand/RoCE ports from sysfs.
    pub infiniband: InfinibandConfig,
}

/// The keys of `probes:`, in the order of [`ProbesConfig`].
const PROBE_KEYS: &[&str] = &[
    "tcp_retransmits",
    "accept_queue",
    "gpu_ioctl",
    "gpu_xid",
    "gpu_state",
    "infiniband",
];

/// Reads `probes:` at `path`, each probe's section on its own (every mistake is recorded in
/// `doc`); what is absent or invalid keeps its default.
pub fn probes_config(doc: &mut Document<'_>, path: &[&str]) -> ProbesConfig {
    let mut c = ProbesConfig::default();
    if !doc.keys(path, PROBE_KEYS) {
        return c;
    }
    let at = |key: &'static str| -> Vec<&str> { path.iter().copied().chain([key]).collect() };
    if let Some(v) = doc.section(&at("tcp_retransmits")) {
        c.tcp_retransmits = v;
    }
    if let Some(v) = doc.section(&at("accept_queue")) {
        c.accept_queue = v;
    }
    if let Some(v) = doc.section(&at("gpu_ioctl")) {
        c.gpu_ioctl = v;
    }
    if let Some(v) = doc.section(&at("gpu_xid")) {
        c.gpu_xid = v;
    }
    if let Some(v) = doc.section(&at("gpu_state")) {
        c.gpu_state = v;
    }
    if let Some(v) = doc.section(&at("infiniband")) {
        c.infiniband = v;
    }
    c
}

/// What the collectors read of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub proc_root: &'a Path,
    pub probes: &'a ProbesConfig,
    pub heartbeats: &'a HeartbeatsConfig,
    pub resources: &'a ResourcesConfig,
    pub scrape: &'a ScrapeConfig,
    pub containers: &'a ContainersConfig,
    pub spool_dir: &'a Path,
    /// The agent's tick interval (a scrape target's default).
    pub interval: Duration,
}

impl Settings<'_> {
    /// The one cgroup id → container lookup the collectors share.
    fn containers(&self) -> SharedContainers {
        Containers::shared(self.containers, self.proc_root)
    }

    /// What every collector gets besides its section.
    fn env<'a>(
        &'a self,
        containers: &'a SharedContainers,
        wake: &'a Wake,
        gpus: &'a gpu_map::GpuMap,
    ) -> Env<'a> {
        Env {
            proc_root: self.proc_root,
            containers,
            wake,
            gpus,
            spool_dir: self.spool_dir,
        }
    }
}

/// How to start one collector.
pub struct Def {
    pub name: &'static str,
    /// Whether the config switches it on.
    pub enabled: fn(&Settings<'_>) -> bool,
    /// Registers its metric families and starts it in the best mode this host allows,
    /// degrading (eBPF → procfs, or off) with one WARN line.
    pub start: fn(&Settings<'_>, Env<'_>, &mut Store) -> Box<dyn Collector>,
}

/// Every collector, in the order they start and run each tick.
pub const ALL: &[Def] = &[
    Def {
        name: tcp_retransmits::NAME,
        enabled: |s| s.probes.tcp_retransmits.enabled,
        start: |s, env, store| tcp_retransmits::start(&s.probes.tcp_retransmits, env, store),
    },
    Def {
        name: accept_queue::NAME,
        enabled: |s| s.probes.accept_queue.enabled,
        start: |s, env, store| accept_queue::start(&s.probes.accept_queue, env, store),
    },
    Def {
        name: gpu_ioctl::NAME,
        enabled: |s| s.probes.gpu_ioctl.enabled,
        start: |s, env, store| gpu_ioctl::start(&s.probes.gpu_ioctl, env, store),
    },
    Def {
        name: gpu_xid::NAME,
        enabled: |s| s.probes.gpu_xid.enabled,
        start: |s, env, store| gpu_xid::start(&s.probes.gpu_xid, env, store),
    },
    Def {
        name: gpu_state::NAME,
        enabled: |s| s.probes.gpu_state.enabled,
        start: |s, env, store| gpu_state::start(&s.probes.gpu_state, env, store),
    },
    Def {
        name: infiniband::NAME,
        enabled: |s| s.probes.infiniband.enabled,
        start: |s, env, store| infiniband::start(&s.probes.infiniband, env, store),
    },
    Def {
        name: resources::NAME,
        enabled: |s| s.resources.enabled,
        start: |s, env, store| resources::start(s.resources, env, store),
    },
    Def {
        name: heartbeats::NAME,
        enabled: |_| true,
        start: |s, env, store| heartbeats::start(s.heartbeats, env, store),
    },
    Def {
        name: scrape::NAME,
        enabled: |s| !s.scrape.0.is_empty(),
        start: |s, env, store| scrape::start(s.scrape, s.interval, env, store),
    },
];

/// One started collector and its accounting.
struct Running {
    collector: Box<dyn Collector>,
    labels: CollectorLabels,
    /// Whether the last collection failed, so a failure is logged once.
    failing: bool,
}

/// The collectors the config switches on, started.
pub struct Collectors {
    running: Vec<Running>,
    containers: SharedContainers,
    wake: Wake,
}

impl Collectors {
    /// Starts every enabled collector of [`ALL`], registering its metrics in `store` and its
    /// mode in `nodewatch_probe_up`; all of them share one container lookup.
    pub fn start(settings: &Settings<'_>, store: &mut Store) -> Self {
        let containers = settings.containers();
        let wake = Wake::default();
        let gpus = gpu_map::GpuMap::default();
        let mut running = Vec::new();
        for def in ALL {
            if !(def.enabled)(settings) {
                tracing::info!(collector = def.name, "disabled in config");
                continue;
            }
            let collector = (def.start)(settings, settings.env(&containers, &wake, &gpus), store);
            if let Some(mode) = collector.mode() {
                store
                    .own
                    .probe_up
                    .get_or_create(&ProbeLabels {
                        probe: def.name.into(),
                        mode: mode.as_str().into(),
                    })
                    .set(i64::from(mode != Mode::Off));
                tracing::info!(probe = def.name, mode = %mode, attach = %collector.attach_method(), "probe started");
            }
            running.push(Running {
                labels: CollectorLabels {
                    collector: def.name.into(),
                },
                collector,
                failing: false,
            });
        }
        probes::kernel::release_btf();
        Self {
            running,
            containers,
            wake,
        }
    }

    /// The tick thread's wake-up, which the collectors' own tasks hold too.
    pub fn wake(&self) -> &Wake {
        &self.wake
    }

    /// The earliest [`Collector::deadline`] of any collector.
    pub fn deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .filter_map(|r| r.collector.deadline())
            .min()
    }

    /// Asks every collector whose deadline has come whether the tick should run now.
    pub fn due(&mut self, now: Instant) -> bool {
        let mut due = false;
        for r in &mut self.running {
            if r.collector.deadline().is_some_and(|d| d <= now) {
                due |= r.collector.due(now);
            }
        }
        due
    }

    /// The container lookup the collectors share.
    pub fn containers(&self) -> &SharedContainers {
        &self.containers
    }

    /// `(name, mode)` of each collector that has modes, for `/api/v1/status`.
    pub fn modes(&self) -> Vec<(String, String)> {
        self.running
            .iter()
            .filter_map(|r| {
                let mode = r.collector.mode()?;
                Some((r.collector.name().to_string(), mode.as_str().to_string()))
            })
            .collect()
    }

    /// The running collector of type `T`, if one is (to hand it to what else needs it).
    pub fn find<T: Collector>(&self) -> Option<&T> {
        self.running
            .iter()
            .find_map(|r| (r.collector.as_ref() as &dyn Any).downcast_ref::<T>())
    }

    /// True while some collector still has programs to attach.
    pub fn awaiting_attach(&self) -> bool {
        self.running.iter().any(|r| r.collector.awaiting_attach())
    }

    /// One tick: the container lookup is refreshed, then every collector collects, each
    /// timed, its failures counted and logged once when they start and once when they stop.
    pub fn collect(&mut self, own: &SelfMetrics) {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refresh(Instant::now());
        for r in &mut self.running {
            let started = Instant::now();
            let result = r.collector.collect();
            let missed = r.collector.missed_events();
            if missed > 0 {
                let c = own.missed_events.get_or_create(&r.labels);
                let before = c.get();
                if missed > before {
                    if before == 0 {
                        tracing::warn!(collector = %r.labels.collector, missed, "the kernel skipped some of this probe's events (another BPF program was running on the CPU); counts may fall short");
                    }
                    c.inc_by(missed - before);
                }
            }
            own.collector_duration
                .get_or_create(&r.labels)
                .set(started.elapsed().as_secs_f64());
            match result {
                Ok(()) if r.failing => {
                    r.failing = false;
                    tracing::info!(collector = %r.labels.collector, "collection recovered");
                }
                Ok(()) => {}
                Err(e) => {
                    own.collector_errors.get_or_create(&r.labels).inc();
                    if !r.failing {
                        r.failing = true;
                        tracing::warn!(collector = %r.labels.collector, error = %e, "collection failed");
                    }
                }
            }
        }
    }
}

/// `nodewatch probes`: starts each collector for real, reports where it landed, and stops it
/// again. One line each: name, support, mode and how it attaches.
pub fn describe(settings: &Settings<'_>) -> Vec<[String; 4]> {
    let mut store = Store::new();
    let containers = settings.containers();
    let wake = Wake::default();
    let gpus = gpu_map::GpuMap::default();
    ALL.iter()
        .map(|def| {
            if !(def.enabled)(settings) {
                return [
                    def.name.into(),
                    "-".into(),
                    "-".into(),
                    "disabled in config".into(),
                ];
            }
            let c = (def.start)(
                settings,
                settings.env(&containers, &wake, &gpus),
                &mut store,
            );
            let (support, mode) = match c.mode() {
                Some(m) => (m.support(), m.as_str()),
                None => ("yes", "-"),
            };
            [
                def.name.into(),
                support.into(),
                mode.into(),
                c.attach_method(),
            ]
        })
        .collect()
}
