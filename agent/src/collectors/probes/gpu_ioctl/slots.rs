//! Histogram slots: the (device, cgroup) pairs whose calls the exit program counts by index
//! in a per-CPU array, with no hash lookup per call.
//!
//! A pair is first counted in the per-CPU hash (`GPU_HIST`). Each tick this side gives every
//! pair it finds there a free slot of `GPU_HIST_SLOTS` (zeroed first) and writes the pair's
//! slot into `GPU_HIST_INDEX`; the entry program reads that index when a thread's pair
//! changes and keeps it in the thread's in-flight record, and the exit program counts there
//! from then on. A pair's count is its hash entry plus its slot. When a pair goes (its cgroup
//! is gone, so no thread can still count into it) the slot is taken back and reused.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use nodewatch_common::gpu_ioctl::{DevHist, HIST_SLOTS, HistKey};

/// What the slots may take of kernel memory, over every CPU.
const BUDGET_BYTES: usize = 16 << 20;

/// How many slots to make for `cpus` CPUs: the budget's worth, at most [`HIST_SLOTS`].
pub fn slot_count(cpus: usize) -> u32 {
    let per_slot = std::mem::size_of::<DevHist>() * cpus.max(1);
    (BUDGET_BYTES / per_slot).clamp(1, HIST_SLOTS as usize) as u32
}

pub struct Slots {
    index: HashMap<MapData, HistKey, u32>,
    slots: PerCpuArray<MapData, DevHist>,
    cpus: usize,
    given: BTreeMap<HistKey, u32>,
    free: Vec<u32>,
}

impl Slots {
    pub fn new(
        index: HashMap<MapData, HistKey, u32>,
        slots: PerCpuArray<MapData, DevHist>,
        cpus: usize,
        count: u32,
    ) -> Self {
        Self {
            index,
            slots,
            cpus,
            given: BTreeMap::new(),
            // Popped from the end: slot 0 first.
            free: (0..count).rev().collect(),
        }
    }

    /// What `key` counted in its slot (empty where it has none), giving it one if it has
    /// none and one is free.
    pub fn read(&mut self, key: &HistKey) -> Result<Vec<DevHist>, MapError> {
        if let Some(&slot) = self.given.get(key) {
            return Ok(self.slots.get(&slot, 0)?.to_vec());
        }
        if let Some(slot) = self.free.pop() {
            // Zeroed before the entry program can find it.
            let zeros =
                PerCpuValues::try_from(vec![DevHist::default(); self.cpus]).map_err(|e| {
                    MapError::SyscallError(aya::sys::SyscallError {
                        call: "zeroed slot",
                        io_error: e,
                    })
                })?;
            self.slots.set(slot, zeros, 0)?;
            if let Err(e) = self.index.insert(key, slot, 0) {
                self.free.push(slot);
                return Err(e);
            }
            self.given.insert(*key, slot);
        }
        Ok(Vec::new())
    }

    /// Takes `key`'s slot back, if it has one.
    pub fn remove(&mut self, key: &HistKey) {
        if let Some(slot) = self.given.remove(key) {
            let _ = self.index.remove(key);
            self.free.push(slot);
        }
    }
}
