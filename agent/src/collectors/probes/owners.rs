//! Who a kernel count belongs to. The programs key their maps by the cgroup v2 id of the
//! socket or the calling task; here those ids become `container` / `pod` labels (none for the
//! host), at most [`MAX_CONTAINERS`] containers per probe (then `container="other"`), and the
//! keys of cgroups gone for longer than the retention are deleted from the kernel maps while
//! the totals they counted stay (the host's and `other`'s series never go back; a container's
//! series go with it).

use std::{hash::Hash, time::Instant};

use nodewatch_common::FULL_CGROUP;

use crate::{
    collectors::containers::{
        Container, Containers, MAX_CONTAINERS, Owner, SharedContainers, Slots,
    },
    store::{
        Owned, OwnerLabels,
        hash::{HashMap as FxHashMap, HashSet as FxHashSet},
    },
};

/// The `container` label of counts past the bound, or that found their kernel map full.
pub const OTHER: &str = "other";

/// Label assignment for one probe's series.
pub struct Owners {
    containers: SharedContainers,
    slots: Slots,
    /// Containers holding a slot, by label, so a slot can be handed back.
    holders: FxHashMap<String, Container>,
}

impl Owners {
    pub fn new(containers: &SharedContainers) -> Self {
        Self {
            containers: containers.clone(),
            slots: Slots::new(MAX_CONTAINERS),
            holders: FxHashMap::default(),
        }
    }

    /// The resolver this probe shares with the others.
    pub fn shared(&self) -> SharedContainers {
        self.containers.clone()
    }

    /// The labels of cgroup `id`'s series.
    pub fn labels(&mut self, c: &mut Containers, id: u64) -> OwnerLabels {
        if id == FULL_CGROUP {
            return other();
        }
        match c.owner(id) {
            Owner::Host => OwnerLabels::HOST,
            Owner::Container(ct) => {
                let l = self.slots.label(&ct);
                if l.id == OTHER {
                    return other();
                }
                self.holders.entry(l.id.clone()).or_insert(ct);
                OwnerLabels {
                    container: Some(l.id),
                    pod: l.pod,
                }
            }
        }
    }

    /// Hands back the slots of containers that have no series left.
    pub fn release_all_but(&mut self, live: &FxHashSet<String>) {
        let gone: Vec<String> = self
            .holders
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            if let Some(c) = self.holders.remove(&id) {
                self.slots.release(&c);
            }
        }
    }
}

/// The resolver, for a tick's lookups.
pub fn lock(shared: &SharedContainers) -> std::sync::MutexGuard<'_, Containers> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// `container="other"`.
pub fn other() -> OwnerLabels {
    OwnerLabels {
        container: Some(OTHER.into()),
        pod: None,
    }
}

/// True for a series of one container (not the host's, not `other`): such a series goes
/// away with its container.
fn one_container(o: &OwnerLabels) -> bool {
    o.container.as_deref().is_some_and(|c| c != OTHER)
}

/// A value kept per kernel key and added up per series.
pub trait Tally: Clone + Default {
    fn add(&mut self, other: &Self);
}

impl Tally for u64 {
    fn add(&mut self, other: &Self) {
        *self += other;
    }
}

/// One kernel map entry: its key, the cgroup in it, the value read.
pub struct Entry<K, V> {
    pub key: K,
    pub cgroup: u64,
    pub value: V,
}

/// What a tick's totals are: every live series' total, and the series to remove.
pub struct Update<S, V> {
    pub totals: FxHashMap<S, V>,
    pub removed: Vec<S>,
}

/// Totals per series `S` of a kernel map keyed by cgroup.
pub struct Totals<S, V> {
    /// What deleted keys had counted, per series that is still exported.
    retired: FxHashMap<S, V>,
    /// The series exported last tick.
    exported: FxHashSet<S>,
}

impl<S, V> Default for Totals<S, V> {
    fn default() -> Self {
        Self {
            retired: FxHashMap::default(),
            exported: FxHashSet::default(),
        }
    }
}

impl<S: Clone + Eq + Hash + Owned, V: Tally> Totals<S, V> {
    /// Adds `entries` up per series (`series` names one from a key and its owner's labels). The keys of cgroups gone for the retention or longer
    /// go to `delete` (which removes them from the kernel map) and what they counted stays in
    /// the series' total; a container's series whose every key is gone is removed. `fixed`
    /// series are always exported (the watched ports', from the start).
    pub fn update<K>(
        &mut self,
        now: Instant,
        owners: &mut Owners,
        entries: Vec<Entry<K, V>>,
        fixed: &[S],
        series: impl Fn(&K, OwnerLabels) -> S,
        mut delete: impl FnMut(&K),
    ) -> Update<S, V> {
        // What deleted keys counted before this tick, then what the live keys hold.
        let mut totals: FxHashMap<S, V> = self.retired.clone();
        let mut live: FxHashSet<S> = FxHashSet::default();
        {
            let shared = owners.shared();
            let mut c = lock(&shared);
            let retention = c.retention();
            for e in entries {
                let labels = owners.labels(&mut c, e.cgroup);
                let s = series(&e.key, labels);
                let gone = e.cgroup != FULL_CGROUP
                    && c.gone_for(e.cgroup, now).is_some_and(|d| d >= retention);
                if gone {
                    delete(&e.key);
                    self.retired.entry(s.clone()).or_default().add(&e.value);
                } else {
                    live.insert(s.clone());
                }
                totals.entry(s).or_default().add(&e.value);
            }
        }
        for s in fixed {
            live.insert(s.clone());
            totals.entry(s.clone()).or_default();
        }
        // A container's series stays while one of its keys is live; the host's and
        // `other`'s always.
        let keep = |s: &S| live.contains(s) || !one_container(s.owner());
        let removed: FxHashSet<S> = self
            .exported
            .iter()
            .chain(totals.keys())
            .filter(|s| !keep(s))
            .cloned()
            .collect();
        for s in &removed {
            totals.remove(s);
            self.retired.remove(s);
        }
        self.exported = totals.keys().cloned().collect();
        let holders: FxHashSet<String> = self
            .exported
            .iter()
            .filter_map(|s| s.owner().container.clone())
            .collect();
        owners.release_all_but(&holders);
        let removed = removed.into_iter().collect();
        Update { totals, removed }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::MetadataExt,
        path::Path,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;
    use crate::{collectors::containers::ContainersConfig, yaml::HumanDuration};

    const ID: &str = "4c0a5b1d2e3f40516273849aabbccddeeff00112233445566778899aabbccdde";

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Series(u16, OwnerLabels);

    impl Owned for Series {
        fn owner(&self) -> &OwnerLabels {
            &self.1
        }
    }

    fn update(
        t: &mut Totals<Series, u64>,
        o: &mut Owners,
        now: Instant,
        entries: &[(u16, u64, u64)],
        deleted: &mut Vec<(u16, u64)>,
    ) -> Update<Series, u64> {
        let entries = entries
            .iter()
            .map(|&(port, cgroup, value)| Entry {
                key: (port, cgroup),
                cgroup,
                value,
            })
            .collect();
        t.update(
            now,
            o,
            entries,
            &[Series(80, OwnerLabels::HOST)],
            |k, owner| Series(k.0, owner),
            |k| deleted.push(*k),
        )
    }

    #[test]
    fn gone_cgroups_are_deleted_and_only_containers_series_go_with_them() {
        let dir = std::env::temp_dir().join(format!("nw-owners-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ctr_dir = dir.join(format!("system.slice/docker-{ID}.scope"));
        let host_dir = dir.join("system.slice/job.service");
        fs::create_dir_all(&ctr_dir).unwrap();
        fs::create_dir_all(&host_dir).unwrap();
        let (ctr, host) = (
            fs::metadata(&ctr_dir).unwrap().ino(),
            fs::metadata(&host_dir).unwrap().ino(),
        );
        let cfg = ContainersConfig {
            cgroup_root: Some(dir.clone()),
            retention: HumanDuration(Duration::from_secs(1)),
            ..ContainersConfig::default()
        };
        let shared = Arc::new(Mutex::new(Containers::new(&cfg, Path::new("/nonexistent"))));
        let mut owners = Owners::new(&shared);
        let mut totals = Totals::default();
        let mut deleted = Vec::new();
        let c = OwnerLabels {
            container: Some(ID[..12].into()),
            pod: None,
        };
        let t0 = Instant::now();
        let live = [(80, ctr, 5), (80, host, 3), (81, FULL_CGROUP, 2)];
        let u = update(&mut totals, &mut owners, t0, &live, &mut deleted);
        assert_eq!(u.totals.get(&Series(80, c.clone())), Some(&5));
        assert_eq!(u.totals.get(&Series(80, OwnerLabels::HOST)), Some(&3));
        assert_eq!(
            u.totals.get(&Series(81, other())),
            Some(&2),
            "a full map's count"
        );
        assert!(u.removed.is_empty());

        // Both cgroups go away: within the retention nothing changes.
        fs::remove_dir(&ctr_dir).unwrap();
        fs::remove_dir(&host_dir).unwrap();
        lock(&shared).refresh(t0 + Duration::from_secs(3));
        let u = update(
            &mut totals,
            &mut owners,
            t0 + Duration::from_millis(3500),
            &live,
            &mut deleted,
        );
        assert!(deleted.is_empty());
        assert_eq!(u.totals.get(&Series(80, c.clone())), Some(&5));

        // Past it: both keys are deleted; the container's series goes, the host's keeps
        // what the deleted key counted.
        let u = update(
            &mut totals,
            &mut owners,
            t0 + Duration::from_secs(5),
            &live,
            &mut deleted,
        );
        assert_eq!(deleted, vec![(80, ctr), (80, host)]);
        assert_eq!(u.removed, vec![Series(80, c.clone())]);
        assert_eq!(u.totals.get(&Series(80, c.clone())), None);
        assert_eq!(u.totals.get(&Series(80, OwnerLabels::HOST)), Some(&3));
        let rest = [(81, FULL_CGROUP, 2)];
        let u = update(
            &mut totals,
            &mut owners,
            t0 + Duration::from_secs(6),
            &rest,
            &mut deleted,
        );
        assert_eq!(
            u.totals.get(&Series(80, OwnerLabels::HOST)),
            Some(&3),
            "never back"
        );
        assert_eq!(u.totals.len(), 2);
        assert!(
            owners.holders.is_empty(),
            "the container's slot is free again"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
