//! The Xid counts kept in `<spool_dir>/gpu_xid.json` so that an agent restart neither forgets
//! a GPU that fell off the bus nor counts its line twice: the boot they belong to, and the
//! sequence number of the last kernel-log record read. A new boot starts from nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name in `spool_dir`.
pub const FILE: &str = "gpu_xid.json";
/// The operator's request to forget the Xid state of GPUs (bus ids, or `all`, one a line).
pub const CLEAR_FILE: &str = "gpu_xid.clear";

/// What is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// `/proc/sys/kernel/random/boot_id` of the boot the counts belong to.
    pub boot_id: String,
    /// The last kernel-log record read; later ones are read again after a restart.
    pub seq: u64,
    pub counts: Vec<Count>,
}

/// One count: an Xid (`sxid` false) or an SXid of the device at `pci` (empty: the line named
/// none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub sxid: bool,
    pub pci: String,
    pub code: String,
    /// The Xid's action, or the SXid's `fatal` (`true`, `false`).
    pub tag: String,
    pub count: u64,
}

/// Where the state lives, and the thread that writes it (off the tick).
pub struct Files {
    pub state: PathBuf,
    pub clear: PathBuf,
    writer: Option<crate::files::Jobs>,
    /// True while writes fail, so that a full disk is logged once.
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Files {
    pub fn new(spool_dir: &Path) -> Self {
        let writer = crate::files::Jobs::start("gpu-xid-state")
        .map_err(|e| tracing::error!(error = %e, "cannot start the Xid state writer; writing on the tick"))
        .ok();
        Self {
            state: spool_dir.join(FILE),
            clear: spool_dir.join(CLEAR_FILE),
            writer,
            failing: Default::default(),
        }
    }

    /// The saved state, if there is a readable one.
    pub fn load(&self) -> Option<Saved> {
        let text = std::fs::read(&self.state).ok()?;
        match serde_json::from_slice(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(file = %self.state.display(), error = %e, "unreadable Xid state ignored");
                None
            }
        }
    }

    /// Writes the state atomically, behind the caller (a failure is logged there).
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
        match &self.writer {
            Some(w) => {
                let (path, failing) = (self.state.clone(), std::sync::Arc::clone(&self.failing));
                w.run(move || {
                    use std::sync::atomic::Ordering::Relaxed;
                    match crate::files::write_atomic(&path, &bytes) {
                        Err(e) if !failing.swap(true, Relaxed) => {
                            tracing::error!(file = %path.display(), error = %e, "cannot keep the Xid state: a restart would forget it");
                        }
                        Err(_) => {}
                        Ok(()) if failing.swap(false, Relaxed) => {
                            tracing::info!(file = %path.display(), "Xid state written again");
                        }
                        Ok(()) => {}
                    }
                });
                Ok(())
            }
            None => crate::files::write_atomic(&self.state, &bytes),
        }
    }

    /// Waits until the state asked for is written.
    pub fn flush(&self) {
        if let Some(w) = &self.writer {
            w.flush();
        }
    }

    /// The bus ids an operator asked to clear (`all` clears every one), removing the request.
    pub fn take_clear(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(&self.clear).ok()?;
        let _ = std::fs::remove_file(&self.clear);
        Some(
            text.split_whitespace()
                .map(|w| w.trim().to_ascii_lowercase())
                .collect(),
        )
    }
}
