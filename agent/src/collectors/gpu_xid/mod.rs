//! NVIDIA Xid errors and NVSwitch SXid errors from the kernel log, by GPU.
//!
//! `/dev/kmsg` is read from its start (the oldest record the kernel still holds) when the
//! agent starts, then every tick. Each Xid line's PCI bus id is mapped through NVML (the
//! `gpu_state` probe's map) to the GPU's index and UUID, and its code to an `action` from
//! NVIDIA's Xid catalog ([`catalog`]). The counts are kept in `<spool_dir>/gpu_xid.json` with
//! the boot id and the last record's sequence number: after a restart the same boot's counts
//! come back and no record is counted twice, so a GPU that fell off the bus keeps the node out
//! until the machine reboots, or an operator clears it (`<spool_dir>/gpu_xid.clear`).
//!
//! A line naming a PCI device that is neither a GPU NVML reports nor an NVIDIA device on this
//! machine's PCI bus (one written by hand, or by a test) is counted while the agent runs, but
//! not kept, and not read back from before the start. A gap when the log wrapped faster than
//! we read (`EPIPE`) is skipped.

pub mod catalog;
pub mod parse;
pub mod state;

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{ErrorKind, Read},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use self::{
    parse::Event,
    state::{Count, Files, Saved},
};
use super::{
    collector::{CollectError, Collector, Env, Mode, Off},
    gpu_map::{GpuMap, PciAddr},
};
use crate::store::{Family, Store, label_set, names, set_total};

pub const NAME: &str = "gpu_xid";
/// Most distinct `code` label values; later new codes count under `code="other"`. NVIDIA
/// documents about 160 codes, a node sees a handful: this bounds a corrupted or hostile log.
pub const MAX_XID_CODES: usize = 64;
const KMSG: &str = "/dev/kmsg";
/// Where the kernel lists PCI devices: an NVIDIA one there is a device of this node.
const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// `probes.gpu_xid:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuXidConfig {
    /// Whether NVIDIA Xid and NVSwitch SXid lines are counted from `/dev/kmsg`. Default
    /// `true`. The log is read from its start; counts are kept in `spool_dir` until the
    /// machine reboots.
    pub enabled: bool,
}

impl Default for GpuXidConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

label_set! {
    /// Labels of an Xid count: code, the GPU's bus id, NVML index and UUID (empty when NVML
    /// does not know the bus id), and the catalog's action.
    pub struct XidLabels { pub code, pub pci, pub gpu, pub uuid, pub action }
}

label_set! {
    /// Labels of an SXid count: code, the NVSwitch's bus id, and whether it was fatal.
    pub struct SxidLabels { pub code, pub pci, pub fatal }
}

/// Registers the Xid and SXid counters, reads the kernel log as far as it goes now and the
/// kept state; without access to the log the collector is off.
pub fn start(_cfg: &GpuXidConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let xids = Family::<XidLabels, Counter>::default();
    let sxids = Family::<SxidLabels, Counter>::default();
    store.register(
        names::GPU_XID_ERRORS,
        "NVIDIA Xid errors in the kernel log this boot, by code, GPU (bus id, NVML index and UUID) and the action NVIDIA's Xid catalog gives",
        xids.clone(),
    );
    store.register(
        names::GPU_SXID_ERRORS,
        "NVSwitch SXid errors in the kernel log this boot, by code, NVSwitch bus id and whether fatal",
        sxids.clone(),
    );
    let mut kmsg = match open() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(probe = NAME, error = %e, "cannot read {KMSG}; Xid errors are not counted");
            return Box::new(Off {
                name: NAME,
                reason: e.to_string(),
            });
        }
    };
    let files = Files::new(env.spool_dir);
    let boot_id = std::fs::read_to_string(env.proc_root.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut xid = Xid {
        kmsg: None,
        files,
        boot_id,
        map: env.gpus.clone(),
        map_version: None,
        pci_root: PathBuf::from(PCI_DEVICES),
        codes: Codes::default(),
        counts: BTreeMap::new(),
        skip_through: None,
        seq: 0,
        history: Vec::new(),
        xids,
        sxids,
    };
    xid.restore();
    // What the log holds now is history: it is counted at the first tick, once NVML's map of
    // bus ids is there.
    let mut history = Vec::new();
    if let Err(e) = read_all(&mut kmsg, |r| history.push(r)) {
        tracing::warn!(probe = NAME, error = %e, "reading {KMSG} from its start");
    }
    xid.history = history;
    xid.kmsg = Some(kmsg);
    Box::new(xid)
}

fn open() -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(KMSG)
}

/// Reads every record available now, handing on those that may be an Xid or SXid line
/// (with the sequence number of every record: the last one read is remembered).
fn read_all(kmsg: &mut File, mut each: impl FnMut(String)) -> std::io::Result<()> {
    // One record per read; the kernel refuses a buffer too small for the record.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            // Records were overwritten before we read them; carry on with the next.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What one count is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    sxid: bool,
    /// The bus id as `0000:3b:00`, empty when the line named none.
    pci: String,
    code: String,
    /// The Xid's action, or the SXid's `true`/`false` (fatal).
    tag: String,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Not an Xid or SXid line, or one counted before the restart.
    No,
    /// A line from before the start naming no device of this node.
    UnknownDevice,
    /// Counted, and kept across restarts.
    Kept,
    /// Counted while the agent runs only.
    NotKept,
}

/// One count and its series.
struct Entry {
    count: u64,
    /// Kept across restarts: the line names a device of this node.
    kept: bool,
    series: Option<Series>,
}

enum Series {
    Xid(XidLabels, Counter),
    Sxid(SxidLabels, Counter),
}

/// Reading `/dev/kmsg`.
struct Xid {
    kmsg: Option<File>,
    files: Files,
    boot_id: String,
    map: GpuMap,
    /// The map's version the series were labelled with.
    map_version: Option<u64>,
    pci_root: PathBuf,
    codes: Codes,
    counts: BTreeMap<Key, Entry>,
    /// Records up to this sequence number are counted in the restored state.
    skip_through: Option<u64>,
    /// The last record read.
    seq: u64,
    /// Records read at the start, counted at the first tick.
    history: Vec<String>,
    xids: Family<XidLabels, Counter>,
    sxids: Family<SxidLabels, Counter>,
}

impl Xid {
    /// Takes the kept counts back when they belong to this boot.
    fn restore(&mut self) {
        let Some(saved) = self.files.load() else {
            return;
        };
        if saved.boot_id != self.boot_id || self.boot_id.is_empty() {
            tracing::info!(probe = NAME, file = %self.files.state.display(), "Xid state of an earlier boot dropped");
            return;
        }
        for c in &saved.counts {
            let code = match c.code.parse() {
                Ok(n) => self.codes.label(n),
                Err(_) => c.code.clone(),
            };
            let key = Key {
                sxid: c.sxid,
                pci: c.pci.clone(),
                code,
                tag: c.tag.clone(),
            };
            self.counts.insert(
                key,
                Entry {
                    count: c.count,
                    kept: true,
                    series: None,
                },
            );
        }
        self.skip_through = Some(saved.seq);
        self.seq = saved.seq;
        tracing::info!(
            probe = NAME,
            counts = saved.counts.len(),
            seq = saved.seq,
            "Xid state of this boot restored"
        );
    }

    /// Whether `pci` names a device of this node: a GPU NVML reports, or an NVIDIA device
    /// on the PCI bus.
    fn known(&self, pci: Option<PciAddr>) -> bool {
        let Some(pci) = pci else { return true };
        if self.map.get(&pci).is_some() {
            return true;
        }
        let vendor = self.pci_root.join(format!("{pci}.0")).join("vendor");
        std::fs::read_to_string(vendor).is_ok_and(|v| v.trim() == "0x10de")
    }

    /// Counts one record.
    fn count(&mut self, raw: &str, history: bool) -> Counted {
        let Some(record) = parse::record(raw) else {
            return Counted::No;
        };
        if self.skip_through.is_some_and(|s| record.seq <= s) {
            return Counted::No;
        }
        self.seq = self.seq.max(record.seq);
        let Some(event) = parse::event(record.message) else {
            return Counted::No;
        };
        let (pci, key) = match &event {
            Event::Xid {
                pci, code, action, ..
            } => (
                *pci,
                Key {
                    sxid: false,
                    pci: pci.map(|p| p.to_string()).unwrap_or_default(),
                    code: self.codes.label(*code),
                    tag: (*action).to_string(),
                },
            ),
            Event::Sxid { pci, code, fatal } => (
                *pci,
                Key {
                    sxid: true,
                    pci: pci.map(|p| p.to_string()).unwrap_or_default(),
                    code: self.codes.label(*code),
                    tag: fatal.to_string(),
                },
            ),
        };
        let known = self.known(pci);
        if history && !known {
            return Counted::UnknownDevice;
        }
        if let Event::Xid {
            code,
            detail: Some(detail),
            action,
            ..
        } = &event
        {
            tracing::warn!(probe = NAME, pci = %key.pci, code, action, detail = %detail, "Xid with a verdict");
        }
        let entry = self.counts.entry(key).or_insert(Entry {
            count: 0,
            kept: false,
            series: None,
        });
        entry.count += 1;
        entry.kept |= known;
        if entry.kept {
            Counted::Kept
        } else {
            Counted::NotKept
        }
    }

    /// Writes the kept counts.
    fn save(&self) {
        let saved = Saved {
            boot_id: self.boot_id.clone(),
            seq: self.seq,
            counts: self
                .counts
                .iter()
                .filter(|(_, e)| e.kept)
                .map(|(k, e)| Count {
                    sxid: k.sxid,
                    pci: k.pci.clone(),
                    code: k.code.clone(),
                    tag: k.tag.clone(),
                    count: e.count,
                })
                .collect(),
        };
        if let Err(e) = self.files.save(&saved) {
            tracing::error!(probe = NAME, file = %self.files.state.display(), error = %e, "cannot keep the Xid state: a restart would forget it");
        }
    }

    /// Forgets the counts of the bus ids an operator asked to clear; true when one went.
    fn clear(&mut self) -> bool {
        let Some(which) = self.files.take_clear() else {
            return false;
        };
        let all = which.iter().any(|w| w == "all");
        let wanted: HashSet<String> = which
            .iter()
            .filter_map(|w| PciAddr::parse(w).map(|p| p.to_string()))
            .collect();
        let gone: Vec<Key> = self
            .counts
            .keys()
            .filter(|k| all || wanted.contains(&k.pci))
            .cloned()
            .collect();
        for k in &gone {
            if let Some(Entry {
                series: Some(s), ..
            }) = self.counts.remove(k)
            {
                match s {
                    Series::Xid(l, _) => {
                        self.xids.remove(&l);
                    }
                    Series::Sxid(l, _) => {
                        self.sxids.remove(&l);
                    }
                }
            }
        }
        tracing::info!(probe = NAME, asked = ?which, cleared = gone.len(), "Xid state cleared by the operator");
        true
    }

    /// Keeps each count's series in step, relabelling every Xid series when NVML's map of
    /// bus ids changed.
    fn export(&mut self) {
        let version = self.map.version();
        let relabel = self.map_version != Some(version);
        self.map_version = Some(version);
        for (k, e) in &mut self.counts {
            if relabel && let Some(Series::Xid(l, _)) = &e.series {
                self.xids.remove(l);
                e.series = None;
            }
            let series = e.series.get_or_insert_with(|| {
                if k.sxid {
                    let l = SxidLabels {
                        code: k.code.clone(),
                        pci: k.pci.clone(),
                        fatal: k.tag.clone(),
                    };
                    let c = self.sxids.get_or_create(&l);
                    Series::Sxid(l, c)
                } else {
                    let gpu = PciAddr::parse(&k.pci).and_then(|p| self.map.get(&p));
                    let l = XidLabels {
                        code: k.code.clone(),
                        pci: k.pci.clone(),
                        gpu: gpu
                            .as_ref()
                            .map(|g| g.index.to_string())
                            .unwrap_or_default(),
                        uuid: gpu.map(|g| g.uuid).unwrap_or_default(),
                        action: k.tag.clone(),
                    };
                    let c = self.xids.get_or_create(&l);
                    Series::Xid(l, c)
                }
            });
            match series {
                Series::Xid(_, c) | Series::Sxid(_, c) => set_total(c, e.count),
            }
        }
    }
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

impl Collector for Xid {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Kmsg)
    }
    fn attach_method(&self) -> String {
        format!(
            "{KMSG} (from its start; counts kept in {})",
            self.files.state.display()
        )
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        let mut changed = false;
        let mut unknown = 0;
        for raw in std::mem::take(&mut self.history) {
            match self.count(&raw, true) {
                Counted::Kept => changed = true,
                Counted::UnknownDevice => unknown += 1,
                Counted::No | Counted::NotKept => {}
            }
        }
        if unknown > 0 {
            tracing::info!(
                probe = NAME,
                lines = unknown,
                "Xid lines from before the start name no device of this node; not counted"
            );
        }
        let mut live = Vec::new();
        let read = match self.kmsg.as_mut() {
            Some(k) => read_all(k, |r| live.push(r)),
            None => Ok(()),
        };
        for raw in &live {
            changed |= self.count(raw, false) == Counted::Kept;
        }
        changed |= self.clear();
        if changed {
            self.save();
        }
        self.export();
        read.map_err(|source| CollectError::Read {
            path: KMSG.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests;
