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
        let at = Spanned::<i64>::deserialize(d)?;
        match u32::try_from(at.value) {
            Ok(n) if n <= MAX_EXPECTED_GPUS => Ok(Self(n)),
            _ => Err(located(
                &at,
                format!(
                    "{} GPUs expected: give a number from 0 to {MAX_EXPECTED_GPUS}, or null to count the NVIDIA GPUs on the PCI bus",
                    at.value
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<GpuStateConfig, String> {
        Config::parse("c.yaml", text)
            .map(|c| c.probes.gpu_state)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_every_key() {
        assert_eq!(parse("").unwrap(), GpuStateConfig::default());
        let c = GpuStateConfig::default();
        assert!(c.enabled);
        assert_eq!(c.library.0, "libnvidia-ml.so.1");
        assert_eq!(c.expected_gpus, None);
        let c = parse(
            "probes:\n  gpu_state: { enabled: false, library: /usr/lib64/libnvidia-ml.so.1, expected_gpus: 8 }\n",
        )
        .unwrap();
        assert!(!c.enabled);
        assert_eq!(c.library.0, "/usr/lib64/libnvidia-ml.so.1");
        assert_eq!(c.expected_gpus, Some(ExpectedGpus(8)));
        let c = parse("probes:\n  gpu_state: { expected_gpus: null, library: libnvidia-ml.so }\n")
            .unwrap();
        assert_eq!(c.expected_gpus, None);
        assert_eq!(c.library.0, "libnvidia-ml.so");
        assert_eq!(
            parse("probes:\n  gpu_state: { expected_gpus: 0 }\n")
                .unwrap()
                .expected_gpus,
            Some(ExpectedGpus(0)),
            "a node that should have no GPU"
        );
    }

    #[test]
    fn mistakes_are_located() {
        for (text, starts) in [
            (
                "probes:\n  gpu_state: { library: ./libnvidia-ml.so }\n",
                "c.yaml:2:25: probes.gpu_state.library: `./libnvidia-ml.so` is a relative path",
            ),
            (
                "probes:\n  gpu_state:\n    expected_gpus: 1025\n",
                "c.yaml:3:20: probes.gpu_state.expected_gpus: 1025 GPUs expected",
            ),
            (
                "probes:\n  gpu_state:\n    expected_gpus: eight\n",
                "c.yaml:3:20: probes.gpu_state.expected_gpus: ",
            ),
            (
                "probes:\n  gpu_state:\n    enabled: perhaps\n",
                "c.yaml:3:14: probes.gpu_state.enabled: ",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(starts), "{text}: {e}");
        }
    }
}
