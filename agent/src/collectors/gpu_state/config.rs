//! `probes.gpu_state:` in the configuration.

use serde::{Deserialize, Deserializer};

use crate::yaml::{Spanned, located};

/// The probe's name: its config key, `probe` label and log field.
pub const NAME: &str = "gpu_state";

/// The NVML library loaded when the config names none: the driver's versioned name, found
/// through the dynamic loader's search path (what `nvidia-smi` loads).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// Most GPUs `expected_gpus` may ask for (NVML numbers devices in an `unsigned int`; no node
/// comes near this).
pub const MAX_EXPECTED_GPUS: u32 = 1024;

/// `probes.gpu_state:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuStateConfig {
    /// Whether the probe runs. Default `true`. Without the NVML library, or when NVML finds
    /// no driver, it reports mode `off` with one log line and the agent runs on.
    pub enabled: bool,
    /// The NVML library to load: a file name, looked up by the dynamic loader's search path,
    /// or an absolute path. Default `libnvidia-ml.so.1`.
    pub library: Library,
    /// How many GPUs the node should have (`nodewatch_gpu_devices_expected`). Default: the
    /// NVIDIA display and 3D controllers in `/sys/bus/pci/devices` when the agent starts.
    pub expected_gpus: Option<ExpectedGpus>,
}

impl Default for GpuStateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            library: Library(DEFAULT_LIBRARY.into()),
            expected_gpus: None,
        }
    }
}

/// The NVML library: a bare file name or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library(pub String);

impl<'de> Deserialize<'de> for Library {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let at = Spanned::<String>::deserialize(d)?;
        let v = &at.value;
        if v.is_empty() || v.contains('\0') {
            return Err(located(
                &at,
                "the library must be a file name such as libnvidia-ml.so.1 or an absolute path",
            ));
        }
        // dlopen reads a name with a slash as a path from the current folder, which a
        // service does not choose: ask for one or the other.
        if v.contains('/') && !v.starts_with('/') {
            return Err(located(
                &at,
                format!(
                    "`{v}` is a relative path: write a file name (looked up by the dynamic loader) or an absolute path"
                ),
            ));
        }
        Ok(Self(at.value))
    }
}

/// The number of GPUs the node should have, at most [`MAX_EXPECTED_GPUS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedGpus(pub u32);

impl<'de> Deserialize<'de> for ExpectedGpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let at = Spanned::<u32>::deserialize(d)?;
        if at.value > MAX_EXPECTED_GPUS {
            return Err(located(
                &at,
                format!(
                    "{} GPUs expected; at most {MAX_EXPECTED_GPUS} are allowed",
                    at.value
                ),
            ));
        }
        Ok(Self(at.value))
    }
}
