//! The NVML side of the probe: one thread owns the library for the life of the probe and
//! makes every call, one at a time, so a call that hangs (a wedged GPU: the `nvidia-smi`
//! that never returns) blocks that thread only. The tick asks it for a reading and waits a
//! bounded time; it never asks again while a call is out, and the library is shut down only
//! by this thread, after its last call returned.
//!
//! Before each call the thread notes which one it is making and since when ([`Current`]),
//! so the tick can tell a call past its deadline, and name it.

use std::{
    collections::HashMap,
    ffi::OsStr,
    sync::{Arc, Mutex, mpsc},
    time::Instant,
};

use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor},
    error::{NvmlError, nvml_try},
};

use super::links::read_fabric;
pub use super::links::{Fabric, MAX_NVLINKS, NVLINK_ERRORS, NvLink, PcieLink};
use crate::collectors::gpu_map::{GpuId, GpuMap, PciAddr};

/// The call that initialises NVML (and loads the library), as the tick names it.
pub const INIT: &str = "nvmlInit_v2";

/// One NVML call in progress on the NVML thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The NVML function.
    pub name: &'static str,
    /// The GPU it is about (NVML index), if any.
    pub gpu: Option<u32>,
    pub since: Instant,
}

/// The call running now on the NVML thread, if any.
pub type Current = Arc<Mutex<Option<Call>>>;

/// GPU memory as NVML counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    pub total: u64,
}

/// `nvmlDeviceGetRemappedRows`: rows remapped so far, and the remapper's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remapped {
    pub correctable: u32,
    pub uncorrectable: u32,
    /// A remap waits for the GPU's next reset.
    pub pending: bool,
    /// A remap failed: the GPU has no spare row left for a bad one.
    pub failed: bool,
}

/// What NVML answered about one GPU in one reading. A value is `None` when the GPU does not
/// support its query (or the call failed: then it is in `failed` too).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// NVML's index.
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub temperature: Option<u32>,
    pub power_mw: Option<u32>,
    /// Percent of the last sample period a kernel ran.
    pub utilization: Option<u32>,
    pub memory: Option<Memory>,
    pub ecc_corrected: Option<u64>,
    pub ecc_uncorrected: Option<u64>,
    /// The clock-event (throttle) reason bits.
    pub clock_events: Option<u64>,
    pub remapped: Option<Remapped>,
    pub pcie_replays: Option<u32>,
    /// Every NVLink NVML numbers for this GPU (none on a GPU without NVLink).
    pub nvlinks: Vec<NvLink>,
    pub fabric: Option<Fabric>,
    pub persistence: Option<bool>,
    pub pcie_link: PcieLink,
    /// NVML answered `GPU_IS_LOST` or `RESET_REQUIRED`: the GPU must be reset (or the node
    /// rebooted) before it works again.
    pub needs_reset: bool,
    /// Calls that failed, with NVML's error.
    pub failed: Vec<(&'static str, String)>,
    /// NVML cannot reach this GPU (fallen off the bus, or no handle for it): none of its
    /// values are read, and it is not counted as present.
    pub lost: bool,
}

/// One reading of every GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// NVML's device count, or why NVML could not count.
    pub count: Result<u32, String>,
    pub gpus: Vec<Reading>,
}

/// Why NVML did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError {
    /// The library could not be loaded at all (no NVIDIA driver installed).
    pub no_library: bool,
    pub message: String,
}

/// What the NVML thread sends back.
#[derive(Debug)]
pub enum Reply {
    /// NVML started (the driver version, and how many GPUs it found), or why not. Sent once,
    /// first.
    Init(Result<(String, u32), InitError>),
    /// The reading asked for.
    Snapshot(Snapshot),
}

/// The NVML thread, from the tick's side.
pub struct Worker {
    ask: mpsc::Sender<()>,
    pub answers: mpsc::Receiver<Reply>,
    pub current: Current,
}

impl Worker {
    /// Starts the thread, which loads `library` and initialises NVML, then answers
    /// [`Reply::Init`].
    pub fn spawn(library: &str, map: GpuMap) -> std::io::Result<Self> {
        let (ask, asked) = mpsc::channel();
        let (answer, answers) = mpsc::channel();
        let current = Current::default();
        let calls = Calls(Arc::clone(&current));
        let library = library.to_string();
        std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || serve(&library, &calls, &map, &asked, &answer))?;
        Ok(Self {
            ask,
            answers,
            current,
        })
    }

    /// Asks for one reading; false when the thread is gone.
    pub fn ask(&self) -> bool {
        self.ask.send(()).is_ok()
    }

    /// The call in progress, if any.
    pub fn current(&self) -> Option<Call> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes calls, noting each one in [`Current`] while it runs.
struct Calls(Current);

impl Calls {
    fn run<T>(&self, name: &'static str, gpu: Option<u32>, f: impl FnOnce() -> T) -> T {
        self.set(Some(Call {
            name,
            gpu,
            since: Instant::now(),
        }));
        let out = f();
        self.set(None);
        out
    }

    fn set(&self, call: Option<Call>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = call;
    }
}

/// The NVML thread: init, then one reading per request until the probe is dropped.
fn serve(
    library: &str,
    calls: &Calls,
    map: &GpuMap,
    asked: &mpsc::Receiver<()>,
    answer: &mpsc::Sender<Reply>,
) {
    let init = calls.run(INIT, None, || {
        Nvml::builder().lib_path(OsStr::new(library)).init()
    });
    let nvml = match init {
        Ok(n) => n,
        Err(e) => {
            let no_library = matches!(e, NvmlError::LibloadingError(_));
            let message = match &e {
                NvmlError::LibloadingError(l) => l.to_string(),
                e => format!("{INIT}: {e}"),
            };
            let _ = answer.send(Reply::Init(Err(InitError {
                no_library,
                message,
            })));
            return;
        }
    };
    drop_capabilities();
    answer_requests(&nvml, calls, map, asked, answer);
    shut_down(nvml);
}

/// Sends [`Reply::Init`], then one reading per request, until the probe is dropped.
fn answer_requests(
    nvml: &Nvml,
    calls: &Calls,
    map: &GpuMap,
    asked: &mpsc::Receiver<()>,
    answer: &mpsc::Sender<Reply>,
) {
    let mut gpus = Gpus {
        nvml,
        map: map.clone(),
        known: Vec::new(),
    };
    let driver = calls
        .run("nvmlSystemGetDriverVersion", None, || {
            nvml.sys_driver_version()
        })
        .unwrap_or_default();
    // Handles, names and UUIDs now, within the start's deadline: attaching a GPU is the slow
    // part where the driver does not keep them initialised (no persistence mode).
    let count = gpus.refresh(calls).unwrap_or(0);
    if answer.send(Reply::Init(Ok((driver, count)))).is_err() {
        return;
    }
    for () in asked.iter() {
        if answer.send(Reply::Snapshot(gpus.read(calls))).is_err() {
            return;
        }
    }
}

/// Shuts NVML down, now that no call is out. A library without `nvmlShutdown` (not NVIDIA's)
/// is left loaded: the wrapper's `Drop` would panic on the missing symbol.
fn shut_down(nvml: Nvml) {
    if nvml.lib().nvmlShutdown.is_err() {
        std::mem::forget(nvml);
    }
}

/// A GPU whose handle NVML gave.
struct Known<'a> {
    device: Device<'a>,
    uuid: String,
    name: String,
    /// Its PCI address, for the Xid readers.
    pci: Option<PciAddr>,
}

/// The GPUs NVML counts, by index; `None` where no handle could be had yet.
struct Gpus<'a> {
    nvml: &'a Nvml,
    /// Where the known GPUs' PCI addresses are published.
    map: GpuMap,
    known: Vec<Option<Known<'a>>>,
}

impl<'a> Gpus<'a> {
    /// Counts the GPUs and gets the handle, name and UUID of those not known yet.
    fn refresh(&mut self, calls: &Calls) -> Result<u32, NvmlError> {
        let count = calls.run("nvmlDeviceGetCount_v2", None, || self.nvml.device_count())?;
        self.known.truncate(count as usize);
        self.known.resize_with(count as usize, || None);
        for (i, slot) in self.known.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let index = i as u32;
            let nvml = self.nvml;
            let Ok(device) = calls.run("nvmlDeviceGetHandleByIndex_v2", Some(index), || {
                nvml.device_by_index(index)
            }) else {
                continue;
            };
            let uuid = calls
                .run("nvmlDeviceGetUUID", Some(index), || device.uuid())
                .unwrap_or_default();
            let name = calls
                .run("nvmlDeviceGetName", Some(index), || device.name())
                .unwrap_or_default();
            let pci = calls
                .run("nvmlDeviceGetPciInfo_v3", Some(index), || device.pci_info())
                .ok()
                .and_then(|p| {
                    Some(PciAddr {
                        domain: p.domain,
                        bus: u8::try_from(p.bus).ok()?,
                        device: u8::try_from(p.device).ok()?,
                    })
                });
            *slot = Some(Known {
                device,
                uuid,
                name,
                pci,
            });
        }
        let map: HashMap<PciAddr, GpuId> = self
            .known
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let k = k.as_ref()?;
                Some((
                    k.pci?,
                    GpuId {
                        index: i as u32,
                        uuid: k.uuid.clone(),
                    },
                ))
            })
            .collect();
        self.map.set(map);
        Ok(count)
    }

    /// One reading of every GPU.
    fn read(&mut self, calls: &Calls) -> Snapshot {
        let count = match self.refresh(calls) {
            Ok(n) => n,
            Err(e) => {
                return Snapshot {
                    count: Err(format!("nvmlDeviceGetCount_v2: {e}")),
                    gpus: Vec::new(),
                };
            }
        };
        let mut gpus = Vec::with_capacity(count as usize);
        for i in 0..count {
            gpus.push(match &self.known[i as usize] {
                Some(k) => read_gpu(self.nvml, calls, i, k),
                None => self.unreachable(calls, i),
            });
        }
        Snapshot {
            count: Ok(count),
            gpus,
        }
    }

    /// The reading of a GPU NVML counts but gives no handle for (asked again for the error).
    fn unreachable(&self, calls: &Calls, index: u32) -> Reading {
        let error = calls
            .run("nvmlDeviceGetHandleByIndex_v2", Some(index), || {
                self.nvml.device_by_index(index).map(|_| ())
            })
            .err();
        Reading {
            index,
            needs_reset: matches!(error, Some(NvmlError::GpuLost | NvmlError::ResetRequired)),
            failed: vec![(
                "nvmlDeviceGetHandleByIndex_v2",
                error.map_or_else(|| "no handle".to_string(), |e| e.to_string()),
            )],
            lost: true,
            ..Reading::default()
        }
    }
}

/// Files the outcome of one call into `r`: the value; nothing when the GPU or driver does
/// not have the query; a lost GPU; or a failure.
fn settle<T>(r: &mut Reading, call: &'static str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => None,
        Err(e @ (NvmlError::GpuLost | NvmlError::ResetRequired)) => {
            r.lost = true;
            r.needs_reset = true;
            r.failed.push((call, e.to_string()));
            None
        }
        Err(e) => {
            r.failed.push((call, e.to_string()));
            None
        }
    }
}

/// Every value of one GPU; a lost GPU is not asked anything more.
fn read_gpu(nvml: &Nvml, calls: &Calls, index: u32, k: &Known<'_>) -> Reading {
    let d = &k.device;
    let mut r = Reading {
        index,
        uuid: k.uuid.clone(),
        name: k.name.clone(),
        ..Reading::default()
    };
    macro_rules! ask {
        ($call:expr, $f:expr) => {{
            let v = settle(&mut r, $call, calls.run($call, Some(index), || $f));
            if r.lost {
                return r;
            }
            v
        }};
    }
    r.temperature = ask!(
        "nvmlDeviceGetTemperature",
        d.temperature(TemperatureSensor::Gpu)
    );
    r.power_mw = ask!("nvmlDeviceGetPowerUsage", d.power_usage());
    r.utilization = ask!("nvmlDeviceGetUtilizationRates", d.utilization_rates()).map(|u| u.gpu);
    r.memory = ask!("nvmlDeviceGetMemoryInfo_v2", d.memory_info()).map(|m| Memory {
        used: m.used,
        total: m.total,
    });
    r.ecc_corrected = ask!(
        "nvmlDeviceGetTotalEccErrors",
        d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
    );
    r.ecc_uncorrected = ask!(
        "nvmlDeviceGetTotalEccErrors",
        d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
    );
    // The clock-event reasons: `nvmlDeviceGetCurrentClocksEventReasons` on drivers from 535
    // on, `...ClocksThrottleReasons`, its older name, before.
    let lib = nvml.lib();
    let clock_events = match (
        lib.nvmlDeviceGetCurrentClocksEventReasons.as_ref(),
        lib.nvmlDeviceGetCurrentClocksThrottleReasons.as_ref(),
    ) {
        (Ok(f), _) => Some(("nvmlDeviceGetCurrentClocksEventReasons", *f)),
        (_, Ok(f)) => Some(("nvmlDeviceGetCurrentClocksThrottleReasons", *f)),
        _ => None,
    };
    if let Some((call, f)) = clock_events {
        // SAFETY: a valid device handle and a place for the bit mask, as NVML documents.
        r.clock_events = ask!(call, unsafe {
            let mut bits: std::ffi::c_ulonglong = 0;
            nvml_try(f(d.handle(), &mut bits)).map(|()| bits)
        });
    }
    // nvml-wrapper has no safe call for this one: its raw symbol, whose absence (an old
    // driver) is a `None` rather than the generated method's panic.
    if let Ok(f) = lib.nvmlDeviceGetRemappedRows.as_ref() {
        let f = *f;
        // SAFETY: a valid device handle and four places for NVML's answers.
        r.remapped = ask!("nvmlDeviceGetRemappedRows", unsafe {
            let (mut corr, mut unc, mut pending, mut failed) = (0, 0, 0, 0);
            nvml_try(f(
                d.handle(),
                &mut corr,
                &mut unc,
                &mut pending,
                &mut failed,
            ))
            .map(|()| Remapped {
                correctable: corr,
                uncorrectable: unc,
                pending: pending != 0,
                failed: failed != 0,
            })
        });
    }
    r.pcie_replays = ask!("nvmlDeviceGetPcieReplayCounter", d.pcie_replay_counter());
    r.persistence = ask!("nvmlDeviceGetPersistenceMode", d.is_in_persistent_mode());
    r.pcie_link = PcieLink {
        width: ask!(
            "nvmlDeviceGetCurrPcieLinkWidth",
            d.current_pcie_link_width()
        ),
        width_max: ask!("nvmlDeviceGetMaxPcieLinkWidth", d.max_pcie_link_width()),
        generation: ask!(
            "nvmlDeviceGetCurrPcieLinkGeneration",
            d.current_pcie_link_gen()
        ),
        generation_max: ask!("nvmlDeviceGetMaxPcieLinkGeneration", d.max_pcie_link_gen()),
    };
    // NVML numbers links from 0, without gaps; a GPU without NVLink answers NOT_SUPPORTED,
    // and a link number past the GPU's last INVALID_ARGUMENT: either ends the list.
    for link in 0..MAX_NVLINKS {
        let wrapper = d.link_wrapper_for(link);
        let state = calls.run("nvmlDeviceGetNvLinkState", Some(index), || {
            wrapper.is_active()
        });
        if matches!(state, Err(NvmlError::InvalidArg | NvmlError::NotSupported)) {
            break;
        }
        let up = settle(&mut r, "nvmlDeviceGetNvLinkState", state);
        if r.lost {
            return r;
        }
        let Some(up) = up else { continue };
        let mut errors = [None; 4];
        for (slot, (counter, _)) in errors.iter_mut().zip(NVLINK_ERRORS) {
            *slot = ask!(
                "nvmlDeviceGetNvLinkErrorCounter",
                wrapper.error_counter(counter)
            );
        }
        r.nvlinks.push(NvLink { link, up, errors });
    }
    if let Some((call, f)) = read_fabric(lib, d) {
        r.fabric = ask!(call, f());
    }
    r
}

/// This thread was started before the agent dropped its capabilities, and capabilities
/// belong to each thread: it gives its own up once NVML is open (reading GPUs needs none).
fn drop_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        // _LINUX_CAPABILITY_VERSION_3: two data words.
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: a version-3 header and two data words, as capset expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "NVML thread: capset");
    }
}
