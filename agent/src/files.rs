//! Files the agent writes: state that must survive a crash or a restart.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
};

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes files with [`write_atomic`] on a thread of its own, the newest content of each file,
/// in the order asked: a disk slow to sync (seconds, on a node writing a checkpoint) then
/// never holds up the caller (the tick). Dropping it writes what is still queued first.
pub struct WriteBehind {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

enum Job {
    Write(PathBuf, Vec<u8>),
    Flush(mpsc::SyncSender<()>),
}

impl WriteBehind {
    /// A writer thread named `name`; a failed write is logged as `what` (once until a write
    /// works again).
    pub fn new(name: &str, what: &'static str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut failing = false;
                while let Ok(first) = rx.recv() {
                    // What has queued up meanwhile: only each file's newest content is written.
                    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
                    let mut acks = Vec::new();
                    for job in std::iter::once(first).chain(rx.try_iter()) {
                        match job {
                            Job::Write(path, bytes) => {
                                match files.iter_mut().find(|(p, _)| *p == path) {
                                    Some(f) => f.1 = bytes,
                                    None => files.push((path, bytes)),
                                }
                            }
                            Job::Flush(ack) => acks.push(ack),
                        }
                    }
                    for (path, bytes) in files {
                        match write_atomic(&path, &bytes) {
                            Err(e) if !failing => {
                                failing = true;
                                tracing::error!(file = %path.display(), error = %e, "{what}");
                            }
                            Err(_) => {}
                            Ok(()) if failing => {
                                failing = false;
                                tracing::info!(file = %path.display(), "written again");
                            }
                            Ok(()) => {}
                        }
                    }
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `bytes` as the new content of `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Write(path, bytes));
        }
    }

    /// Waits until everything queued so far is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Job::Flush(ack)).is_ok())
        {
            let _ = done.recv();
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs jobs (file writes) on a thread of its own, one after another in the order given, so
/// that a disk slow to sync never holds up the caller. Dropping it runs what is still queued
/// first.
pub struct Jobs {
    tx: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<JoinHandle<()>>,
}

impl Jobs {
    /// A thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rx.into_iter().for_each(|job| job()))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `job`; false if the thread is gone (it panicked), when the job is dropped.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send(Box::new(job)).is_ok())
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
