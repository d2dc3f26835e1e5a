//! Which container a cgroup belongs to, for the `container` and `pod` labels of the signals a
//! probe attributes to a task or a socket (DESIGN.md, "Names for the next capabilities"). A probe reports a
//! cgroup v2 id; [`Containers`] finds its directory in cgroupfs ([`cgroups`]), reads the
//! container from the directory's path ([`naming`]) and the pod's name from the kubelet's log
//! folders ([`pods`]). [`Slots`] bounds the containers one metric labels.
//!
//! One [`SharedContainers`] is built by [`crate::collectors::Collectors::start`], handed to
//! every collector in its [`Env`](crate::collectors::Env), and refreshed once per tick.

pub mod cgroups;
pub mod config;
pub mod naming;
pub mod pods;
pub mod slots;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use self::cgroups::Tree;
pub use self::{
    cgroups::cgroup2_mount,
    config::ContainersConfig,
    naming::{Container, Owner},
    slots::{MAX_CONTAINERS, Slots},
};

/// The one [`Containers`] of the agent, shared by the collectors.
pub type SharedContainers = Arc<Mutex<Containers>>;

/// cgroup id → the container it belongs to, cached.
#[derive(Debug)]
pub struct Containers {
    /// `None`: switched off, or no cgroup v2 here; every cgroup is the host's.
    tree: Option<Tree>,
    retention: Duration,
}

impl Containers {
    /// The lookup `cfg` asks for. Never fails: without a cgroup v2 mount it logs one WARN
    /// and every cgroup is the host's.
    pub fn new(cfg: &ContainersConfig, proc_root: &Path) -> Self {
        let retention = cfg.retention.0;
        if !cfg.enabled {
            return Self::host_only(retention);
        }
        let root = match &cfg.cgroup_root {
            Some(r) => Some(r.clone()),
            None => cgroup2_root(proc_root),
        };
        let root = root.filter(|r| match std::fs::metadata(r) {
            Ok(m) if m.is_dir() => true,
            Ok(_) => {
                tracing::warn!(cgroup_root = %r.display(), "not a folder; no container labels");
                false
            }
            Err(e) => {
                tracing::warn!(cgroup_root = %r.display(), error = %e, "cannot read the cgroup v2 root; no container labels");
                false
            }
        });
        Self {
            tree: root.map(|r| Tree::new(r, cfg.pods_dir.clone(), retention)),
            retention,
        }
    }

    /// A lookup for which every cgroup is the host's (switched off; tests of other parts).
    pub fn host_only(retention: Duration) -> Self {
        Self {
            tree: None,
            retention,
        }
    }

    /// [`Containers::new`], shared.
    pub fn shared(cfg: &ContainersConfig, proc_root: &Path) -> SharedContainers {
        Arc::new(Mutex::new(Self::new(cfg, proc_root)))
    }

    /// Whether container labels can be found at all (switched on and cgroup v2 found).
    pub fn active(&self) -> bool {
        self.tree.is_some()
    }

    /// Whom the cgroup with this id belongs to. Cached; an id not known walks the cgroup
    /// tree again, at most once per second, and is the host's meanwhile.
    pub fn owner(&mut self, cgroup_id: u64) -> Owner {
        self.owner_at(cgroup_id, Instant::now())
    }

    /// [`Containers::owner`] at `now` (which rate-limits the walks).
    pub fn owner_at(&mut self, cgroup_id: u64, now: Instant) -> Owner {
        match &mut self.tree {
            Some(t) => t.owner(cgroup_id, now),
            None => Owner::Host,
        }
    }

    /// The absolute path of the cgroup's directory, if it is known and still there (to read
    /// its `cgroup.procs`).
    pub fn dir(&mut self, cgroup_id: u64) -> Option<PathBuf> {
        self.dir_at(cgroup_id, Instant::now())
    }

    /// [`Containers::dir`] at `now`.
    pub fn dir_at(&mut self, cgroup_id: u64, now: Instant) -> Option<PathBuf> {
        self.tree.as_mut()?.dir(cgroup_id, now)
    }

    /// Called once per tick, before the collectors: checks (every 2 s) that the cgroups asked
    /// about are still there, and forgets those gone for twice the retention.
    pub fn refresh(&mut self, now: Instant) {
        if let Some(t) = &mut self.tree {
            t.refresh(now);
        }
    }

    /// `Some(d)`: this cgroup's directory vanished `d` ago (or was already gone when it was
    /// first asked about). Callers delete its kernel-map entries and drop its series once `d`
    /// reaches [`Containers::retention`].
    pub fn gone_for(&self, cgroup_id: u64, now: Instant) -> Option<Duration> {
        self.tree.as_ref()?.gone_for(cgroup_id, now)
    }

    /// How long a container's series stay after its last cgroup went away.
    pub fn retention(&self) -> Duration {
        self.retention
    }
}

/// The first cgroup v2 mount in `<proc_root>/self/mountinfo`; `None` (and a WARN) if none.
fn cgroup2_root(proc_root: &Path) -> Option<PathBuf> {
    let path = proc_root.join("self/mountinfo");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let root = cgroup2_mount(&text);
            if root.is_none() {
                tracing::warn!(mountinfo = %path.display(), "no cgroup v2 mount; no container labels");
            }
            root
        }
        Err(e) => {
            tracing::warn!(mountinfo = %path.display(), error = %e, "cannot read the mounts; no container labels");
            None
        }
    }
}

#[cfg(test)]
mod tests;
