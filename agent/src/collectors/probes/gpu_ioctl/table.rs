//! The GPU ioctl probe's kernel tables of watched devices, kept in step with what the globs
//! name: char minors below 256 in their major's table, other minors and regular files as
//! hash keys, drivers by their whole major.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use aya::maps::{Array, HashMap, MapData};
use nodewatch_common::gpu_ioctl::{
    DevKey, KEYS_MAP, KIND_CHR, KIND_FILE, MAJOR_ALL, MAJOR_BLOCK, MAJOR_KEYS, MAJOR_MINORS,
    MAJORS_MAP, MAX_DEVICES, MAX_KEYS, MAX_MAJORS, MINOR_SLOTS, MajorWatch, TYPES_MAP,
};

use super::devices::{Ident, Stamp, Watch, block_majors, char_majors, kernel_dev, scan, stamp};
use crate::collectors::collector::CollectError;

/// What the kernel's maps should hold for a set of watched devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What is watched, by device index; for the log.
    pub targets: BTreeMap<Ident, u32>,
    pub keys: BTreeMap<DevKey, u32>,
    pub majors: BTreeMap<u32, MajorWatch>,
}

impl Plan {
    /// Lays out `(what, device index)` pairs: char minors below [`MINOR_SLOTS`] in their
    /// major's table, other minors and regular files (major slot 0) as hash keys, whole
    /// majors as the major's default. The first claim of a device wins.
    pub fn new(watches: impl IntoIterator<Item = (Ident, u32)>) -> Self {
        let mut plan = Self::default();
        for (ident, idx) in watches {
            let (major, key) = match ident {
                Ident::Major { major } if major < MAX_MAJORS => {
                    let m = plan.majors.entry(major).or_default();
                    if m.flags & MAJOR_ALL == 0 {
                        m.flags |= MAJOR_ALL;
                        m.all_idx = idx;
                    }
                    plan.targets.entry(ident).or_insert(idx);
                    continue;
                }
                Ident::Chr { major, minor } if major < MAX_MAJORS => {
                    if (minor as usize) < MINOR_SLOTS {
                        let m = plan.majors.entry(major).or_default();
                        if m.minors[minor as usize] == 0 {
                            m.minors[minor as usize] = idx as u8 + 1;
                            m.flags |= MAJOR_MINORS;
                            plan.targets.entry(ident).or_insert(idx);
                        }
                        continue;
                    }
                    let dev = kernel_dev(major, minor);
                    let key = DevKey {
                        kind: KIND_CHR,
                        dev,
                        ino: 0,
                    };
                    (major, key)
                }
                // Slot 0 of the majors map stands for inodes that are not device nodes.
                Ident::File { major, minor, ino } => {
                    let dev = kernel_dev(major, minor);
                    let key = DevKey {
                        kind: KIND_FILE,
                        dev,
                        ino,
                    };
                    (0, key)
                }
                _ => continue, // a major beyond CHRDEV_MAJOR_MAX: not a char device
            };
            if plan.keys.len() < MAX_KEYS as usize && !plan.keys.contains_key(&key) {
                plan.keys.insert(key, idx);
                plan.majors.entry(major).or_default().flags |= MAJOR_KEYS;
                plan.targets.entry(ident).or_insert(idx);
            }
        }
        plan
    }

    /// Marks the watched majors that are also block majors, where the kernel side must read
    /// the inode's type.
    pub fn mark_block(&mut self, block: &BTreeSet<u32>) {
        for (m, w) in self.majors.iter_mut() {
            if *m != 0 && block.contains(m) {
                w.flags |= MAJOR_BLOCK;
            }
        }
    }

    /// Whether anything is watched.
    pub fn any(&self) -> bool {
        !self.targets.is_empty()
    }
}

/// The ioctl command types (`_IOC_TYPE`) each known GPU driver uses, by its name in
/// `/proc/devices`, from the drivers' own headers: NVIDIA's `nv-ioctl-numbers.h`
/// (`NV_IOCTL_MAGIC 'F'`) and `nvkms-ioctl.h` (`NVKMS_IOCTL_MAGIC 'm'`, the modeset node on
/// the same major); `uvm_ioctl.h`, whose commands are plain numbers below 2048
/// (`UVM_IOCTL_BASE(i)` is `i`; `UVM_INITIALIZE` is 0x30000001), so types 0 to 7;
/// `ioctl_common_nvswitch.h` (`'d'`, `'c'`); DRM's `DRM_IOCTL_BASE 'd'` (driver commands
/// too); AMD KFD's `AMDKFD_IOCTL_BASE 'K'`. A driver that answers any other type rejects it,
/// so those calls are not timed. A watched device of any other driver, or a watched regular
/// file, lets every type through.
pub fn driver_types(driver: &str) -> Option<&'static [u8]> {
    const UVM: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
    match driver {
        "nvidia-frontend" | "nvidia" => Some(b"Fm"),
        "nvidia-uvm" => Some(&UVM),
        "nvidia-nvswitch" => Some(b"dc"),
        "drm" => Some(b"d"),
        "kfd" => Some(b"K"),
        _ => None,
    }
}

/// The command types the entry program lets through for the watched `majors` (slot 0:
/// regular files), given `/proc/devices` text.
pub fn command_types<'a>(
    majors: impl IntoIterator<Item = &'a u32>,
    proc_devices: &str,
) -> [u8; 256] {
    let names: BTreeMap<u32, String> = char_majors(proc_devices)
        .into_iter()
        .map(|(name, major)| (major, name))
        .collect();
    let mut types = [0u8; 256];
    for m in majors {
        match names.get(m).and_then(|n| driver_types(n)) {
            Some(known) if *m != 0 => known.iter().for_each(|&t| types[usize::from(t)] = 1),
            _ => return [1; 256],
        }
    }
    types
}

/// The devices the kernel side watches: labels by index, and what was last written to its
/// maps.
pub struct Watched {
    globs: Vec<String>,
    proc_devices: PathBuf,
    majors: Array<MapData, MajorWatch>,
    keys: HashMap<MapData, DevKey, u32>,
    /// Command type → 1 where a watched driver uses it, as last written.
    types: Array<MapData, u8>,
    applied_types: [u8; 256],
    /// Device index → label. Labels stay once seen, so their counters never go back.
    labels: Vec<String>,
    applied: Plan,
    full_warned: bool,
    /// The watches of the last scan, and what they depended on then.
    last: Vec<Watch>,
    stamp: Option<Stamp>,
    /// `/proc/devices` as last read, and the refreshes since.
    proc_text: String,
    since_read: u32,
}

/// How many refreshes may pass without reading `/proc/devices` when no watched folder
/// changed: a driver that registers with no node here is picked up within that many ticks.
const PROC_DEVICES_EVERY: u32 = 5;

impl Watched {
    pub fn new(
        globs: Vec<String>,
        proc_devices: PathBuf,
        majors: Array<MapData, MajorWatch>,
        keys: HashMap<MapData, DevKey, u32>,
        types: Array<MapData, u8>,
    ) -> Self {
        Self {
            globs,
            proc_devices,
            majors,
            keys,
            types,
            applied_types: [0; 256],
            labels: Vec::new(),
            applied: Plan::default(),
            full_warned: false,
            last: Vec::new(),
            stamp: None,
            proc_text: String::new(),
            since_read: 0,
        }
    }

    /// The command types the entry program lets through now, for `nodewatch probes`: None
    /// while nothing is watched.
    pub fn command_types_shown(&self) -> Option<String> {
        let on: Vec<usize> = (0..256).filter(|&t| self.applied_types[t] != 0).collect();
        match on.len() {
            0 => None,
            256 => Some("every command type".into()),
            _ => Some(format!(
                "command types {}",
                on.iter()
                    .map(|&t| match u8::try_from(t) {
                        Ok(c) if c.is_ascii_graphic() => format!("'{}'", char::from(c)),
                        _ => format!("{t:#04x}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        }
    }

    /// The drivers (names in `/proc/devices`) of the watched devices; None while a watched
    /// inode is not a character device of a named driver (a regular file, an unnamed major).
    pub fn drivers(&self) -> Option<BTreeSet<String>> {
        let names: BTreeMap<u32, String> = char_majors(&self.proc_text)
            .into_iter()
            .map(|(name, major)| (major, name))
            .collect();
        self.applied
            .majors
            .keys()
            .map(|m| names.get(m).filter(|_| *m != 0).cloned())
            .collect()
    }

    /// Every label seen so far, by device index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn label(&self, idx: u32) -> Option<&str> {
        self.labels.get(idx as usize).map(String::as_str)
    }

    fn index_of(&mut self, label: &str) -> Option<u32> {
        if let Some(i) = self.labels.iter().position(|l| l == label) {
            return Some(i as u32);
        }
        if self.labels.len() >= MAX_DEVICES as usize {
            if !self.full_warned {
                self.full_warned = true;
                tracing::warn!(
                    device = label,
                    "more than {MAX_DEVICES} GPU devices match; the rest are not watched"
                );
            }
            return None;
        }
        self.labels.push(label.to_string());
        Some(self.labels.len() as u32 - 1)
    }

    /// Re-reads the globs and `/proc/devices` and brings the kernel's maps in line. Returns
    /// whether anything is watched now.
    pub fn refresh(&mut self) -> Result<bool, CollectError> {
        // Globbing /dev and reading /proc/devices are most of this probe's cost per tick:
        // skip them while nothing they depend on changed. The folders are checked every
        // tick; /proc/devices (a driver loaded with no node here) every few.
        self.since_read += 1;
        if self.since_read < PROC_DEVICES_EVERY
            && self.stamp.is_some()
            && stamp(&self.globs, &self.proc_text, &self.last) == self.stamp
        {
            return Ok(self.applied.any());
        }
        let text =
            std::fs::read_to_string(&self.proc_devices).map_err(|source| CollectError::Read {
                path: self.proc_devices.display().to_string(),
                source,
            })?;
        self.since_read = 0;
        let now = stamp(&self.globs, &text, &self.last);
        self.proc_text.clone_from(&text);
        if now.is_some() && now == self.stamp {
            return Ok(self.applied.any());
        }
        let found = scan(&self.globs, &text);
        let mut watches = Vec::new();
        let mut seen = BTreeSet::new();
        for w in found.iter().cloned() {
            // Two paths to one device (a symlink, a second node): the first names it.
            if !seen.insert(w.ident) {
                continue;
            }
            if let Some(idx) = self.index_of(&w.label) {
                watches.push((w.ident, idx));
            }
        }
        let mut plan = Plan::new(watches);
        plan.mark_block(&block_majors(&text));
        self.apply(&plan)?;
        self.apply_types(command_types(plan.majors.keys(), &text))?;
        let any = plan.any();
        self.applied = plan;
        // The stamp taken before the scan: whatever changed during it shows next tick.
        self.stamp = if found == self.last { now } else { None };
        self.last = found;
        Ok(any)
    }

    /// Writes the command types that changed. Called after the devices are in place; a type
    /// that goes away is taken out only then, so no watched call is skipped in between.
    fn apply_types(&mut self, types: [u8; 256]) -> Result<(), CollectError> {
        for (t, (&want, had)) in types.iter().zip(self.applied_types.iter_mut()).enumerate() {
            if want != *had {
                self.types
                    .set(t as u32, want, 0)
                    .map_err(|source| CollectError::Map {
                        map: TYPES_MAP,
                        source,
                    })?;
                *had = want;
            }
        }
        Ok(())
    }

    /// Writes what changed: new entries before removals, so a device that changes number
    /// is never unwatched in between.
    fn apply(&mut self, plan: &Plan) -> Result<(), CollectError> {
        let keys_err = |source| CollectError::Map {
            map: KEYS_MAP,
            source,
        };
        let majors_err = |source| CollectError::Map {
            map: MAJORS_MAP,
            source,
        };
        for (k, &idx) in &plan.keys {
            if self.applied.keys.get(k) != Some(&idx) {
                self.keys.insert(k, idx, 0).map_err(keys_err)?;
            }
        }
        for (&m, w) in &plan.majors {
            if self.applied.majors.get(&m) != Some(w) {
                self.majors.set(m, w, 0).map_err(majors_err)?;
            }
        }
        for &m in self.applied.majors.keys() {
            if !plan.majors.contains_key(&m) {
                self.majors
                    .set(m, MajorWatch::default(), 0)
                    .map_err(majors_err)?;
            }
        }
        for k in self.applied.keys.keys() {
            if !plan.keys.contains_key(k) {
                // Already gone is fine: the goal is that it is not there.
                let _ = self.keys.remove(k);
            }
        }
        for (t, &idx) in &plan.targets {
            if self.applied.targets.get(t) != Some(&idx) {
                tracing::info!(device = self.label(idx), id = %t, "watching GPU device");
            }
        }
        for (t, &idx) in &self.applied.targets {
            if !plan.targets.contains_key(t) {
                tracing::info!(device = self.label(idx), id = %t, "GPU device gone; no longer watched");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_types_come_from_known_drivers_only() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n226 drm\n234 nvidia-uvm\n\nBlock devices:\n  7 loop\n";
        let t = command_types(&[195, 234], text);
        for ty in [b'F', b'm', 0, 1, 7] {
            assert_eq!(t[usize::from(ty)], 1, "type {ty}");
        }
        assert_eq!(t[usize::from(b'T')], 0, "TCGETS's type");
        assert_eq!(t[8], 0);
        assert_eq!(t.iter().filter(|&&v| v == 1).count(), 10);
        assert_eq!(command_types(&[226], text)[usize::from(b'd')], 1);
        assert_eq!(
            command_types(&[1], text),
            [1; 256],
            "a driver not in the table"
        );
        assert_eq!(command_types(&[0], text), [1; 256], "regular files");
        assert_eq!(command_types(&[], text), [0; 256], "nothing watched");
    }

    #[test]
    fn plan_puts_small_minors_in_tables_and_the_rest_in_keys() {
        let file = Ident::File {
            major: 0,
            minor: 39,
            ino: 2,
        };
        let plan = Plan::new([
            (
                Ident::Chr {
                    major: 195,
                    minor: 0,
                },
                0,
            ),
            (
                Ident::Chr {
                    major: 195,
                    minor: 255,
                },
                1,
            ),
            (Ident::Major { major: 195 }, 2),
            (
                Ident::Chr {
                    major: 195,
                    minor: 0,
                },
                3,
            ), // a second path to nvidia0
            (
                Ident::Chr {
                    major: 240,
                    minor: 70000,
                },
                4,
            ),
            (file, 5),
            (Ident::Major { major: 4000 }, 6), // not a char major
        ]);
        let nv = plan.majors[&195];
        assert_eq!(nv.flags, MAJOR_MINORS | MAJOR_ALL);
        assert_eq!((nv.minors[0], nv.minors[255], nv.minors[1]), (1, 2, 0));
        assert_eq!(nv.all_idx, 2);
        assert_eq!(plan.majors[&240].flags, MAJOR_KEYS);
        assert_eq!(plan.majors[&0].flags, MAJOR_KEYS);
        assert_eq!(plan.keys.len(), 2);
        assert_eq!(
            plan.keys[&DevKey {
                kind: KIND_CHR,
                dev: (240 << 20) | 70000,
                ino: 0
            }],
            4
        );
        assert_eq!(
            plan.keys[&DevKey {
                kind: KIND_FILE,
                dev: 39,
                ino: 2
            }],
            5
        );
        assert_eq!(plan.targets.len(), 5, "{:?}", plan.targets);
        assert!(!plan.majors.contains_key(&4000));
        assert!(!Plan::new([]).any());
        let mut p = Plan::new([
            (
                Ident::Chr {
                    major: 253,
                    minor: 0,
                },
                0,
            ),
            (
                Ident::Chr {
                    major: 195,
                    minor: 0,
                },
                1,
            ),
            (file, 2),
        ]);
        p.mark_block(&BTreeSet::from([0, 7, 253]));
        assert_eq!(p.majors[&253].flags, MAJOR_MINORS | MAJOR_BLOCK);
        assert_eq!(p.majors[&195].flags, MAJOR_MINORS);
        assert_eq!(p.majors[&0].flags, MAJOR_KEYS, "slot 0 is not a major");
        assert_eq!(file.to_string(), "file on 0:39 inode 2");
    }
}
