//! cgroup id → cgroup directory → owner. On 64-bit kernels the id eBPF reports for a cgroup
//! (`bpf_get_current_cgroup_id`, `bpf_sk_cgroup_id`) is the inode number of its directory in
//! cgroupfs, so the tree is walked once, reading each directory entry's inode (no `stat` per
//! entry), and walked again on a miss, at most once per [`RESCAN_EVERY`].

use std::{
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    naming::{Container, Named, Owner, container_of},
    pods::Pods,
};
use crate::{collectors::resources::disk::parse_mountinfo, store::hash::HashMap};

/// How often the tree may be walked again for an id it did not hold.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// How often the directories of the cgroups asked about are checked for being still there.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Most cgroups held (the tree's, and those gone but within twice the retention).
pub const MAX_ENTRIES: usize = 65536;

/// The mount point of the first `cgroup2` line of mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

/// One cgroup directory of the tree.
#[derive(Debug)]
struct Entry {
    /// Its path below the root.
    rel: PathBuf,
    /// What its path names.
    named: Option<Named>,
    /// Its owner, once asked for: only cgroups asked about are checked and kept once gone.
    owner: Option<Owner>,
    /// When it was first seen gone.
    gone_since: Option<Instant>,
}

/// An id that the tree did not hold when it was asked for.
#[derive(Debug)]
struct Unknown {
    /// When it was first asked for.
    since: Instant,
    /// Whether a walk made since did not find it either: its cgroup is gone (a cgroup's
    /// directory exists before any task can run in it), or outside the root.
    missed: bool,
}

/// The cgroup tree below one root, walked on demand.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    pods: Pods,
    retention: Duration,
    entries: HashMap<u64, Entry>,
    unknown: HashMap<u64, Unknown>,
    walked: Option<Instant>,
    checked: Option<Instant>,
    /// Most cgroups held: [`MAX_ENTRIES`] (smaller in tests).
    max: usize,
    /// Whether the tree was found over `max` (said once).
    full: bool,
}

impl Tree {
    /// The tree below `root`; nothing is read until an id is asked for.
    pub fn new(root: PathBuf, pods_dir: PathBuf, retention: Duration) -> Self {
        Self {
            root,
            pods: Pods::new(pods_dir),
            retention,
            entries: HashMap::default(),
            unknown: HashMap::default(),
            walked: None,
            checked: None,
            max: MAX_ENTRIES,
            full: false,
        }
    }

    /// The owner of the cgroup with this id; an id not held walks the tree again if the last
    /// walk is [`RESCAN_EVERY`] old, and is the host's meanwhile.
    pub fn owner(&mut self, id: u64, now: Instant) -> Owner {
        if !self.find(id, now) {
            return Owner::Host;
        }
        let Some(e) = self.entries.get_mut(&id) else {
            return Owner::Host;
        };
        let stale = match (&e.owner, &e.named) {
            (None, _) => true,
            // A pod whose folder was not there yet.
            (Some(Owner::Container(Container { pod: None, .. })), Some(n)) => n.pod_uid.is_some(),
            _ => false,
        };
        if stale {
            e.owner = Some(match &e.named {
                None => Owner::Host,
                Some(n) => Owner::Container(Container {
                    id: n.id.clone(),
                    pod: n.pod_uid.as_deref().and_then(|u| self.pods.name(u, now)),
                }),
            });
        }
        e.owner.clone().unwrap_or(Owner::Host)
    }

    /// The directory of the cgroup with this id, if it is known and still there.
    pub fn dir(&mut self, id: u64, now: Instant) -> Option<PathBuf> {
        if !self.find(id, now) {
            return None;
        }
        let e = self.entries.get(&id)?;
        let dir = self.root.join(&e.rel);
        (e.gone_since.is_none() && is_dir_with_ino(&dir, id)).then_some(dir)
    }

    /// How long ago the cgroup with this id was first seen gone.
    pub fn gone_for(&self, id: u64, now: Instant) -> Option<Duration> {
        let since = match self.entries.get(&id) {
            Some(e) => e.gone_since?,
            None => self.unknown.get(&id).filter(|u| u.missed)?.since,
        };
        Some(now.saturating_duration_since(since))
    }

    /// Checks, at most every [`CHECK_EVERY`], that the cgroups asked about are still there,
    /// and forgets those gone for twice the retention.
    pub fn refresh(&mut self, now: Instant) {
        if self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < CHECK_EVERY)
        {
            return;
        }
        self.checked = Some(now);
        for (id, e) in &mut self.entries {
            if e.owner.is_some()
                && e.gone_since.is_none()
                && !is_dir_with_ino(&self.root.join(&e.rel), *id)
            {
                e.gone_since = Some(now);
            }
        }
        let keep = 2 * self.retention;
        let kept = |since: Instant| now.saturating_duration_since(since) < keep;
        self.entries.retain(|_, e| e.gone_since.is_none_or(kept));
        self.unknown.retain(|_, u| kept(u.since));
    }

    /// Whether the tree holds `id`, walking it again if it does not and may.
    fn find(&mut self, id: u64, now: Instant) -> bool {
        if self.entries.contains_key(&id) {
            return true;
        }
        let may_walk = self
            .walked
            .is_none_or(|t| now.saturating_duration_since(t) >= RESCAN_EVERY);
        let missed = match self.unknown.get(&id) {
            Some(u) => u.missed,
            None => {
                if self.unknown.len() < self.max {
                    self.unknown.insert(
                        id,
                        Unknown {
                            since: now,
                            missed: false,
                        },
                    );
                }
                false
            }
        };
        // An id a walk since its first ask did not find is gone: no walk for it again.
        if missed || !may_walk {
            return false;
        }
        self.walk(now);
        self.entries.contains_key(&id)
    }

    /// Walks the tree: new cgroups are added, those gone forgotten, or, when asked about,
    /// marked gone.
    fn walk(&mut self, now: Instant) {
        self.walked = Some(now);
        let found = match self.read_tree() {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(root = %self.root.display(), error = %e, "cannot read the cgroup tree");
                return;
            }
        };
        let mut found = found;
        self.entries.retain(|id, e| match found.remove(id) {
            Some(rel) if rel == e.rel => {
                e.gone_since = None;
                true
            }
            // Renamed (cgroup v2 allows it): what the new path names.
            Some(rel) => {
                *e = Entry::new(rel);
                true
            }
            None if e.owner.is_some() => {
                e.gone_since.get_or_insert(now);
                true
            }
            None => false,
        });
        for (id, rel) in found {
            self.entries.insert(id, Entry::new(rel));
        }
        let entries = &self.entries;
        self.unknown.retain(|id, _| !entries.contains_key(id));
        for u in self.unknown.values_mut() {
            if u.since <= now {
                u.missed = true;
            }
        }
        self.bound();
    }

    /// Every directory of the tree: inode → path below the root. Symbolic links are not
    /// followed (cgroupfs has none; a fixture tree might).
    fn read_tree(&mut self) -> std::io::Result<HashMap<u64, PathBuf>> {
        let mut found = HashMap::default();
        found.insert(fs::metadata(&self.root)?.ino(), PathBuf::new());
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let Ok(dir) = fs::read_dir(self.root.join(&rel)) else {
                // Removed while walking, or not ours to read.
                continue;
            };
            for e in dir.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if found.len() >= self.max {
                    if !self.full {
                        self.full = true;
                        tracing::warn!(root = %self.root.display(), max = self.max, "more cgroups than the container lookup holds; the rest count as the host's");
                    }
                    return Ok(found);
                }
                let child = rel.join(e.file_name());
                found.insert(e.ino(), child.clone());
                todo.push(child);
            }
        }
        Ok(found)
    }

    /// Keeps at most `max`, forgetting the cgroups gone longest first.
    fn bound(&mut self) {
        let over = self.entries.len().saturating_sub(self.max);
        if over == 0 {
            return;
        }
        let mut gone: Vec<(Instant, u64)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| Some((e.gone_since?, *id)))
            .collect();
        gone.sort_unstable();
        for (_, id) in gone.into_iter().take(over) {
            self.entries.remove(&id);
        }
    }
}

impl Entry {
    fn new(rel: PathBuf) -> Self {
        Self {
            named: rel.to_str().and_then(container_of),
            rel,
            owner: None,
            gone_since: None,
        }
    }
}

/// Whether `path` is a directory (not a link to one) with inode `ino`.
fn is_dir_with_ino(path: &Path, ino: u64) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_bound_the_cgroups_gone_longest_are_forgotten_first() {
        let root = std::env::temp_dir().join(format!("nw-cg-bound-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["a", "b", "c"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let id = |d: &str| fs::metadata(root.join(d)).unwrap().ino();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let mut t = Tree::new(root.clone(), root.join("no-pods"), Duration::from_secs(60));
        t.max = 5;
        let t0 = Instant::now();
        for i in [a, b, c] {
            assert_eq!(t.owner(i, t0), Owner::Host);
        }
        // Made before a and b go, so that they do not get their inodes.
        fs::create_dir(root.join("d")).unwrap();
        fs::create_dir(root.join("e")).unwrap();
        fs::remove_dir(root.join("a")).unwrap();
        t.refresh(t0 + CHECK_EVERY);
        fs::remove_dir(root.join("b")).unwrap();
        t.refresh(t0 + 2 * CHECK_EVERY);
        assert_eq!(t.gone_for(a, t0 + 2 * CHECK_EVERY), Some(CHECK_EVERY));
        assert_eq!(t.gone_for(b, t0 + 2 * CHECK_EVERY), Some(Duration::ZERO));
        // The root, c, d and e are there, a and b gone: six for five places.
        let later = t0 + 3 * CHECK_EVERY;
        assert_eq!(t.owner(id("d"), later), Owner::Host);
        assert_eq!(t.entries.len(), 5);
        assert!(!t.entries.contains_key(&a), "gone longest");
        assert_eq!(t.gone_for(b, later), Some(CHECK_EVERY));
        assert_eq!(t.dir(c, later), Some(root.join("c")));
        fs::remove_dir_all(&root).unwrap();
    }
}
