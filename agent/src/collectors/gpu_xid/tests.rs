//! The Xid reader's kept state and its code labels.

use super::*;

/// An Xid reader without a kernel log: records are handed to it.
fn reader(spool: &std::path::Path, pci_root: &std::path::Path, boot: &str) -> Xid {
    let mut x = Xid {
        kmsg: None,
        files: Files::new(spool),
        boot_id: boot.into(),
        map: GpuMap::default(),
        map_version: None,
        pci_root: pci_root.into(),
        codes: Codes::default(),
        counts: BTreeMap::new(),
        skip_through: None,
        seq: 0,
        history: Vec::new(),
        xids: Family::default(),
        sxids: Family::default(),
    };
    x.restore();
    x
}

fn counts(x: &Xid) -> Vec<(String, String, u64)> {
    x.counts
        .iter()
        .map(|(k, e)| (k.pci.clone(), k.code.clone(), e.count))
        .collect()
}

#[test]
fn kept_counts_come_back_on_the_same_boot_once_and_go_when_cleared() {
    let dir = std::env::temp_dir().join(format!("nodewatch-xid-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (spool, pci) = (dir.join("spool"), dir.join("pci"));
    // A device of this node: an NVIDIA function on the PCI bus.
    std::fs::create_dir_all(pci.join("0000:3b:00.0")).unwrap();
    std::fs::write(pci.join("0000:3b:00.0/vendor"), "0x10de\n").unwrap();
    let ours = "4,10,1,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.";
    let foreign = "4,11,1,-;NVRM: Xid (PCI:0000:99:00): 79, pid=1, GPU has fallen off the bus.";
    let mut x = reader(&spool, &pci, "boot-a");
    assert_eq!(x.count(ours, false), Counted::Kept);
    assert_eq!(x.count(foreign, false), Counted::NotKept);
    assert_eq!(x.count("6,12,1,-;usb 1-1: new device", false), Counted::No);
    x.save();
    x.files.flush();
    assert_eq!(x.seq, 12);

    // Restarted on the same boot: the kept count is back, the log's start is skipped up to
    // the saved record, a later line counts, a foreign one from before the start does not.
    let mut y = reader(&spool, &pci, "boot-a");
    assert_eq!(counts(&y), [("0000:3b:00".into(), "79".into(), 1)]);
    for (raw, want) in [
        (ours, Counted::No),
        (foreign, Counted::No),
        (
            "4,13,1,-;NVRM: Xid (PCI:0000:99:00): 13, x",
            Counted::UnknownDevice,
        ),
        ("4,14,1,-;NVRM: Xid (PCI:0000:3b:00): 13, x", Counted::Kept),
    ] {
        assert_eq!(y.count(raw, true), want, "{raw}");
    }
    y.export();
    assert_eq!(y.counts.values().filter(|e| e.series.is_some()).count(), 2);
    let labels = XidLabels {
        code: "13".into(),
        pci: "0000:3b:00".into(),
        gpu: String::new(),
        uuid: String::new(),
        action: "restart_app".into(),
    };

    // The operator clears the GPU: its counts and series go, for good.
    std::fs::write(spool.join(state::CLEAR_FILE), "0000:3B:00\n").unwrap();
    assert!(y.clear());
    assert!(y.counts.is_empty());
    assert!(!y.xids.remove(&labels), "the series went with the count");
    y.save();
    y.files.flush();
    let z = reader(&spool, &pci, "boot-a");
    assert!(z.counts.is_empty());
    assert_eq!(z.skip_through, Some(14));

    // A new boot starts from nothing.
    let mut w = reader(&spool, &pci, "boot-a");
    assert_eq!(
        w.count(ours.replace(",10,", ",15,").as_str(), false),
        Counted::Kept
    );
    w.save();
    w.files.flush();
    assert!(reader(&spool, &pci, "boot-b").counts.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

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
