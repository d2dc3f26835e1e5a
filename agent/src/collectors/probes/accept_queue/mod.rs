//! Accept-queue overflows and queue depth per watched listening port.
//!
//! eBPF: a `cgroup_skb` ingress program on the cgroup v2 root counts, per listening port, the
//! SYNs and handshake ACKs that arrive while the listener's accept queue is full — the packets
//! the kernel is about to drop and count as `ListenOverflows` — keyed by the listener's
//! cgroup, so each container's listener has its own series. Every tick, sock_diag gives
//! the queue length and limit of each watched listener of the agent's network namespace, and
//! `/proc/<pid>/net/tcp` with the kernel's notes those of other namespaces (see [`netns`]). Fallbacks: per-listener drops from
//! sock_diag (`mode="sock_diag"`), then the host-wide `TcpExt: ListenOverflows` of
//! `/proc/net/netstat` under `port="all"` (`mode="procfs"`).

pub mod config;
mod ebpf;
pub mod netns;
pub mod sockdiag;

use std::path::PathBuf;

use prometheus_client::metrics::gauge::Gauge;

pub use self::config::{AcceptQueueConfig, AcceptQueueMode};
use self::{
    ebpf::Kernel,
    netns::Queue,
    sockdiag::{DropTracker, Listener, SockDiag},
};
use crate::{
    collectors::{
        collector::{CollectError, Collector, Env, Mode},
        containers::SharedContainers,
        probes::{
            owners::{Owners, lock},
            ports::{PortFamily, PortLabels, export_procfs, set_counter},
        },
    },
    store::{Family, Store, hash::HashMap as FxHashMap, names},
};

pub const NAME: &str = "accept_queue";

/// The probe's metric families.
#[derive(Clone, Default)]
struct Metrics {
    overflows: PortFamily,
    length: Family<PortLabels, Gauge>,
    max: Family<PortLabels, Gauge>,
}

/// Registers the probe's families and starts it: eBPF, else sock_diag, else procfs.
pub fn start(conf: &AcceptQueueConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let metrics = Metrics::default();
    store.register(
        names::TCP_LISTEN_OVERFLOWS,
        "Connections dropped because the listener's accept queue was full, by listening port (all: host-wide, procfs mode) and the listener's container",
        metrics.overflows.clone(),
    );
    store.register(
        names::TCP_LISTEN_QUEUE_LENGTH,
        "Connections waiting in the listener's accept queue (ss Recv-Q), by listening port",
        metrics.length.clone(),
    );
    store.register(
        names::TCP_LISTEN_QUEUE_MAX,
        "Limit of the listener's accept queue (listen() backlog, ss Send-Q), by listening port",
        metrics.max.clone(),
    );
    let ports = conf.ports.0.clone();
    let diag = SockDiag::open();
    let netstat = env.proc_root.join("net/netstat");

    let mut source = None;
    if matches!(conf.mode, AcceptQueueMode::Auto | AcceptQueueMode::Ebpf) {
        match Kernel::attach(&ports, env.proc_root, env.containers) {
            Ok(k) => source = Some(Source::Ebpf(Box::new(k))),
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
        owners: Owners::new(env.containers),
        containers: env.containers.clone(),
        queues: Vec::new(),
    })
}

/// Where the overflow counts come from.
enum Source {
    Ebpf(Box<Kernel>),
    SockDiag(DropTracker),
    Procfs(PathBuf),
}

struct AcceptQueue {
    ports: Vec<u16>,
    metrics: Metrics,
    diag: Option<SockDiag>,
    source: Source,
    /// Container labels of the queue gauges.
    owners: Owners,
    containers: SharedContainers,
    /// The gauges' label sets set last tick.
    queues: Vec<PortLabels>,
}

impl Collector for AcceptQueue {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mode(&self) -> Option<Mode> {
        Some(match self.source {
            Source::Ebpf(_) => Mode::Ebpf,
            Source::SockDiag(_) => Mode::SockDiag,
            Source::Procfs(_) => Mode::Procfs,
        })
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

    fn collect(&mut self) -> Result<(), CollectError> {
        let listeners = match self.diag.as_mut() {
            Some(d) => Some(d.listeners().map_err(|e| CollectError::Parse {
                path: "sock_diag".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        if let Some(listeners) = &listeners {
            let local: Vec<Listener> = listeners
                .iter()
                .filter(|l| self.ports.contains(&l.port))
                .copied()
                .collect();
            let queues = match &mut self.source {
                Source::Ebpf(k) => k.listeners.queues(&local, &self.containers),
                _ => local
                    .iter()
                    .map(|l| Queue {
                        port: l.port,
                        cgroup: None,
                        length: l.queue_length,
                        max: l.queue_max,
                    })
                    .collect(),
            };
            self.set_queues(&queues);
        }
        match &mut self.source {
            Source::Ebpf(k) => k.counts.export(&self.metrics.overflows)?,
            Source::SockDiag(tracker) => {
                let listeners = listeners.as_deref().unwrap_or_default();
                for (port, total) in tracker.update(&self.ports, listeners) {
                    set_counter(&self.metrics.overflows, PortLabels::of(port), total);
                }
            }
            Source::Procfs(path) => {
                export_procfs(path, "TcpExt", "ListenOverflows", &self.metrics.overflows)?
            }
        }
        Ok(())
    }
}

impl AcceptQueue {
    /// Queue length and limit per watched port and owner, summed over its listeners (IPv4
    /// and IPv6, SO_REUSEPORT groups); a port without a listener has no gauge.
    fn set_queues(&mut self, queues: &[Queue]) {
        let mut per: FxHashMap<PortLabels, (i64, i64)> = FxHashMap::default();
        {
            let shared = self.owners.shared();
            let mut c = lock(&shared);
            for q in queues {
                let owner = match q.cgroup {
                    Some(id) => self.owners.labels(&mut c, id),
                    None => crate::store::OwnerLabels::HOST,
                };
                let e = per.entry(PortLabels::owned(q.port, owner)).or_default();
                e.0 += i64::from(q.length);
                e.1 += i64::from(q.max);
            }
        }
        for labels in &self.queues {
            if !per.contains_key(labels) {
                self.metrics.length.remove(labels);
                self.metrics.max.remove(labels);
            }
        }
        let holders = per
            .keys()
            .filter_map(|l| l.owner.container.clone())
            .collect();
        self.owners.release_all_but(&holders);
        self.queues = per.keys().cloned().collect();
        for (labels, (length, max)) in per {
            self.metrics.length.get_or_create(&labels).set(length);
            self.metrics.max.get_or_create(&labels).set(max);
        }
    }
}
