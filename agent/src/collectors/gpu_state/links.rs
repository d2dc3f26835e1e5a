//! The GPU's links as NVML reports them: NVLinks, the NVLink fabric registration, the PCIe
//! link. The fabric calls have no safe wrapper in `nvml-wrapper`: their raw symbols.

use nvml_wrapper::{
    Device,
    enum_wrappers::nv_link::ErrorCounter,
    error::{NvmlError, nvml_try},
};

/// NVLinks NVML may number on one GPU (`NVML_NVLINK_MAX_LINKS`).
pub const MAX_NVLINKS: u32 = 18;

/// The NVLink error counters read, in the order of [`NvLink::errors`], with their `type`
/// labels (NVML's `NVML_NVLINK_ERROR_DL_*`).
pub const NVLINK_ERRORS: [(ErrorCounter, &str); 4] = [
    (ErrorCounter::DlReplay, "replay"),
    (ErrorCounter::DlRecovery, "recovery"),
    (ErrorCounter::DlCrcFlit, "crc_flit"),
    (ErrorCounter::DlCrcData, "crc_data"),
];

/// One NVLink of a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvLink {
    pub link: u32,
    pub up: bool,
    /// The counters of [`NVLINK_ERRORS`], each `None` where not supported.
    pub errors: [Option<u64>; 4],
}

/// `nvmlDeviceGetGpuFabricInfoV`: the GPU's registration with the NVLink fabric manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fabric {
    /// `NVML_GPU_FABRIC_STATE_*`: 1 not started, 2 in progress, 3 completed.
    pub state: u32,
    /// The registration's result, an NVML return code (0 success).
    pub status: u32,
    /// `NVML_GPU_FABRIC_HEALTH_MASK_*` fields; `None` from the older call without one.
    pub health_mask: Option<u32>,
}

/// The health-mask fields whose value 1 means a fault (degraded bandwidth, route recovery in
/// progress, route unhealthy, access-timeout recovery), by shift; and the incorrect-
/// configuration field (shift 8, 4 bits), where 2 and up name a misconfiguration.
const FABRIC_FAULT_SHIFTS: [u32; 4] = [0, 2, 4, 6];

impl Fabric {
    /// Registration completed with success, and no health-mask field reports a fault.
    pub fn healthy(&self) -> bool {
        let mask_ok = self.health_mask.is_none_or(|m| {
            FABRIC_FAULT_SHIFTS.iter().all(|s| (m >> s) & 0x3 != 1) && (m >> 8) & 0xf < 2
        });
        self.state == 3 && self.status == 0 && mask_ok
    }

    /// The `state` label: `not_started`, `in_progress`, `completed`.
    pub fn state_label(&self) -> &'static str {
        match self.state {
            1 => "not_started",
            2 => "in_progress",
            3 => "completed",
            _ => "not_supported",
        }
    }
}

/// The PCIe link of a GPU now, and the most it can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcieLink {
    pub width: Option<u32>,
    pub width_max: Option<u32>,
    pub generation: Option<u32>,
    pub generation_max: Option<u32>,
}

/// The call for the GPU's fabric registration this driver has: `nvmlDeviceGetGpuFabricInfoV`
/// (with the health mask, drivers from 550 on) or `nvmlDeviceGetGpuFabricInfo` (without).
/// The safe wrapper has neither: their raw symbols, whose absence is `None`.
#[allow(clippy::type_complexity)]
pub fn read_fabric<'d>(
    lib: &'d nvml_wrapper_sys::bindings::NvmlLib,
    d: &'d Device<'_>,
) -> Option<(
    &'static str,
    Box<dyn FnOnce() -> Result<Fabric, NvmlError> + 'd>,
)> {
    use nvml_wrapper_sys::bindings::{nvmlGpuFabricInfo_t, nvmlGpuFabricInfo_v2_t};
    if let Ok(f) = lib.nvmlDeviceGetGpuFabricInfoV.as_ref() {
        let f = *f;
        return Some((
            "nvmlDeviceGetGpuFabricInfoV",
            Box::new(move || {
                // SAFETY: a valid device handle and a zeroed v2 struct carrying its version
                // (NVML_STRUCT_VERSION(GpuFabricInfo, 2)); v2 is a prefix of v3, and NVML
                // fills what the version asks for.
                unsafe {
                    let mut info: nvmlGpuFabricInfo_v2_t = std::mem::zeroed();
                    info.version = std::mem::size_of::<nvmlGpuFabricInfo_v2_t>() as u32 | (2 << 24);
                    nvml_try(f(d.handle(), (&raw mut info).cast())).map(|()| Fabric {
                        state: u32::from(info.state),
                        status: info.status,
                        health_mask: Some(info.healthMask),
                    })
                }
            }),
        ));
    }
    let f = *lib.nvmlDeviceGetGpuFabricInfo.as_ref().ok()?;
    Some((
        "nvmlDeviceGetGpuFabricInfo",
        Box::new(move || {
            // SAFETY: a valid device handle and a place for the v1 struct.
            unsafe {
                let mut info: nvmlGpuFabricInfo_t = std::mem::zeroed();
                nvml_try(f(d.handle(), &raw mut info)).map(|()| Fabric {
                    state: u32::from(info.state),
                    status: info.status,
                    health_mask: None,
                })
            }
        }),
    ))
}
