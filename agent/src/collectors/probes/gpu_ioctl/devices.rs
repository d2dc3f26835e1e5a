//! Which devices a list of path globs names, and how the kernel tells them apart: a character
//! device by major:minor, a regular file by (file system, inode), and a driver registered in
//! `/proc/devices` by its (often dynamic) major. [`Watched`] keeps the GPU ioctl probe's
//! kernel tables in step with what the globs name.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

/// How the kernel identifies a watched device. Numbers are plain majors and minors; the
/// probe builds the kernel's `dev_t` from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ident {
    /// A character device node.
    Chr { major: u32, minor: u32 },
    /// A regular file: the device of its file system and its inode number.
    File { major: u32, minor: u32, ino: u64 },
    /// Every minor of a driver's major that no node of its own claims.
    Major { major: u32 },
}

/// One thing to watch and the `device` label its calls count under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watch {
    pub label: String,
    pub ident: Ident,
}

/// The character-device majors in `/proc/devices` text: name → major.
pub fn char_majors(text: &str) -> BTreeMap<String, u32> {
    section(text, "Character devices:")
}

/// The block-device majors in `/proc/devices` text.
pub fn block_majors(text: &str) -> BTreeSet<u32> {
    section(text, "Block devices:").into_values().collect()
}

fn section(text: &str, title: &str) -> BTreeMap<String, u32> {
    text.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let (major, name) = l.trim().split_once(char::is_whitespace)?;
            Some((name.trim().to_string(), major.parse().ok()?))
        })
        .collect()
}

/// Everything `globs` name right now. `proc_devices` is the text of `/proc/devices`.
///
/// A path is watched by what it is: a char device node by major:minor when its major is
/// registered (a node left behind by an unloaded driver is skipped until the driver is back);
/// a regular file by (file system, inode); a directory (such as `/dev/nvidia-caps`) by the
/// char devices inside it. A registered driver whose `/dev/<name>` matches a glob is watched by
/// its whole major under the label `/dev/<name>`, so calls through nodes this process cannot
/// see (created in a container, or not yet by `nvidia-modprobe`) still count.
pub fn scan(globs: &[String], proc_devices: &str) -> Vec<Watch> {
    let majors = char_majors(proc_devices);
    let registered: BTreeSet<u32> = majors.values().copied().collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for g in globs {
        let Ok(paths) = glob::glob(g) else { continue };
        for path in paths.flatten() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                out.extend(char_devices_in(&path, &registered));
            } else if let Some(w) = watch_of(&path, &meta, &registered) {
                out.push(w);
            }
        }
    }
    let patterns: Vec<glob::Pattern> = globs
        .iter()
        .filter_map(|g| glob::Pattern::new(g).ok())
        .collect();
    for (name, &major) in &majors {
        // Names such as "/dev/vc/0" or "/dev/tty" are not driver names.
        if name.starts_with('/') {
            continue;
        }
        let path = format!("/dev/{name}");
        if patterns.iter().any(|p| p.matches(&path)) {
            out.push(Watch {
                label: path,
                ident: Ident::Major { major },
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What a scan's result depends on, cheap to read again: `/proc/devices`, and the identity
/// and change times of the folders the globs list and of what they matched. Equal stamps mean
/// a new scan would find the same devices (a device node that comes or goes changes its
/// folder's mtime; a file system mounted over a folder changes its identity). None where a
/// glob has a wildcard before its last part: such globs are scanned every time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    proc_devices: String,
    paths: Vec<(PathBuf, Option<[i64; 7]>)>,
}

/// The stamp of `globs` now, given `/proc/devices` and the watches of the last scan.
pub fn stamp(globs: &[String], proc_devices: &str, last: &[Watch]) -> Option<Stamp> {
    let mut paths = BTreeSet::new();
    for g in globs {
        let p = Path::new(g);
        let parent = p.parent()?;
        if parent.to_string_lossy().contains(['*', '?', '[']) {
            return None;
        }
        paths.insert(parent.to_path_buf());
    }
    for w in last {
        let p = PathBuf::from(&w.label);
        if let Some(parent) = p.parent() {
            paths.insert(parent.to_path_buf());
        }
        paths.insert(p);
    }
    let paths = paths
        .into_iter()
        .map(|p| {
            let s = std::fs::metadata(&p).ok().map(|m| {
                [
                    m.dev() as i64,
                    m.ino() as i64,
                    m.rdev() as i64,
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ]
            });
            (p, s)
        })
        .collect();
    Some(Stamp {
        proc_devices: proc_devices.to_string(),
        paths,
    })
}

fn char_devices_in(dir: &Path, registered: &BTreeSet<u32>) -> Vec<Watch> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let meta = std::fs::metadata(&path).ok()?;
            meta.file_type()
                .is_char_device()
                .then(|| watch_of(&path, &meta, registered))?
        })
        .collect()
}

fn watch_of(path: &Path, meta: &std::fs::Metadata, registered: &BTreeSet<u32>) -> Option<Watch> {
    let label = path.to_string_lossy().into_owned();
    let ident = if meta.file_type().is_char_device() {
        let (major, minor) = split_dev(meta.rdev());
        if !registered.contains(&major) {
            return None;
        }
        Ident::Chr { major, minor }
    } else if meta.is_file() {
        let (major, minor) = split_dev(meta.dev());
        Ident::File {
            major,
            minor,
            ino: meta.ino(),
        }
    } else {
        return None;
    };
    Some(Watch { label, ident })
}

/// Major and minor of a `dev_t` as user space sees it (glibc's encoding, as in `st_rdev`).
pub fn split_dev(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// The kernel's internal `dev_t` (`i_rdev`, `s_dev`): `major << 20 | minor`.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << nodewatch_common::gpu_ioctl::MINOR_BITS) | (minor & 0xfffff)
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ident::Chr { major, minor } => write!(f, "char {major}:{minor}"),
            Ident::File { major, minor, ino } => {
                write!(f, "file on {major}:{minor} inode {ino}")
            }
            Ident::Major { major } => write!(f, "every minor of char major {major}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_DEVICES: &str = "Character devices:\n  1 mem\n  5 /dev/tty\n 10 misc\n195 nvidia-frontend\n226 drm\n234 nvidia-uvm\n235 nvidia-caps\n237 kfd\n\nBlock devices:\n  7 loop\n234 nvidia-uvm-is-not-a-block-device\n";

    #[test]
    fn parses_char_majors_only() {
        let m = char_majors(PROC_DEVICES);
        assert_eq!(m.get("nvidia-uvm"), Some(&234));
        assert_eq!(m.get("kfd"), Some(&237));
        assert_eq!(m.get("/dev/tty"), Some(&5));
        assert_eq!(m.get("loop"), None);
        assert_eq!(m.len(), 8);
        assert!(char_majors("").is_empty());
        assert_eq!(block_majors(PROC_DEVICES), BTreeSet::from([7, 234]));
        assert!(char_majors("Character devices:\nnot a line\n").is_empty());
    }

    #[test]
    fn converts_between_user_and_kernel_dev_t() {
        // glibc: minor low 8 bits | bits 20..; major bits 8..19 | bits 32..
        let big = libc::makedev(511, 0x12345);
        assert_eq!(split_dev(big), (511, 0x12345));
        assert_eq!(kernel_dev(511, 0x12345), (511 << 20) | 0x12345);
        assert_eq!(split_dev(libc::makedev(1, 3)), (1, 3));
        assert_eq!(kernel_dev(1, 3), 0x100003);
    }

    #[test]
    fn drivers_match_globs_by_name_and_nodes_by_number() {
        let dir = std::env::temp_dir().join(format!("nw-devs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("caps")).unwrap();
        std::fs::write(dir.join("gpu0"), "").unwrap();
        std::fs::write(dir.join("other"), "").unwrap();
        let d = dir.display();
        // /dev/null is a real char device node of major 1 ("mem").
        let globs: Vec<String> = vec![
            format!("{d}/gpu*"),
            "/dev/null".into(),
            "/dev/nvidia*".into(),
            "/dev/kfd".into(),
            format!("{d}/missing*"),
        ];
        let w = scan(&globs, PROC_DEVICES);
        let meta = std::fs::metadata(dir.join("gpu0")).unwrap();
        let (major, minor) = split_dev(meta.dev());
        let expect_file = Watch {
            label: format!("{d}/gpu0"),
            ident: Ident::File {
                major,
                minor,
                ino: meta.ino(),
            },
        };
        assert!(w.contains(&expect_file), "{w:?}");
        assert!(w.contains(&Watch {
            label: "/dev/null".into(),
            ident: Ident::Chr { major: 1, minor: 3 }
        }));
        for (name, major) in [
            ("nvidia-frontend", 195),
            ("nvidia-uvm", 234),
            ("nvidia-caps", 235),
            ("kfd", 237),
        ] {
            let want = Watch {
                label: format!("/dev/{name}"),
                ident: Ident::Major { major },
            };
            assert!(w.contains(&want), "{want:?} in {w:?}");
        }
        assert!(!w.iter().any(|w| w.label.ends_with("other")), "{w:?}");
        assert!(!w.iter().any(|w| w.label.contains("drm")), "{w:?}");
        // A node whose major no driver registered is stale: not watched.
        let w = scan(&["/dev/null".into()], "Character devices:\n 10 misc\n");
        assert!(w.is_empty(), "{w:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
