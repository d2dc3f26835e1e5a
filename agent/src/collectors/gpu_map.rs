//! The PCI bus id → NVML GPU map the NVML thread keeps and the kernel-log readers use to
//! name the GPU an Xid line is about. The log writes a bus id (`PCI:0000:3b:00`); NVML knows
//! each GPU's bus id, index and UUID.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

/// A PCI device address without its function: domain, bus and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// Parses `0000:3b:00`, `0000:3b:00.0` or NVML's `00000000:3B:00.0` (hex, any case).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.split_once('.').map_or(s, |(a, _)| a);
        let mut parts = s.split(':');
        let (domain, bus, device) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || domain.is_empty() || domain.len() > 8 {
            return None;
        }
        let hex2 = |p: &str| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok())?;
        Some(Self {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: hex2(bus)?,
            device: hex2(device)?,
        })
    }
}

impl fmt::Display for PciAddr {
    /// As the driver's log writes it: `0000:3b:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// A GPU as NVML names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuId {
    /// NVML's index.
    pub index: u32,
    pub uuid: String,
}

/// The map, shared between the NVML thread (which writes it) and its readers. Empty where
/// NVML is not running.
#[derive(Debug, Clone, Default)]
pub struct GpuMap {
    inner: Arc<RwLock<HashMap<PciAddr, GpuId>>>,
    /// Bumped at each change, so a reader relabels only when something changed.
    version: Arc<AtomicU64>,
}

impl GpuMap {
    /// Replaces the map when `map` differs from it.
    pub fn set(&self, map: HashMap<PciAddr, GpuId>) {
        let mut cur = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if *cur != map {
            *cur = map;
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// The GPU at `addr`, if NVML knows one there.
    pub fn get(&self, addr: &PciAddr) -> Option<GpuId> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned()
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_of_the_log_and_of_nvml_are_one_address() {
        let a = PciAddr::parse("0000:3b:00").unwrap();
        assert_eq!(PciAddr::parse("00000000:3B:00.0"), Some(a));
        assert_eq!(PciAddr::parse("0000:3b:00.1"), Some(a));
        assert_eq!(a.to_string(), "0000:3b:00");
        assert_eq!(
            PciAddr::parse("1a2b:19:00").unwrap().to_string(),
            "1a2b:19:00"
        );
        for bad in [
            "",
            "3b:00",
            "0000:3b",
            "0000:3b:00:00",
            "zzzz:3b:00",
            "0000:3bb:00",
        ] {
            assert_eq!(PciAddr::parse(bad), None, "{bad}");
        }
        let map = GpuMap::default();
        let v = map.version();
        let m: HashMap<_, _> = [(
            a,
            GpuId {
                index: 3,
                uuid: "GPU-x".into(),
            },
        )]
        .into();
        map.set(m.clone());
        map.set(m);
        assert_eq!(map.version(), v + 1, "an unchanged map is no change");
        assert_eq!(map.get(&a).unwrap().index, 3);
    }
}
