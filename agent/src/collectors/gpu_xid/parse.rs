//! Kernel-log records (`/dev/kmsg`) and the NVIDIA Xid and NVSwitch SXid reports in them.

use super::catalog;
use crate::collectors::gpu_map::PciAddr;

/// One `/dev/kmsg` record: `prio,seq,time,flags;message` then ` KEY=value` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The kernel's sequence number: one per record since boot.
    pub seq: u64,
    /// The first line of the message.
    pub message: &'a str,
}

/// Splits one record; `None` when it has no header the kernel writes.
pub fn record(raw: &str) -> Option<Record<'_>> {
    let (header, rest) = raw.split_once(';')?;
    let seq = header.split(',').nth(1)?.parse().ok()?;
    Some(Record {
        seq,
        message: rest.lines().next().unwrap_or(""),
    })
}

/// What an Xid or SXid line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.`
    Xid {
        /// The GPU's bus id; `None` in old drivers' lines that name none.
        pci: Option<PciAddr>,
        code: u32,
        /// From the catalog, or the line's own verdict (Xid 154, NVLink5 144–150).
        action: &'static str,
        /// Xid 154's verdict, or an NVLink5 Xid's unit, link and severity, as written.
        detail: Option<String>,
    },
    /// `nvidia-nvswitch3: SXid (PCI:0000:c7:00.0): 24007, Fatal, Link 34 sourcetrack timeout`
    Sxid {
        pci: Option<PciAddr>,
        code: u32,
        fatal: bool,
    },
}

/// The digits of a code at the start of `rest`, when a comma or the end of the line follows
/// (at most 5 digits: this bounds a garbled line); and what follows the comma.
fn code(rest: &str) -> Option<(u32, &str)> {
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let after = &rest[digits..];
    if digits == 0 || digits > 5 || !(after.is_empty() || after.starts_with(',')) {
        return None;
    }
    Some((
        rest[..digits].parse().ok()?,
        after.trim_start_matches(',').trim(),
    ))
}

/// `(PCI:0000:3b:00): ` or `(0000:3b:00): ` or nothing, then `: `; the bus id and the rest.
fn device(rest: &str) -> Option<(Option<PciAddr>, &str)> {
    let rest = rest.trim_start();
    let (pci, rest) = match rest.strip_prefix('(') {
        Some(r) => {
            let end = r.find(')')?;
            let inner = &r[..end];
            let inner = inner.strip_prefix("PCI:").unwrap_or(inner);
            (PciAddr::parse(inner), &r[end + 1..])
        }
        None => (None, rest),
    };
    Some((pci, rest.strip_prefix(':')?.trim_start()))
}

/// The Xid or SXid report of a message, if it is one.
pub fn event(message: &str) -> Option<Event> {
    if let Some(at) = message.find("NVRM: Xid") {
        let (pci, rest) = device(&message[at + "NVRM: Xid".len()..])?;
        let (code, text) = code(rest)?;
        let (action, detail) = verdict(code, text);
        return Some(Event::Xid {
            pci,
            code,
            action,
            detail,
        });
    }
    if let Some(at) = message.find("SXid") {
        let (pci, rest) = device(&message[at + "SXid".len()..])?;
        let (code, text) = code(rest)?;
        let fatal = text.split(',').next()?.trim().eq_ignore_ascii_case("fatal");
        return Some(Event::Sxid { pci, code, fatal });
    }
    None
}

/// The action for Xid `code` whose line goes on with `text`: Xid 154 says it (`GPU recovery
/// action changed from 0x0 (None) to 0x1 (GPU Reset Required)`); an NVLink5 Xid (144–150)
/// says whether it was fatal; every other code's is the catalog's.
fn verdict(code: u32, text: &str) -> (&'static str, Option<String>) {
    match code {
        154 => {
            let to = text.rsplit_once(" to ").map_or(text, |(_, t)| t);
            let number = to
                .trim()
                .strip_prefix("0x")
                .and_then(|t| t.split(|c: char| !c.is_ascii_hexdigit()).next())
                .and_then(|n| u32::from_str_radix(n, 16).ok());
            let lower = to.to_ascii_lowercase();
            let action = match number {
                Some(0) => "none",
                Some(1 | 4) => "reset_gpu",
                Some(2) => "reboot",
                Some(3) => "restart_app",
                _ if lower.contains("reboot") => "reboot",
                _ if lower.contains("reset") => "reset_gpu",
                _ => catalog::UNLISTED,
            };
            (action, Some(to.trim().chars().take(80).collect()))
        }
        144..=150 => {
            let words: Vec<&str> = text
                .split(|c: char| c == ',' || c.is_whitespace())
                .collect();
            let fatal = words.iter().any(|w| w.eq_ignore_ascii_case("fatal"));
            let nonfatal = words
                .iter()
                .any(|w| w.eq_ignore_ascii_case("nonfatal") || w.eq_ignore_ascii_case("non-fatal"));
            let action = if fatal {
                "reset_gpu"
            } else if nonfatal {
                "none"
            } else {
                catalog::action(code)
            };
            (action, Some(text.chars().take(80).collect()))
        }
        _ => (catalog::action(code), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(line: &str) -> Option<(Option<String>, u32, &'static str)> {
        match event(record(line).map_or(line, |r| r.message))? {
            Event::Xid {
                pci, code, action, ..
            } => Some((pci.map(|p| p.to_string()), code, action)),
            Event::Sxid { .. } => None,
        }
    }

    #[test]
    fn records_have_a_sequence_number() {
        let r =
            record("4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, x\n SUBSYSTEM=pci\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(r.message, "NVRM: Xid (PCI:0000:3b:00): 79, x");
        assert_eq!(record("no header"), None);
        assert_eq!(record("4,x,1,-;m"), None);
    }

    #[test]
    fn parses_xid_lines_with_their_gpu_and_action() {
        let p = Some("0000:3b:00".to_string());
        for (line, want) in [
            (
                "4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.\n SUBSYSTEM=pci\n",
                (p.clone(), 79, "reboot"),
            ),
            (
                "NVRM: Xid (PCI:0000:3B:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception",
                (p.clone(), 13, "restart_app"),
            ),
            (
                "6,1,2,-;NVRM: Xid (0000:03:00): 31, Ch 00000010",
                (Some("0000:03:00".into()), 31, "restart_app"),
            ),
            (
                "6,1,2,-;NVRM: Xid: 48, An uncorrectable ECC error",
                (None, 48, "reset_gpu"),
            ),
            (
                "12,9,9,-;[ 12.3] NVRM: Xid (PCI:0000:3b:00): 119",
                (p.clone(), 119, "reset_gpu"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 4242, new",
                (p.clone(), 4242, "inspect_hardware"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
                (p.clone(), 154, "reset_gpu"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) to 0x2 (Node Reboot Required)",
                (p.clone(), 154, "reboot"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)",
                (p.clone(), 154, "none"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 145, RLW_REMAP Nonfatal XC0 i0 Link 10 (0x00000000 0x00000000)",
                (p.clone(), 145, "none"),
            ),
            (
                "6,1,2,-;NVRM: Xid (PCI:0000:3b:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 04 (0x00000004 0x00000000)",
                (p.clone(), 149, "reset_gpu"),
            ),
        ] {
            assert_eq!(xid(line), Some(want), "{line}");
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
            assert_eq!(xid(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn parses_sxid_lines_of_nvswitches() {
        let at = PciAddr::parse("0000:c7:00").unwrap();
        assert_eq!(
            event(
                "nvidia-nvswitch3: SXid (PCI:0000:c7:00.0): 24007, Fatal, Link 34 sourcetrack timeout error (First)"
            ),
            Some(Event::Sxid {
                pci: Some(at),
                code: 24007,
                fatal: true
            })
        );
        assert_eq!(
            event(
                "nvidia-nvswitch3: SXid (PCI:0000:c7:00.0): 12028, Non-fatal, Link 37 egress non-posted PRIV error (First)"
            ),
            Some(Event::Sxid {
                pci: Some(at),
                code: 12028,
                fatal: false
            })
        );
        assert_eq!(event("nvidia-nvswitch3: SXid (PCI:0000:c7:00.0): x"), None);
    }
}
