//! Probe `gpu_state`: what NVML says about each GPU every tick — temperature, power,
//! utilization, memory, ECC errors, clock-event (throttle) reasons, remapped rows, PCIe
//! replays, PCIe link width and generation, persistence mode, NVLink state and error
//! counters, NVLink fabric registration and health, and whether NVML says the GPU must be
//! reset — and how many GPUs it reaches against how many the node should have.
//!
//! NVML (`libnvidia-ml.so.1`, loaded at run time) is called from a thread of its own
//! ([`nvml`]): its calls hang when a GPU is wedged, cannot be cancelled, and one hung call
//! can hold every other. Each tick asks that thread for a reading and waits at most
//! [`DEADLINE`]; a call still running past it is counted, logged once and reported by
//! `nodewatch_gpu_nvml_hung` while it lasts, the tick goes on, and nothing more is asked of
//! NVML until it returns. Without the library or a driver the probe is off.

pub mod config;
pub mod links;
pub mod metrics;
pub mod nvml;
pub mod pci;
pub mod series;

use std::{
    collections::HashSet,
    path::Path,
    sync::mpsc::{RecvTimeoutError, TryRecvError},
    time::Duration,
};

pub use self::config::{GpuStateConfig, NAME};
use self::{
    metrics::Metrics,
    nvml::{Call, Reply, Snapshot, Worker},
    series::Exported,
};
use super::collector::{CollectError, Collector, Env, Mode, Off};
use crate::store::Store;

/// How long one NVML call may run before it counts as hung; also the longest a tick waits
/// for a reading. Healthy calls take microseconds to a few milliseconds.
pub const DEADLINE: Duration = Duration::from_millis(500);

/// How long the start waits for NVML to initialise and hand out the GPUs: attaching GPUs is
/// slow where the driver does not keep them initialised (no persistence mode).
pub const INIT_DEADLINE: Duration = Duration::from_secs(10);

/// Registers the probe's families and starts NVML; without the library or a working driver
/// the probe is off, with one log line (a WARN where the node has NVIDIA GPUs).
pub fn start(cfg: &GpuStateConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let (expected, expected_from) = match cfg.expected_gpus {
        Some(n) => (n.0, "config"),
        None => match pci::nvidia_gpus(Path::new(pci::PCI_DEVICES)) {
            Ok(n) => (n, "PCI"),
            Err(e) => {
                tracing::warn!(probe = NAME, error = %e, "cannot list {}; expecting no GPU", pci::PCI_DEVICES);
                (0, "PCI")
            }
        },
    };
    let library = cfg.library.0.as_str();
    let off = |reason: String, no_library: bool| -> Box<dyn Collector> {
        let what = if no_library {
            "no NVML library"
        } else {
            "NVML does not start"
        };
        if expected > 0 {
            tracing::warn!(probe = NAME, library, expected, reason = %reason, "{what}: GPU state is not read");
        } else {
            tracing::info!(probe = NAME, library, reason = %reason, "{what} and no NVIDIA GPU: GPU state is not read");
        }
        Box::new(Off { name: NAME, reason })
    };
    let worker = match Worker::spawn(library, env.gpus.clone()) {
        Ok(w) => w,
        Err(e) => return off(format!("cannot start the NVML thread: {e}"), false),
    };
    let init = match worker.answers.recv_timeout(INIT_DEADLINE) {
        Ok(Reply::Init(Ok(started))) => Some(started),
        Ok(Reply::Init(Err(e))) => return off(e.message, e.no_library),
        Ok(Reply::Snapshot(_)) | Err(RecvTimeoutError::Disconnected) => {
            return off("the NVML thread ended".into(), false);
        }
        // NVML hangs at init: a signal in itself. The probe runs and reports it.
        Err(RecvTimeoutError::Timeout) => None,
    };
    let metrics = Metrics::register(store);
    metrics.expected.set(i64::from(expected));
    let mut probe = GpuState {
        worker,
        metrics,
        exported: Exported::default(),
        library: library.to_string(),
        expected,
        expected_from,
        driver: String::new(),
        count: 0,
        busy: init.is_none(),
        started: init.is_some(),
        gone: None,
        hung: None,
        failing: HashSet::new(),
        lost: HashSet::new(),
    };
    match init {
        Some((driver, count)) => {
            probe.driver = driver;
            probe.count = count;
        }
        None => probe.check_hung(),
    }
    Box::new(probe)
}

/// The running probe.
struct GpuState {
    worker: Worker,
    metrics: Metrics,
    exported: Exported,
    library: String,
    expected: u32,
    /// Where `expected` comes from: `config` or `PCI`.
    expected_from: &'static str,
    driver: String,
    /// GPUs NVML counted at start.
    count: u32,
    /// A request (or the init) is out and not answered yet: nothing more is asked.
    busy: bool,
    /// NVML initialised (it may still be initialising when the start gave up waiting).
    started: bool,
    /// Why NVML cannot be asked any more (its thread ended, or its late init failed): each
    /// collection fails from then on.
    gone: Option<String>,
    /// The call counted as past its deadline, until it returns.
    hung: Option<Call>,
    /// (GPU, call) pairs failing now, logged when they start and stop failing.
    failing: HashSet<(u32, &'static str)>,
    /// GPUs NVML cannot reach now, logged when they go and come back.
    lost: HashSet<u32>,
}

impl GpuState {
    /// Counts, logs and reports the call in progress once it is past its deadline; notes the
    /// return of the one reported before.
    fn check_hung(&mut self) {
        let current = self.worker.current();
        if self.hung.is_some() && self.hung != current {
            self.returned();
        }
        let Some(call) = current else {
            return;
        };
        if call.since.elapsed() < DEADLINE || self.hung == Some(call) {
            return;
        }
        self.hung = Some(call);
        self.metrics
            .timeouts
            .get_or_create(&metrics::CallLabels {
                call: call.name.into(),
            })
            .inc();
        self.metrics.hung.set(1);
        tracing::warn!(
            probe = NAME,
            call = call.name,
            gpu = ?call.gpu,
            deadline = ?DEADLINE,
            "NVML call hung (a wedged GPU or driver); no NVML call starts until it returns"
        );
    }

    /// The call reported hung has returned.
    fn returned(&mut self) {
        if let Some(call) = self.hung.take() {
            tracing::info!(
                probe = NAME,
                call = call.name,
                gpu = ?call.gpu,
                after = ?call.since.elapsed(),
                "NVML call returned"
            );
            self.metrics.hung.set(0);
        }
    }

    /// Handles one answer of the NVML thread.
    fn take(&mut self, reply: Reply) -> Result<(), CollectError> {
        self.busy = false;
        self.returned();
        match reply {
            Reply::Init(Ok((driver, count))) => {
                tracing::info!(probe = NAME, driver = %driver, gpus = count, "NVML started late");
                self.driver = driver;
                self.count = count;
                self.started = true;
                Ok(())
            }
            Reply::Init(Err(e)) => {
                tracing::warn!(probe = NAME, reason = %e.message, "NVML did not start: GPU state is not read");
                self.gone = Some(e.message);
                Ok(())
            }
            Reply::Snapshot(s) => self.export(&s),
        }
    }

    /// Writes a reading into the families, logging what changed for the worse or better.
    fn export(&mut self, s: &Snapshot) -> Result<(), CollectError> {
        self.exported.export(&self.metrics, s, &self.driver);
        let mut failing = HashSet::new();
        let mut lost = HashSet::new();
        for r in &s.gpus {
            for (call, error) in &r.failed {
                let labels = metrics::CallErrorLabels {
                    gpu: r.index.to_string(),
                    call: (*call).into(),
                };
                self.metrics.errors.get_or_create(&labels).inc();
                let new =
                    failing.insert((r.index, *call)) && !self.failing.contains(&(r.index, *call));
                if new && !r.lost {
                    tracing::warn!(probe = NAME, gpu = r.index, uuid = %r.uuid, call, error = %error, "NVML call failed");
                }
            }
            if r.lost {
                lost.insert(r.index);
                if !self.lost.contains(&r.index) {
                    let (call, error) = r.failed.last().map_or(("", ""), |(c, e)| (*c, e.as_str()));
                    tracing::warn!(probe = NAME, gpu = r.index, uuid = %r.uuid, call, error, "GPU unreachable through NVML; not counted as present");
                }
            }
        }
        for (gpu, call) in self.failing.difference(&failing) {
            tracing::info!(probe = NAME, gpu, call, "NVML call works again");
        }
        for gpu in self.lost.difference(&lost) {
            tracing::info!(probe = NAME, gpu, "GPU reachable through NVML again");
        }
        self.failing = failing;
        self.lost = lost;
        match &s.count {
            Ok(_) => Ok(()),
            Err(message) => Err(CollectError::Library {
                call: "nvmlDeviceGetCount_v2",
                message: message.clone(),
            }),
        }
    }
}

impl Collector for GpuState {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Nvml)
    }
    fn attach_method(&self) -> String {
        let state = if self.started {
            format!("driver {}, {} GPUs", self.driver, self.count)
        } else {
            format!("{} not returned yet", nvml::INIT)
        };
        format!(
            "NVML {} ({state}; {} expected, from {}); calls on their own thread, deadline {:?}",
            self.library, self.expected, self.expected_from, DEADLINE
        )
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        if let Some(why) = &self.gone {
            // Nothing can be asked any more: every collection fails, so it shows.
            return Err(CollectError::Library {
                call: nvml::INIT,
                message: why.clone(),
            });
        }
        let mut result = Ok(());
        if self.busy {
            // An earlier request (or the init) is still out: take its answer if it came,
            // else report the call it is stuck in and ask nothing new.
            match self.worker.answers.try_recv() {
                Ok(reply) => result = self.take(reply),
                Err(TryRecvError::Empty) => {
                    self.check_hung();
                    return Ok(());
                }
                Err(TryRecvError::Disconnected) => return Err(self.thread_gone()),
            }
        }
        if !self.started || self.gone.is_some() {
            return result;
        }
        if !self.worker.ask() {
            return Err(self.thread_gone());
        }
        self.busy = true;
        match self.worker.answers.recv_timeout(DEADLINE) {
            Ok(reply) => self.take(reply),
            Err(RecvTimeoutError::Timeout) => {
                self.check_hung();
                result
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.thread_gone()),
        }
    }
}

impl GpuState {
    /// The NVML thread ended (it panicked): nothing more can be asked.
    fn thread_gone(&mut self) -> CollectError {
        let message = "the NVML thread ended".to_string();
        tracing::error!(probe = NAME, "{message}; GPU state is no longer read");
        self.gone = Some(message.clone());
        CollectError::Library {
            call: "nvml thread",
            message,
        }
    }
}
