//! The queue of every watched listener, in every network namespace.
//!
//! sock_diag answers for the agent's own namespace only. For the others (containers, a
//! service started with `ip netns exec` or `PrivateNetwork=`), the kernel side notes each
//! watched listener a packet reaches, by socket inode: its cgroup, its backlog limit and its
//! network namespace's inode. Each tick, for the noted listeners sock_diag did not list, this
//! side reads `/proc/<pid>/net/tcp` and `tcp6` of a process in the listener's namespace — a
//! file that stays readable with every capability dropped, and whose LISTEN rows show the
//! queue length (`rx_queue`) and the inode. The process is found once per namespace and kept
//! while it stays there: first among the listener's cgroup, then among every process (a walk
//! of `/proc`, at most every few seconds per namespace). A note whose listener is found
//! nowhere is deleted.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use nodewatch_common::ListenerSeen;

use super::sockdiag::Listener;
use crate::{
    collectors::{containers::SharedContainers, probes::owners::lock},
    store::hash::{HashMap as FxHashMap, HashSet as FxHashSet},
};

/// One watched listener's queue, and the cgroup it belongs to (None: the kernel has not seen
/// a packet for it yet, which leaves it to the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub port: u16,
    pub cgroup: Option<u64>,
    pub length: u32,
    pub max: u32,
}

/// The kernel's notes of watched listeners.
pub struct Listeners {
    map: HashMap<MapData, u64, ListenerSeen>,
    proc_root: PathBuf,
    /// A process in each network namespace seen, by the namespace's inode, and the inode of
    /// its `net/tcp` entry, which tells whether it is still there.
    pids: FxHashMap<u32, (u32, u64)>,
    /// When `/proc` was last walked for a namespace no process was known in.
    walked: FxHashMap<u32, Instant>,
}

/// How often `/proc` may be walked for one namespace whose process is not known.
const WALK_EVERY: Duration = Duration::from_secs(5);

/// Where a noted listener's rows are read from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Place {
    Netns(u32),
    Cgroup(u64),
}

/// A LISTEN row of `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub port: u16,
    pub rx_queue: u32,
    pub inode: u64,
}

impl Listeners {
    pub fn new(map: HashMap<MapData, u64, ListenerSeen>, proc_root: &Path) -> Self {
        Self {
            map,
            proc_root: proc_root.to_path_buf(),
            pids: FxHashMap::default(),
            walked: FxHashMap::default(),
        }
    }

    /// Every watched listener's queue: `local` (sock_diag's, of the watched ports) with the
    /// cgroup the kernel noted for it, then the noted listeners of other namespaces.
    pub fn queues(&mut self, local: &[Listener], containers: &SharedContainers) -> Vec<Queue> {
        let notes: Vec<(u64, ListenerSeen)> = self.map.iter().filter_map(Result::ok).collect();
        let noted: FxHashMap<u64, ListenerSeen> = notes.iter().copied().collect();
        let mut out: Vec<Queue> = local
            .iter()
            .map(|l| Queue {
                port: l.port,
                cgroup: noted.get(&u64::from(l.inode)).map(|n| n.cgroup),
                length: l.queue_length,
                max: l.queue_max,
            })
            .collect();
        let here: FxHashSet<u64> = local.iter().map(|l| u64::from(l.inode)).collect();
        let mut elsewhere: Vec<(u64, ListenerSeen)> = notes
            .into_iter()
            .filter(|(ino, _)| !here.contains(ino))
            .collect();
        elsewhere.sort_unstable_by_key(|(ino, n)| (n.cgroup, *ino));
        // Rows read so far, by inode: each namespace (or, where the kernel gave none, each
        // cgroup) is read once, however many listeners it holds.
        let mut rows: FxHashMap<u64, Row> = FxHashMap::default();
        let mut read: FxHashSet<Place> = FxHashSet::default();
        for (ino, note) in elsewhere {
            let place = match note.netns {
                0 => Place::Cgroup(note.cgroup),
                ns => Place::Netns(ns),
            };
            if !rows.contains_key(&ino) && read.insert(place) {
                let pid = match place {
                    Place::Netns(ns) => self.pid_in(ns, ino, note.cgroup, containers),
                    Place::Cgroup(cgroup) => {
                        let dir = lock(containers).dir(cgroup);
                        dir.as_deref().and_then(first_pid)
                    }
                };
                if let Some(pid) = pid {
                    for file in ["net/tcp", "net/tcp6"] {
                        let path = self.proc_root.join(pid.to_string()).join(file);
                        for row in listen_rows(&path) {
                            rows.insert(row.inode, row);
                        }
                    }
                }
            }
            match rows.get(&ino) {
                Some(row) if row.port == note.port => out.push(Queue {
                    port: note.port,
                    cgroup: Some(note.cgroup),
                    length: row.rx_queue,
                    max: note.max_backlog,
                }),
                // Closed, or its cgroup has no process left to look through.
                _ => {
                    let _ = self.map.remove(&ino);
                }
            }
        }
        out
    }

    /// A process in network namespace `ns`: the one found last time while it is still
    /// there, else one of `cgroup`'s whose namespace holds listener `ino`, else (at most
    /// every [`WALK_EVERY`]) any such process on the host. The agent has dropped its
    /// capabilities, so `/proc/<pid>/ns/net` of a process with more is not readable; a
    /// namespace is told instead by the inode of its `/proc/<pid>/net/tcp` entry (one per
    /// namespace), and each namespace's rows are read once per search.
    fn pid_in(
        &mut self,
        ns: u32,
        ino: u64,
        cgroup: u64,
        containers: &SharedContainers,
    ) -> Option<u32> {
        let root = self.proc_root.clone();
        let tcp_entry = |pid: u32| -> Option<u64> {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(root.join(pid.to_string()).join("net/tcp"))
                .ok()
                .map(|m| m.ino())
        };
        if let Some(&(pid, entry)) = self.pids.get(&ns) {
            if tcp_entry(pid) == Some(entry) {
                return Some(pid);
            }
            self.pids.remove(&ns);
        }
        let mut checked: FxHashSet<u64> = FxHashSet::default();
        let mut holds = |pid: u32| -> Option<(u32, u64)> {
            let entry = tcp_entry(pid)?;
            if !checked.insert(entry) {
                return None;
            }
            let dir = root.join(pid.to_string());
            ["net/tcp", "net/tcp6"]
                .iter()
                .any(|f| listen_rows(&dir.join(f)).iter().any(|r| r.inode == ino))
                .then_some((pid, entry))
        };
        let dir = lock(containers).dir(cgroup);
        let mut found = dir
            .as_deref()
            .and_then(|d| cgroup_pids(d).into_iter().find_map(&mut holds));
        if found.is_none() {
            let now = Instant::now();
            let due = self
                .walked
                .get(&ns)
                .is_none_or(|t| now.duration_since(*t) >= WALK_EVERY);
            if due {
                self.walked.insert(ns, now);
                found = std::fs::read_dir(&root).ok().and_then(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                        .find_map(&mut holds)
                });
            }
        }
        let (pid, entry) = found?;
        self.walked.remove(&ns);
        // Namespaces come and go with their listeners; keep the cache small.
        if self.pids.len() >= 1024 {
            self.pids.clear();
        }
        self.pids.insert(ns, (pid, entry));
        Some(pid)
    }
}

/// The processes of a cgroup and its descendants (at most 64 folders, 4096 processes).
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut stack = vec![dir.to_path_buf()];
    let mut out = Vec::new();
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 64 || out.len() >= 4096 {
            break;
        }
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// The first process of a cgroup, or of the first of its descendants that has one (cgroup
/// v2 keeps processes in leaves).
fn first_pid(dir: &Path) -> Option<u32> {
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 64 {
            return None;
        }
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs"))
            && let Some(pid) = text.lines().find_map(|l| l.trim().parse().ok())
        {
            return Some(pid);
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    None
}

/// The LISTEN rows of a `/proc/net/tcp`-format file (nothing if it cannot be read).
fn listen_rows(path: &Path) -> Vec<Row> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .filter_map(|l| parse_row(&l))
        .collect()
}

/// `sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...`, LISTEN
/// (`st` 0A) rows only.
pub fn parse_row(line: &str) -> Option<Row> {
    let mut f = line.split_whitespace();
    let local = f.nth(1)?;
    let state = f.nth(1)?;
    if state != "0A" {
        return None;
    }
    let queues = f.next()?;
    let inode = f.nth(4)?;
    let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
    let rx_queue = u32::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
    Some(Row {
        port,
        rx_queue,
        inode: inode.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_rows() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_row(v4),
            Some(Row {
                port: 8080,
                rx_queue: 3,
                inode: 123456
            })
        );
        let v6 = "   1: 00000000000000000000000000000000:4E20 00000000000000000000000000000000:0000 0A 00000000:0000000A 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_row(v6),
            Some(Row {
                port: 20000,
                rx_queue: 10,
                inode: 99
            })
        );
        let established = "   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_row(established), None);
        assert_eq!(
            parse_row("  sl  local_address rem_address   st tx_queue rx_queue"),
            None
        );
        assert_eq!(parse_row(""), None);
    }

    #[test]
    fn finds_a_process_in_a_leaf() {
        let dir = std::env::temp_dir().join(format!("nw-cgprocs-{}", std::process::id()));
        let leaf = dir.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::write(leaf.join("cgroup.procs"), "4242\n4243\n").unwrap();
        assert_eq!(first_pid(&dir), Some(4242));
        std::fs::write(leaf.join("cgroup.procs"), "").unwrap();
        assert_eq!(first_pid(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
