//! A durable, bounded queue of notifications for one receiver: one file per notification in
//! `<spool_dir>/notifications/<receiver>/`, written atomically and removed once delivered, so
//! neither a receiver outage nor an agent crash loses one. A notification is queued in memory
//! first and its file written after ([`Spool::queue`], then [`Unwritten::write`] and
//! [`Spool::written`]), outside the queue's lock: the first delivery attempt does not wait
//! for the disk, whose `fsync` can take seconds on a node busy writing checkpoints.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::payload::OutAlert;
use crate::files::write_atomic;

/// One notification: an alert's state for one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across retries and restarts: the `webhook-id`.
    pub id: String,
    pub alert: OutAlert,
}

struct Entry {
    seq: u64,
    /// False when the file could not be written (full disk): delivered from memory only.
    persisted: bool,
    n: Notification,
}

/// A queued notification whose file is not written yet.
pub struct Unwritten {
    seq: u64,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Unwritten {
    /// The notification's sequence number in its spool.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the file (atomically, synced); no lock is needed.
    pub fn write(&self) -> std::io::Result<()> {
        write_atomic(&self.path, &self.bytes)
    }
}

/// What a push did besides queueing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Older notifications dropped because the queue was full.
    pub dropped: usize,
    /// Older notifications for the same alert replaced by this one.
    pub replaced: usize,
}

pub struct Spool {
    dir: PathBuf,
    max: usize,
    entries: VecDeque<Entry>,
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the receiver's folder and loads what an earlier run left undelivered.
    /// Unreadable files are skipped and reported by name.
    pub fn open(dir: &Path, max: usize) -> std::io::Result<(Self, Vec<String>)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = u64::from_str_radix(name.strip_suffix(".json")?, 16).ok()?;
                Some((seq, e.path()))
            })
            .collect();
        found.sort();
        let mut entries = VecDeque::new();
        let mut bad = Vec::new();
        for (seq, path) in found {
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Notification>(&b).ok())
            {
                Some(n) => entries.push_back(Entry {
                    seq,
                    persisted: true,
                    n,
                }),
                None => {
                    bad.push(path.display().to_string());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let next_seq = entries.back().map_or(0, |e| e.seq + 1);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max: max.max(1),
            entries,
            next_seq,
        };
        while spool.entries.len() > spool.max {
            spool.pop_front();
        }
        Ok((spool, bad))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.json"))
    }

    /// Makes room for `n` and gives it its sequence number. With `coalesce`, queued
    /// notifications for the same alert (except `in_flight`) are replaced; a full queue drops
    /// its oldest. The notification is queued in memory whatever its file's fate.
    fn make_room(
        &mut self,
        n: &Notification,
        coalesce: bool,
        in_flight: Option<u64>,
    ) -> (Pushed, u64) {
        let mut pushed = Pushed::default();
        if coalesce {
            let stale: Vec<u64> = self
                .entries
                .iter()
                .filter(|e| {
                    Some(e.seq) != in_flight && e.n.alert.fingerprint == n.alert.fingerprint
                })
                .map(|e| e.seq)
                .collect();
            pushed.replaced = stale.len();
            for seq in stale {
                self.remove(seq);
            }
        }
        while self.entries.len() >= self.max {
            self.pop_front();
            pushed.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        (pushed, seq)
    }

    /// Queues `n` at the back, in memory (see [`Spool::push`]); its file is to be written
    /// with [`Unwritten::write`] and reported with [`Spool::written`].
    pub fn queue(
        &mut self,
        n: Notification,
        coalesce: bool,
        in_flight: Option<u64>,
    ) -> (Pushed, Result<Unwritten, std::io::Error>) {
        let (pushed, seq) = self.make_room(&n, coalesce, in_flight);
        let bytes = serde_json::to_vec(&n).map_err(std::io::Error::other);
        self.entries.push_back(Entry {
            seq,
            persisted: false,
            n,
        });
        let path = self.path(seq);
        (pushed, bytes.map(|bytes| Unwritten { seq, path, bytes }))
    }

    /// The file of `seq` was written (`ok`) or not. Where the notification went meanwhile
    /// (delivered, replaced, dropped), its file goes too.
    pub fn written(&mut self, seq: u64, ok: bool) {
        match self.entries.iter_mut().find(|e| e.seq == seq) {
            Some(e) => e.persisted = ok,
            None if ok => {
                let _ = std::fs::remove_file(self.path(seq));
            }
            None => {}
        }
    }

    /// Queues `n` and writes its file at once: [`Spool::queue`], the write, [`Spool::written`].
    #[cfg(test)]
    pub fn push(
        &mut self,
        n: Notification,
        coalesce: bool,
        in_flight: Option<u64>,
    ) -> (Pushed, Option<std::io::Error>) {
        let (pushed, unwritten) = self.queue(n, coalesce, in_flight);
        let error = unwritten.and_then(|u| {
            let r = u.write();
            self.written(u.seq, r.is_ok());
            r
        });
        (pushed, error.err())
    }

    /// The oldest notification and its sequence number.
    pub fn front(&self) -> Option<(u64, Notification)> {
        self.entries.front().map(|e| (e.seq, e.n.clone()))
    }

    /// Removes a delivered (or given-up) notification.
    pub fn remove(&mut self, seq: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.seq == seq) {
            let e = self.entries.remove(i).expect("index from position");
            if e.persisted {
                let _ = std::fs::remove_file(self.path(seq));
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(seq) = self.entries.front().map(|e| e.seq) {
            self.remove(seq);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: &str, fp: &str) -> Notification {
        Notification {
            id: id.into(),
            alert: OutAlert {
                fingerprint: fp.into(),
                ..OutAlert::default()
            },
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nw-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_a_restart_in_order() {
        let d = dir("restart");
        let (mut s, _) = Spool::open(&d, 10).unwrap();
        for i in 0..3 {
            let (p, e) = s.push(note(&format!("n{i}"), &format!("f{i}")), false, None);
            assert_eq!((p, e.is_none()), (Pushed::default(), true));
        }
        let (seq, first) = s.front().unwrap();
        assert_eq!(first.id, "n0");
        s.remove(seq);
        drop(s);
        let (mut s, bad) = Spool::open(&d, 10).unwrap();
        assert!(bad.is_empty());
        assert_eq!(s.len(), 2);
        assert_eq!(s.front().unwrap().1.id, "n1");
        let (_, e) = s.push(note("n3", "f3"), false, None);
        assert!(e.is_none());
        let (seq, _) = s.front().unwrap();
        s.remove(seq);
        assert_eq!(s.front().unwrap().1.id, "n2");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bounded_and_coalescing() {
        let d = dir("bound");
        let (mut s, _) = Spool::open(&d, 2).unwrap();
        s.push(note("a", "x"), false, None);
        s.push(note("b", "y"), false, None);
        let (p, _) = s.push(note("c", "z"), false, None);
        assert_eq!(p.dropped, 1);
        assert_eq!(s.front().unwrap().1.id, "b");
        // The newest state of alert y replaces the queued one, unless it is being sent.
        let (p, _) = s.push(note("b2", "y"), true, None);
        assert_eq!(p.replaced, 1);
        assert_eq!(s.len(), 2);
        let (seq, _) = s.front().unwrap();
        let (p, _) = s.push(note("z2", "z"), true, Some(seq));
        assert_eq!(p.replaced, 0, "z is in flight: {p:?}");
        std::fs::write(d.join("00000000000000ff.json"), b"not json").unwrap();
        let (s, bad) = Spool::open(&d, 10).unwrap();
        assert_eq!(bad.len(), 1, "the corrupt file is reported");
        assert_eq!(s.len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
