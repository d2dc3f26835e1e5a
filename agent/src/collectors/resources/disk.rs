//! Disk usage of real filesystems: mounts from `<proc>/self/mountinfo`, usage from statvfs.
//!
//! statvfs on a hung network filesystem never returns, so calls on filesystems that are not
//! known to be local run on a helper thread and are given up after a deadline; the mount is
//! skipped until that call comes back. The mount table is parsed again only when the kernel
//! says it changed.

use std::{
    collections::HashSet,
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use serde::Deserialize;

/// `resources.disk:` — which mounts count as real filesystems.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Filesystem types never reported (pseudo and in-memory filesystems). Default: the
    /// list in `packaging/config.yaml` (proc, sysfs, tmpfs, overlay, squashfs, ...).
    pub exclude_fstypes: Vec<String>,
    /// Mount points never reported, with everything below them. Default `/dev`, `/proc`,
    /// `/sys`, `/run/credentials`, `/var/lib/docker`, `/var/lib/containers`,
    /// `/var/lib/kubelet/pods`.
    pub exclude_mounts: Vec<PathBuf>,
    /// When not empty, only these mount points are reported (exclusions still apply).
    pub include_mounts: Vec<PathBuf>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        let fstypes = [
            "autofs",
            "binfmt_misc",
            "bpf",
            "cgroup",
            "cgroup2",
            "configfs",
            "debugfs",
            "devpts",
            "devtmpfs",
            "efivarfs",
            "fusectl",
            "hugetlbfs",
            "iso9660",
            "mqueue",
            "nsfs",
            "overlay",
            "proc",
            "pstore",
            "ramfs",
            "rpc_pipefs",
            "securityfs",
            "selinuxfs",
            "squashfs",
            "sysfs",
            "tmpfs",
            "tracefs",
        ];
        let mounts = [
            "/dev",
            "/proc",
            "/sys",
            "/run/credentials",
            "/var/lib/docker",
            "/var/lib/containers",
            "/var/lib/kubelet/pods",
        ];
        Self {
            exclude_fstypes: fstypes.iter().map(|s| s.to_string()).collect(),
            exclude_mounts: mounts.iter().map(PathBuf::from).collect(),
            include_mounts: Vec::new(),
        }
    }
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem.
    pub device: String,
    pub point: PathBuf,
    pub fstype: String,
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // `id parent major:minor root point options [optional...] - fstype source super`
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let fstype = right.split_whitespace().next()?;
            Some(Mount {
                device: left.get(2)?.to_string(),
                point: unescape(left.get(4)?),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
pub fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The mounts to report: real filesystems, each device once (its first mount point).
pub fn select(mounts: &[Mount], cfg: &DiskConfig) -> Vec<Mount> {
    let mut devices = HashSet::new();
    mounts
        .iter()
        .filter(|m| !cfg.exclude_fstypes.contains(&m.fstype))
        .filter(|m| !cfg.exclude_mounts.iter().any(|x| m.point.starts_with(x)))
        .filter(|m| cfg.include_mounts.is_empty() || cfg.include_mounts.contains(&m.point))
        .filter(|m| devices.insert(m.device.clone()))
        .cloned()
        .collect()
}

/// Used share of a filesystem the way `df` shows it: used / (used + available to users).
pub fn used_ratio(st: &libc::statvfs) -> Option<f64> {
    let used = st.f_blocks.checked_sub(st.f_bfree)? as f64;
    let total = used + st.f_bavail as f64;
    (st.f_blocks > 0 && total > 0.0).then(|| used / total)
}

/// Runs statvfs with a deadline, remembering mounts whose call has not come back. The calls
/// run on one long-lived thread (a thread per call costs more than the call); a thread stuck
/// in a call is left behind and the next call gets a new one.
#[derive(Default)]
pub struct Statvfs {
    stuck: Arc<Mutex<HashSet<PathBuf>>>,
    worker: Option<Worker>,
}

/// The thread that makes the calls, and the way to it and back.
struct Worker {
    ask: mpsc::Sender<PathBuf>,
    answers: mpsc::Receiver<std::io::Result<libc::statvfs>>,
}

/// What one statvfs call gave.
pub enum StatResult {
    Ratio(f64),
    /// The call failed (the mount went away, permission, ...): no series this tick.
    Failed(std::io::Error),
    /// No answer within the deadline, now or from an earlier call still pending.
    Hung,
}

impl Worker {
    fn spawn(stuck: Arc<Mutex<HashSet<PathBuf>>>) -> std::io::Result<Self> {
        let (ask, asked) = mpsc::channel::<PathBuf>();
        let (answer, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for path in asked {
                    let result = statvfs(&path);
                    stuck
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&path);
                    if answer.send(result).is_err() {
                        // Given up on while it was stuck: a newer worker took over.
                        return;
                    }
                }
            })?;
        Ok(Self { ask, answers })
    }
}

impl Statvfs {
    pub fn stat(&mut self, point: &Path, fstype: &str, deadline: Duration) -> StatResult {
        if LOCAL_FSTYPES.contains(&fstype) {
            // Answered from the superblock in memory: no device or server to wait for.
            return Self::answer(statvfs(point));
        }
        {
            let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
            if stuck.contains(point) {
                return StatResult::Hung;
            }
            stuck.insert(point.to_path_buf());
        }
        let worker = match self.worker.take() {
            Some(w) => w,
            None => match Worker::spawn(Arc::clone(&self.stuck)) {
                Ok(w) => w,
                Err(e) => {
                    self.stuck
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(point);
                    return StatResult::Failed(e);
                }
            },
        };
        if worker.ask.send(point.to_path_buf()).is_err() {
            self.stuck
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(point);
            return StatResult::Failed(std::io::Error::other("statvfs thread gone"));
        }
        match worker.answers.recv_timeout(deadline) {
            Ok(result) => {
                self.worker = Some(worker);
                Self::answer(result)
            }
            // The worker is stuck in this call (the mount stays marked until it returns); it
            // is dropped here, so it ends once the call comes back.
            Err(_) => StatResult::Hung,
        }
    }
}

impl Statvfs {
    fn answer(result: std::io::Result<libc::statvfs>) -> StatResult {
        match result {
            Ok(st) => used_ratio(&st).map_or(
                StatResult::Failed(std::io::Error::other("empty filesystem")),
                StatResult::Ratio,
            ),
            Err(e) => StatResult::Failed(e),
        }
    }
}

/// Filesystems on local block devices: statvfs reads their counters from memory.
const LOCAL_FSTYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "exfat", "jfs", "reiserfs", "zfs",
];

/// The mount table of `<proc>/self/mountinfo`, parsed again only when the kernel signals a
/// change on it (it does, with `POLLPRI`, for procfs; a file elsewhere, as in tests, is read
/// every time).
#[derive(Default)]
pub struct MountTable {
    file: Option<std::fs::File>,
    watchable: bool,
    mounts: Vec<Mount>,
}

impl MountTable {
    /// The mounts now.
    pub fn read(&mut self, path: &Path) -> std::io::Result<&[Mount]> {
        use std::io::{Read, Seek};
        let changed = match &self.file {
            None => true,
            Some(_) if !self.watchable => true,
            Some(f) => {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(f),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no waiting.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n != 0 || p.revents != 0
            }
        };
        if !changed {
            return Ok(&self.mounts);
        }
        let mut f = match self.file.take() {
            Some(mut f) => {
                f.rewind()?;
                f
            }
            None => {
                let f = std::fs::File::open(path)?;
                self.watchable = on_procfs(&f);
                f
            }
        };
        let mut text = String::new();
        let read = f.read_to_string(&mut text);
        if read.is_ok() {
            self.file = Some(f);
        }
        read?;
        self.mounts = parse_mountinfo(&text);
        Ok(&self.mounts)
    }
}

/// Whether `f` lives on procfs, whose mountinfo signals changes.
pub fn on_procfs(f: &std::fs::File) -> bool {
    // SAFETY: a zeroed statfs for the kernel to fill, on an open fd.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(f), &mut st) == 0
            && st.f_type == libc::PROC_SUPER_MAGIC
    }
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the kernel to fill.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) == 0 {
            Ok(st)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:5 / /proc rw shared:2 - proc proc rw
24 22 0:21 / /sys rw - sysfs sysfs rw
25 22 0:6 / /dev rw shared:3 - devtmpfs udev rw
26 25 0:23 / /dev/shm rw - tmpfs tmpfs rw
30 22 253:2 / /data\\040set rw,noatime shared:7 master:1 - xfs /dev/vdb rw
31 22 253:1 /srv/x /run/netns rw shared:1 - ext4 /dev/vda1 rw
32 22 0:40 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw
33 22 0:41 / /mnt/nfs rw - nfs4 srv:/export rw
this line is garbage
34 22 0:42 / /boot/efi rw - vfat /dev/vda15 rw
";

    #[test]
    fn parses_odd_mountinfo_lines() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 10, "the garbage line is skipped");
        let data = m.iter().find(|m| m.device == "253:2").unwrap();
        assert_eq!(data.point, PathBuf::from("/data set"), "escaped space");
        assert_eq!(data.fstype, "xfs", "optional fields before the separator");
        assert_eq!(parse_mountinfo(""), vec![]);
        assert_eq!(unescape("a\\134b\\011"), PathBuf::from("a\\b\t"));
        assert_eq!(unescape("trailing\\04"), PathBuf::from("trailing\\04"));
    }

    #[test]
    fn selects_real_filesystems_once() {
        let all = parse_mountinfo(MOUNTINFO);
        let points = |cfg: &DiskConfig| -> Vec<PathBuf> {
            select(&all, cfg).into_iter().map(|m| m.point).collect()
        };
        let cfg = DiskConfig::default();
        assert_eq!(
            points(&cfg),
            ["/", "/data set", "/mnt/nfs", "/boot/efi"].map(PathBuf::from),
            "pseudo filesystems, docker layers and the bind mount of / are left out"
        );
        let cfg = DiskConfig {
            include_mounts: vec![PathBuf::from("/data set")],
            ..Default::default()
        };
        assert_eq!(points(&cfg), vec![PathBuf::from("/data set")]);
        let cfg = DiskConfig {
            exclude_fstypes: vec![],
            exclude_mounts: vec![PathBuf::from("/mnt")],
            include_mounts: vec![],
        };
        assert!(points(&cfg).contains(&PathBuf::from("/dev/shm")));
        assert!(!points(&cfg).contains(&PathBuf::from("/mnt/nfs")));
    }

    #[test]
    fn ratio_is_dfs_use_percentage() {
        // SAFETY: statvfs is plain old data.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        st.f_blocks = 1000;
        st.f_bfree = 300; // 700 used
        st.f_bavail = 250; // 50 reserved for root
        assert_eq!(used_ratio(&st), Some(700.0 / 950.0));
        st.f_blocks = 0;
        assert_eq!(used_ratio(&st), None);
    }
}
