//! `probes.gpu_ioctl:` in the configuration.

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::yaml::{Spanned, duration_at_least, located};

/// The probe's name: its config key, `probe` label and log field.
pub const NAME: &str = "gpu_ioctl";

/// Most device globs `probes.gpu_ioctl.devices` may list.
pub const MAX_DEVICE_GLOBS: usize = 64;

/// `probes.gpu_ioctl:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuIoctlConfig {
    /// Whether the probe runs. Default `true`. Its programs are loaded at start but attached
    /// only once a watched device exists, so a host without GPUs pays nothing.
    pub enabled: bool,
    /// Device paths to watch, as absolute globs (`*`, `?`, `[...]`), matched again whenever a
    /// folder they name changes (checked every tick) so devices that appear later are picked
    /// up at the next tick; `/proc/devices` is read again at least every 5 ticks (a driver
    /// loaded after start with no node here). A character
    /// device is matched by major:minor, a regular file by (file system, inode). A driver in
    /// `/proc/devices` whose name matches a glob's last part (`nvidia-uvm` for
    /// `/dev/nvidia-uvm*`) is watched by its major even where its node does not exist here.
    /// Default: NVIDIA, AMD KFD and DRM render nodes; at most 64 globs.
    pub devices: DeviceGlobs,
    /// Calls that take at least this long are stalls: counted, logged, and reported in
    /// flight while they last, and the wait of the default hung-call alert. Default `5s`; at
    /// least `1ms`.
    pub stall_threshold: StallThreshold,
}

impl Default for GpuIoctlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            devices: DeviceGlobs(
                [
                    "/dev/nvidia*",
                    "/dev/nvidia-uvm*",
                    "/dev/kfd",
                    "/dev/dri/renderD*",
                ]
                .map(String::from)
                .to_vec(),
            ),
            stall_threshold: StallThreshold(Duration::from_secs(5)),
        }
    }
}

/// The GPU ioctl stall threshold, at least 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallThreshold(pub Duration);

impl<'de> Deserialize<'de> for StallThreshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        duration_at_least(&text, Duration::from_millis(1), "stall threshold").map(Self)
    }
}

/// Absolute path globs, distinct and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGlobs(pub Vec<String>);

impl<'de> Deserialize<'de> for DeviceGlobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let globs = Vec::<Spanned<String>>::deserialize(d)?;
        if globs.len() > MAX_DEVICE_GLOBS {
            return Err(located(
                &globs[MAX_DEVICE_GLOBS],
                format!(
                    "{} globs listed; at most {MAX_DEVICE_GLOBS} are allowed",
                    globs.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for g in &globs {
            if !g.value.starts_with('/') {
                return Err(located(
                    g,
                    format!("`{}` is not an absolute path: write /dev/...", g.value),
                ));
            }
            if let Err(e) = glob::Pattern::new(&g.value) {
                return Err(located(g, format!("invalid glob `{}`: {e}", g.value)));
            }
            if !seen.insert(g.value.as_str()) {
                return Err(located(g, format!("`{}` is listed twice", g.value)));
            }
        }
        Ok(Self(globs.into_iter().map(|g| g.value).collect()))
    }
}
