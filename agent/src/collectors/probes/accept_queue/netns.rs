//! The queue of every watched listener, in every network namespace.
//!
//! sock_diag answers for the agent's own namespace only. For the others (containers), the
//! kernel side notes each watched listener a packet reaches, by socket inode: its cgroup and
//! its backlog limit. Each tick, for the noted listeners sock_diag did not list, this side
//! reads `/proc/<pid>/net/tcp` and `tcp6` of a process in the listener's cgroup — a file that
//! stays readable with every capability dropped, and whose LISTEN rows show the queue length
//! (`rx_queue`) and the inode. A note whose listener is found nowhere is deleted.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
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
        // Rows read so far, by inode: a namespace shared by several cgroups (a pod's
        // containers) is read once for all of them.
        let mut rows: FxHashMap<u64, Row> = FxHashMap::default();
        let mut read: FxHashSet<u64> = FxHashSet::default();
        for (ino, note) in elsewhere {
            if !rows.contains_key(&ino) && read.insert(note.cgroup) {
                let dir = lock(containers).dir(note.cgroup);
                if let Some(pid) = dir.as_deref().and_then(first_pid) {
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
