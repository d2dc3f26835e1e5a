//! The GPUs a node has, from the PCI bus rather than the driver: NVIDIA's vendor id on a
//! display controller (VGA class 0x0300xx) or a 3D controller (0x0302xx, the data-centre
//! parts). A GPU the driver lost is still counted here, so NVML's count falling short of
//! this one is a signal even when no Xid line was logged. NVSwitches (bridge class 0x0680)
//! and the GPUs' audio functions (0x0403) are not GPUs.

use std::path::Path;

/// Where the kernel lists PCI functions.
pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// NVIDIA's PCI vendor id.
const NVIDIA: u32 = 0x10de;

/// How many NVIDIA display or 3D controllers the PCI folder `devices` lists. Functions whose
/// `vendor` or `class` cannot be read are skipped (one removed while we look).
pub fn nvidia_gpus(devices: &Path) -> std::io::Result<u32> {
    let mut n = 0;
    for e in std::fs::read_dir(devices)? {
        let dir = e?.path();
        let read = |f: &str| -> Option<u32> {
            let text = std::fs::read_to_string(dir.join(f)).ok()?;
            u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
        };
        let (Some(vendor), Some(class)) = (read("vendor"), read("class")) else {
            continue;
        };
        if vendor == NVIDIA && matches!(class >> 8, 0x0300 | 0x0302) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nvidia_display_and_3d_controllers_only() {
        let root = std::env::temp_dir().join(format!("nodewatch-pci-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (addr, vendor, class) in [
            ("0000:3b:00.0", "0x10de", "0x030200"), // H100: 3D controller
            ("0000:3b:00.1", "0x10de", "0x040300"), // its audio function
            ("0000:5e:00.0", "0x10de", "0x030000"), // a VGA-class NVIDIA GPU
            ("0000:86:00.0", "0x10de", "0x068000"), // NVSwitch
            ("0000:00:02.0", "0x8086", "0x030000"), // an Intel iGPU
            ("0000:af:00.0", "0x1002", "0x038000"), // AMD
            ("0000:d8:00.0", "0x10de", "0x030201"), // 3D controller, another prog-if
        ] {
            let d = root.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
        }
        // A function half gone: no class file.
        let gone = root.join("0000:e0:00.0");
        std::fs::create_dir_all(&gone).unwrap();
        std::fs::write(gone.join("vendor"), "0x10de\n").unwrap();
        assert_eq!(nvidia_gpus(&root).unwrap(), 3);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(nvidia_gpus(&root).is_err());
    }
}
