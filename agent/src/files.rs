//! Files the agent writes: state that must survive a crash or a restart.

use std::{path::Path, sync::mpsc, thread::JoinHandle};

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

    /// Waits until every job queued so far has run.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.run(move || {
            let _ = ack.send(());
        }) {
            let _ = done.recv();
        }
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
