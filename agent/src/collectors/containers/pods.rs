//! The name of a Kubernetes pod from its UID, without the API server: the kubelet keeps one
//! log folder per pod, `<pods_dir>/<namespace>_<name>_<uid>` (a namespace and a pod name are DNS
//! labels and subdomains, so neither holds a `_`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::store::hash::HashMap;

/// How often the folder may be read again for a UID it did not name.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Pod UID → `namespace/name`, read from the kubelet's pod log folders.
#[derive(Debug)]
pub struct Pods {
    dir: PathBuf,
    names: HashMap<String, String>,
    scanned: Option<Instant>,
}

impl Pods {
    /// Names from the folders in `dir`; nothing is read until a UID is asked for.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            names: HashMap::default(),
            scanned: None,
        }
    }

    /// `namespace/name` of the pod with this UID; a UID not known reads the folder again, at
    /// most once per [`RESCAN_EVERY`].
    pub fn name(&mut self, uid: &str, now: Instant) -> Option<String> {
        if let Some(n) = self.names.get(uid) {
            return Some(n.clone());
        }
        if self
            .scanned
            .is_some_and(|t| now.saturating_duration_since(t) < RESCAN_EVERY)
        {
            return None;
        }
        self.scan(now);
        self.names.get(uid).cloned()
    }

    /// Reads the folder; the names of pods gone from it are forgotten (a container's owner is
    /// cached with its cgroup, so it keeps its pod).
    fn scan(&mut self, now: Instant) {
        self.scanned = Some(now);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot read the pod log folders");
                return;
            }
        };
        self.names.clear();
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some((uid, pod)) = name.to_str().and_then(parse_folder) {
                self.names.insert(uid.to_string(), pod);
            }
        }
    }
}

/// `(uid, "namespace/name")` of a folder named `<namespace>_<name>_<uid>`.
pub fn parse_folder(name: &str) -> Option<(&str, String)> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if ns.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') {
        return None;
    }
    Some((uid, format!("{ns}/{pod}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_split_into_uid_and_pod() {
        assert_eq!(
            parse_folder("default_web-0_1234-abcd"),
            Some(("1234-abcd", "default/web-0".to_string()))
        );
        assert_eq!(
            parse_folder(
                "kube-system_coredns-5d78c9869d-x2x9q_0f3e1a2b-5c6d-4e7f-8091-a2b3c4d5e6f7"
            ),
            Some((
                "0f3e1a2b-5c6d-4e7f-8091-a2b3c4d5e6f7",
                "kube-system/coredns-5d78c9869d-x2x9q".to_string()
            ))
        );
        for bad in [
            "",
            "default",
            "default_web-0",
            "_web_1",
            "a__1",
            "a_b_",
            "a_b_c_d",
        ] {
            assert_eq!(parse_folder(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_new_pod_is_read_at_most_once_per_second() {
        let dir = std::env::temp_dir().join(format!("nw-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("default_web-0_1111")).unwrap();
        let mut pods = Pods::new(dir.clone());
        let t0 = Instant::now();
        assert_eq!(pods.name("1111", t0).as_deref(), Some("default/web-0"));
        std::fs::create_dir(dir.join("ml_trainer_2222")).unwrap();
        // Read less than a second ago: not again yet.
        assert_eq!(pods.name("2222", t0 + Duration::from_millis(500)), None);
        assert_eq!(
            pods.name("2222", t0 + RESCAN_EVERY).as_deref(),
            Some("ml/trainer")
        );
        // Known names need no read.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            pods.name("1111", t0 + RESCAN_EVERY).as_deref(),
            Some("default/web-0")
        );
        assert_eq!(pods.name("3333", t0 + 3 * RESCAN_EVERY), None);
    }
}
