//! `containers:` in the configuration.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::yaml::{HumanDuration, Spanned, duration_at_least};

/// The shortest `containers.retention`: below it a container's series would flap away between
/// two liveness checks.
pub const MIN_RETENTION: Duration = Duration::from_secs(1);

/// `containers:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// Whether signals get `container` and `pod` labels. Default `true`; with `false` every
    /// cgroup counts as the host's.
    pub enabled: bool,
    /// The cgroup v2 mount the container of a cgroup id is looked up in. Default: the first
    /// `cgroup2` mount in `<proc_root>/self/mountinfo`.
    pub cgroup_root: Option<PathBuf>,
    /// The kubelet's pod log folders, `<namespace>_<name>_<uid>`, which name the pod of a pod
    /// UID. Default `/var/log/pods`.
    pub pods_dir: PathBuf,
    /// How long a container's series stay after its last cgroup went away. Default `5m`; at
    /// least `1s`.
    #[serde(deserialize_with = "retention")]
    pub retention: HumanDuration,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup_root: None,
            pods_dir: PathBuf::from("/var/log/pods"),
            retention: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// `retention`: a duration of at least [`MIN_RETENTION`].
fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    duration_at_least(&text, MIN_RETENTION, "retention").map(HumanDuration)
}
