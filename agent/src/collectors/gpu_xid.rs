//! NVIDIA Xid errors, counted by code from the kernel log.
//!
//! `/dev/kmsg` is opened non-blocking and positioned at its end, so lines logged before the
//! agent started (and counted by a previous run) are not counted again. Each tick reads every
//! new record. A line that mentions an Xid but does not parse is ignored; so is a gap when the
//! log wrapped faster than we read (`EPIPE`).

use std::{
    fs::File,
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use super::collector::{CollectError, Collector, Env, Mode, Off};
use crate::store::{Family, Store, label_set, names};

pub const NAME: &str = "gpu_xid";
/// Most distinct `code` label values; later new codes count under `code="other"`. NVIDIA
/// documents about 150 codes, a node sees a handful: this bounds a corrupted or hostile log.
pub const MAX_XID_CODES: usize = 64;
const KMSG: &str = "/dev/kmsg";

/// `probes.gpu_xid:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuXidConfig {
    /// Whether NVIDIA Xid lines are counted from `/dev/kmsg`. Default `true`. Reading starts
    /// at the end of the log, so a restart does not count old lines again.
    pub enabled: bool,
}

impl Default for GpuXidConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

label_set! {
    /// Labels `{code}`: the Xid number.
    pub struct CodeLabels { pub code }
}

type Errors = Family<CodeLabels, Counter>;

/// Registers the Xid counter and opens the kernel log at its end; without access to it the
/// collector is off.
pub fn start(_cfg: &GpuXidConfig, _env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let errors = Errors::default();
    store.register(
        names::GPU_XID_ERRORS,
        "NVIDIA Xid errors in the kernel log since the agent started, by Xid code",
        errors.clone(),
    );
    match open_at_end() {
        Ok(kmsg) => Box::new(Kmsg {
            kmsg,
            codes: Codes::default(),
            errors,
        }),
        Err(e) => {
            tracing::warn!(probe = NAME, error = %e, "cannot read {KMSG}; Xid errors are not counted");
            Box::new(Off {
                name: NAME,
                reason: e.to_string(),
            })
        }
    }
}

fn open_at_end() -> std::io::Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(KMSG)?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

/// Reading `/dev/kmsg`.
struct Kmsg {
    kmsg: File,
    codes: Codes,
    errors: Errors,
}

/// The codes seen so far, capped at [`MAX_XID_CODES`].
#[derive(Default)]
pub struct Codes {
    seen: std::collections::HashSet<u32>,
    warned: bool,
}

impl Codes {
    /// The `code` label for `code`: itself, or `other` once the cap is reached (logged once).
    pub fn label(&mut self, code: u32) -> String {
        if self.seen.contains(&code) || self.seen.len() < MAX_XID_CODES {
            self.seen.insert(code);
            return code.to_string();
        }
        if !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(
                probe = NAME,
                code,
                max = MAX_XID_CODES,
                "too many distinct Xid codes; new ones are counted as code=\"other\""
            );
        }
        "other".into()
    }
}

impl Collector for Kmsg {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Kmsg)
    }
    fn attach_method(&self) -> String {
        format!("{KMSG} (from its end)")
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        // One record per read; the kernel refuses a buffer too small for the record.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.kmsg.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if let Some(code) = xid_code(&String::from_utf8_lossy(&buf[..n])) {
                        let code = self.codes.label(code);
                        self.errors.get_or_create(&CodeLabels { code }).inc();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                // Records were overwritten before we read them; carry on with the next.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CollectError::Read {
                        path: KMSG.into(),
                        source,
                    });
                }
            }
        }
    }
}

/// The Xid code of one `/dev/kmsg` record (`prio,seq,time,flags;message` then ` KEY=value`
/// lines), if its message is an NVIDIA Xid report such as
/// `NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.`
pub fn xid_code(record: &str) -> Option<u32> {
    let message = record.split_once(';').map_or(record, |(_, m)| m);
    let message = message.lines().next()?;
    let rest = message[message.find("NVRM: Xid")? + "NVRM: Xid".len()..].trim_start();
    // The device in parentheses is optional in old drivers' lines.
    let rest = match rest.strip_prefix('(') {
        Some(r) => &r[r.find(')')? + 1..],
        None => rest,
    };
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    // A real code is followed by a comma or the end of the line; cap the label's range.
    if digits == 0 || digits > 4 || !(rest[digits..].is_empty() || rest[digits..].starts_with(','))
    {
        return None;
    }
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_codes_are_capped() {
        let mut codes = Codes::default();
        for c in 0..MAX_XID_CODES as u32 {
            assert_eq!(codes.label(c), c.to_string());
        }
        assert_eq!(codes.label(9999), "other");
        assert_eq!(codes.label(3), "3", "known codes keep their label");
        assert_eq!(codes.label(9998), "other");
    }

    #[test]
    fn parses_xid_records() {
        for (record, code) in [
            (
                "4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.\n SUBSYSTEM=pci\n",
                Some(79),
            ),
            (
                "NVRM: Xid (PCI:0000:01:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception",
                Some(13),
            ),
            ("6,1,2,-;NVRM: Xid (0000:03:00): 31, Ch 00000010", Some(31)),
            (
                "6,1,2,-;NVRM: Xid: 48, An uncorrectable ECC error",
                Some(48),
            ),
            (
                "12,9,9,-;[ 12.3] NVRM: Xid (PCI:0000:3b:00): 119",
                Some(119),
            ),
        ] {
            assert_eq!(xid_code(record), code, "{record}");
        }
        for junk in [
            "",
            ";",
            "6,1,2,-;usb 1-1: new device",
            "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): seventy-nine",
            "6,1,2,-;NVRM: Xid (PCI:0000:3b:00: 79,",
            "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 79x, pid=1",
            "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 123456789, pid=1",
            "6,1,2,-;NVRM: Xid",
            "6,1,2,-;NVRM: GPU at PCI:0000:3b:00: GPU-1234\n NVRM: Xid (x): 79,",
        ] {
            assert_eq!(xid_code(junk), None, "{junk:?}");
        }
    }
}
