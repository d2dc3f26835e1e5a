//! A fixture `/sys/class/infiniband` tree: devices with ports whose state, rate and counters
//! a test rewrites while the agent reads them (`probes.infiniband.sysfs_root`).

use std::path::PathBuf;

use super::TempDir;

/// The tree, under the test's folder.
pub struct IbTree {
    pub root: PathBuf,
}

impl IbTree {
    /// An empty tree at `dir/infiniband`.
    pub fn new(dir: &TempDir) -> Self {
        let root = dir.0.join("infiniband");
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    fn port(&self, device: &str, port: u32) -> PathBuf {
        self.root.join(device).join("ports").join(port.to_string())
    }

    /// Adds (or resets) a port: ACTIVE, LinkUp, 400 Gb/s NDR, every counter 0.
    pub fn add_port(&self, device: &str, port: u32) {
        let dir = self.port(device, port);
        std::fs::create_dir_all(dir.join("counters")).unwrap();
        self.set(device, port, "state", "4: ACTIVE");
        self.set(device, port, "phys_state", "5: LinkUp");
        self.set(device, port, "rate", "400 Gb/sec (4X NDR)");
        self.set(device, port, "link_layer", "InfiniBand");
        for c in [
            "link_downed",
            "symbol_error",
            "link_error_recovery",
            "port_rcv_errors",
            "excessive_buffer_overrun_errors",
            "local_link_integrity_errors",
            "port_xmit_discards",
        ] {
            self.set(device, port, &format!("counters/{c}"), "0");
        }
    }

    /// Writes one attribute of a port (`state`, `counters/link_downed`, ...) as sysfs does,
    /// with a newline.
    pub fn set(&self, device: &str, port: u32, file: &str, value: &str) {
        let path = self.port(device, port).join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{value}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// `probes.infiniband` for this tree.
    pub fn config(&self) -> String {
        format!(
            "  infiniband: {{ sysfs_root: \"{}\" }}\n",
            self.root.display()
        )
    }
}
