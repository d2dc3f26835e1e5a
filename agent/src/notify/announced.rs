//! The alerts the notifiers announced as firing, kept in `spool_dir/notifications/announced.json`
//! so that an agent restarted (even after `kill -9`) while an alert still fires does not
//! announce it again, and one that resolved while the agent was down is still resolved.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::payload::OutAlert;
use crate::files::write_atomic;

/// Tick intervals after start during which a restored alert may be neither pending nor
/// firing before it counts as resolved: right after a restart, rules over a range (`rate`,
/// `increase`) have no samples yet. Counted in time, not ticks: ticks can come early.
pub const RESTORE_GRACE_INTERVALS: u32 = 3;

/// Where the announced alerts are kept.
pub struct Announced {
    path: PathBuf,
    /// True while writing fails, so that a full disk is logged once.
    failing: bool,
}

impl Announced {
    /// Opens the file in `spool_dir`; the alerts a previous run announced, by fingerprint. An
    /// unreadable file is logged and treated as empty (at worst an alert is announced twice).
    pub fn load(spool_dir: &Path) -> (Self, BTreeMap<String, OutAlert>) {
        let path = spool_dir.join("notifications").join("announced.json");
        let restored = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the announced alerts; alerts still firing will be announced again");
                BTreeMap::new()
            }
            Ok(bytes) => match serde_json::from_slice::<Vec<OutAlert>>(&bytes) {
                Ok(v) => v.into_iter().map(|a| (a.fingerprint.clone(), a)).collect(),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "announced alerts unreadable; alerts still firing will be announced again");
                    BTreeMap::new()
                }
            },
        };
        if !restored.is_empty() {
            tracing::info!(
                alerts = restored.len(),
                "alerts announced as firing by the previous run"
            );
        }
        (
            Self {
                path,
                failing: false,
            },
            restored,
        )
    }

    /// Replaces the file with `alerts`; a failure is logged once until a write works again.
    pub fn save<'a>(&mut self, alerts: impl Iterator<Item = &'a OutAlert>) {
        let mut list: Vec<&OutAlert> = alerts.collect();
        list.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        let result = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_atomic(&self.path, &bytes)
            });
        match result {
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(file = %self.path.display(), error = %e, "cannot save the announced alerts; a restart may announce them again");
                }
            }
            Ok(()) => {
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!(file = %self.path.display(), "announced alerts saved again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("nodewatch-announced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut a, restored) = Announced::load(&dir);
        assert!(restored.is_empty());
        let alert = OutAlert {
            fingerprint: "00ff".into(),
            status: "firing".into(),
            starts_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        a.save(std::iter::once(&alert));
        let (_, restored) = Announced::load(&dir);
        assert_eq!(restored.get("00ff"), Some(&alert));
        std::fs::write(dir.join("notifications/announced.json"), b"{not json").unwrap();
        assert!(Announced::load(&dir).1.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
