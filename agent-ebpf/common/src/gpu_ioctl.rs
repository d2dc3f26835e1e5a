//! The GPU ioctl probe's maps, limits and records.
//!
//! Devices are matched in the kernel by the inode behind the ioctl's fd: a character device by
//! its `i_rdev` (kernel `dev_t`, `major << 20 | minor`), a regular file (the test device) by
//! its super block's `s_dev` and `i_ino`. Each watched device has a small index; histograms
//! and counters live at that index, and userspace keeps the index → label table.

/// Tracepoint programs on `syscalls:sys_enter_ioctl` and `syscalls:sys_exit_ioctl`.
pub const PROG_ENTER: &str = "gpu_ioctl_enter";
/// The entry program that reads the file behind the fd and its inode with plain loads, through
/// `bpf_rdonly_cast` (kernels since 6.2): the cheapest, tried first.
pub const PROG_ENTER_CAST: &str = "gpu_ioctl_enter_cast";
/// The entry program for kernels that refuse BTF-typed pointers in tracepoint programs.
pub const PROG_ENTER_COMPAT: &str = "gpu_ioctl_enter_compat";
pub const PROG_EXIT: &str = "gpu_ioctl_exit";
/// kprobe program on a watched driver's own ioctl handler (see the agent's `driver.rs`).
pub const PROG_DRIVER_ENTER: &str = "gpu_ioctl_driver_enter";
/// Tracepoint program on `sched:sched_process_exit` (every thread's exit).
pub const PROG_THREAD_EXIT: &str = "gpu_ioctl_thread_exit";

/// Where [`PROG_ENTER`] reads `fd` and `cmd` in the `sys_enter_ioctl` record: the layout of
/// every syscall tracepoint (`struct syscall_trace_enter`: 8-byte header, `nr`, then the
/// arguments as 8-byte words from 16). Userspace loads that program only when tracefs agrees.
pub const ENTER_FD_AT: usize = 16;
pub const ENTER_CMD_AT: usize = 24;

/// `.rodata` global holding [`GpuIoctlParams`].
pub const PARAMS_GLOBAL: &str = "GPU_IOCTL_PARAMS";
/// Array map, indexed by major ([`MAX_MAJORS`] slots) → [`MajorWatch`]. Slot 0 stands for
/// inodes that are not device nodes (`i_rdev == 0`), i.e. watched regular files.
pub const MAJORS_MAP: &str = "GPU_MAJORS";
/// Hash map [`DevKey`] → device index.
pub const KEYS_MAP: &str = "GPU_KEYS";
/// Hash map thread (`pid_tgid`) → [`Call`]: one slot per live thread that has called a
/// watched device; `start_ns` is 0 while the thread is not in such a call.
pub const INFLIGHT_MAP: &str = "GPU_INFLIGHT";
/// Per-CPU hash map [`HistKey`] (device index, cgroup of the calling task) → [`DevHist`].
/// The exit program inserts keys (entries are allocated as they are first used); userspace
/// deletes those of cgroups that are gone.
pub const HIST_MAP: &str = "GPU_HIST";
/// One-entry per-CPU array holding a zeroed [`DevHist`], which the exit program copies into
/// a new [`HIST_MAP`] key (too large for the BPF stack).
pub const ZERO_MAP: &str = "GPU_HIST_ZERO";
/// Most (device, cgroup) keys in [`HIST_MAP`].
pub const MAX_HIST: u32 = 4096;
/// Per-CPU array of [`DevHist`]: the histograms of the (device, cgroup) pairs userspace has
/// given a slot, counted there by index (no hash lookup per call). Its size comes from a
/// memory budget over the CPUs; pairs without a slot are counted in [`HIST_MAP`], and
/// userspace adds both.
pub const HIST_SLOTS_MAP: &str = "GPU_HIST_SLOTS";
/// Hash map [`HistKey`] → slot in [`HIST_SLOTS_MAP`], written by userspace for each pair it
/// has seen in [`HIST_MAP`]; read by the entry program when a thread's pair changes.
pub const HIST_INDEX_MAP: &str = "GPU_HIST_INDEX";
/// [`HIST_SLOTS_MAP`] entries unless userspace says otherwise.
pub const HIST_SLOTS: u32 = 1024;
/// Array map, 256 slots of `u8`: 1 where an ioctl command of that type (`_IOC_TYPE`, bits
/// 8–15 of `cmd`) may be for a watched device. The entry program's first test, before the fd
/// walk: the watched drivers use few types (NVIDIA's `'F'`, ...). Every slot is 1 when a
/// watched device's driver is not in the table userspace keeps.
pub const TYPES_MAP: &str = "GPU_CMD_TYPES";
/// Array map of `u64` words, bit `tid % 64` of word `tid / 64` set while thread `tid` has a
/// slot in [`INFLIGHT_MAP`]: the exit program's first test, so threads that never called a
/// watched device pay no hash lookup. Userspace sizes it from `/proc/sys/kernel/pid_max`;
/// a thread id beyond it is looked up in the hash.
pub const THREADS_MAP: &str = "GPU_THREADS";
/// [`THREADS_MAP`] words unless userspace says otherwise (the kernel's largest `pid_max`).
pub const THREAD_WORDS: u32 = (4 * 1024 * 1024) / 64;
/// Ring buffer of [`StallEvent`]s.
pub const EVENTS_MAP: &str = "GPU_STALLS";
/// Per-CPU array of drop counters, indexed by `DROP_*`.
pub const DROPS_MAP: &str = "GPU_DROPS";

/// Most device labels one agent can watch (indices fit the minor table's `u8`).
pub const MAX_DEVICES: u32 = 64;
/// Most (device, inode) keys; several may share a label (a device node seen by two paths).
pub const MAX_KEYS: u32 = 512;
/// Char device majors are below the kernel's `CHRDEV_MAJOR_MAX` (512).
pub const MAX_MAJORS: u32 = 512;
/// Minors below this are looked up in [`MajorWatch::minors`], without a hash lookup.
pub const MINOR_SLOTS: usize = 256;
/// Most live threads that call watched devices; beyond it a call is not timed, and counted.
pub const MAX_INFLIGHT: u32 = 16384;
/// Ring buffer size for stall events (about 5000 events).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Bits of a kernel `dev_t` that hold the minor.
pub const MINOR_BITS: u32 = 20;

/// `DevKey.kind` of a character device: `dev` is its `i_rdev`, `ino` is 0.
pub const KIND_CHR: u32 = 1;
/// `DevKey.kind` of a regular file: `dev` is its super block's `s_dev`, `ino` its `i_ino`.
pub const KIND_FILE: u32 = 2;

/// `MajorWatch.flags`: some keys of this major are in [`KEYS_MAP`] (minors beyond
/// [`MINOR_SLOTS`], or regular files in slot 0).
pub const MAJOR_KEYS: u32 = 1;
/// `MajorWatch.flags`: every minor of this major counts under `MajorWatch.all_idx` unless
/// the minor table or a key says otherwise (a driver found in /proc/devices with no node
/// of its own).
pub const MAJOR_ALL: u32 = 2;
/// `MajorWatch.flags`: some minors are in `MajorWatch.minors`.
pub const MAJOR_MINORS: u32 = 4;
/// `MajorWatch.flags`: the number is also a block device major, so the inode's type must be
/// read to tell a char device from a block device (char and block majors are separate
/// number spaces; elsewhere the read is skipped).
pub const MAJOR_BLOCK: u32 = 8;

/// Drop counter: the ring buffer was full, a stall event was lost (the stall is still counted).
pub const DROP_EVENTS: u32 = 0;
/// Drop counter: the in-flight map was full, a watched call was not timed.
pub const DROP_INFLIGHT: u32 = 1;
/// Drop counter: the histogram map was full, a watched call was not counted.
pub const DROP_HIST: u32 = 2;
pub const DROP_SLOTS: u32 = 3;

/// Histogram buckets: bucket `b` holds durations in `(2^(b-1), 2^b]` ns (bucket 0: 0 and
/// 1 ns); the last bucket also takes everything longer (2^40 ns is about 18 minutes).
pub const BUCKETS: usize = 41;

/// The bucket of a duration: the smallest `b` with `ns <= 2^b`, at most `BUCKETS - 1`.
/// Written as a branchy binary search so the eBPF verifier sees a bounded result.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    // Bits needed for ns - 1 is the exponent of the next power of two at or above ns.
    let mut v = ns - 1;
    let mut bits = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        bits += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        bits += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        bits += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        bits += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        bits += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        bits += 1;
    }
    bits += v as usize;
    if bits >= BUCKETS { BUCKETS - 1 } else { bits }
}

/// What the programs need to know before they run: record and struct offsets (from tracefs
/// and the running kernel's BTF) and the stall threshold. A frozen `.rodata` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuIoctlParams {
    /// Calls at least this long are stalls: counted, and sent to userspace as events.
    pub stall_ns: u64,
    /// `sys_enter_ioctl` record: offsets of `fd` and `cmd`.
    pub enter_fd: u32,
    pub enter_cmd: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_mode`, `inode.i_rdev`, `inode.i_sb`, `inode.i_ino`.
    pub inode_mode: u32,
    pub inode_rdev: u32,
    pub inode_sb: u32,
    pub inode_ino: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// Set to 1 by userspace once every field above is filled in.
    pub valid: u32,
    /// Kernel BTF id of a struct whose member at offset 0 is a `struct file *` (`kiocb`):
    /// [`PROG_ENTER_CAST`] casts the fd array's slot to it, so the file, its inode and the
    /// inode's fields are plain loads. 0 where the kernel has none.
    pub file_slot_btf: u32,
    /// Kernel BTF id of `struct file`: the driver-entry programs cast their `struct file *`
    /// argument to it. 0 where the kernel's BTF has none.
    pub file_btf: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`: the calling
    /// task's cgroup v2 id by plain loads (what `bpf_get_current_cgroup_id` returns).
    pub task_cgroups: u32,
    pub cset_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub _pad: u32,
}

/// Where the `call` instruction of a kfunc sits in an object before userspace fills in the
/// kfunc's BTF id: `call` (0x85) with `src_reg` 2 (`BPF_PSEUDO_KFUNC_CALL`), offset 0
/// (vmlinux) and this placeholder immediate. Every such instruction calls `bpf_rdonly_cast`,
/// which the verifier replaces by a move; userspace patches the immediate before load.
pub const RDONLY_CAST_PLACEHOLDER: u32 = 0x7fff_fff0;
/// The whole placeholder instruction, as the object's bytes hold it (little-endian).
pub const RDONLY_CAST_INSN: u64 = ((RDONLY_CAST_PLACEHOLDER as u64) << 32) | 0x2085;

/// How one major is watched ([`MAJORS_MAP`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MajorWatch {
    /// `MAJOR_KEYS`, `MAJOR_ALL`, `MAJOR_MINORS`, `MAJOR_BLOCK`; 0: not watched.
    pub flags: u32,
    /// The device index for `MAJOR_ALL`.
    pub all_idx: u32,
    /// Minor → device index + 1 (0: not watched), for minors below [`MINOR_SLOTS`].
    pub minors: [u8; MINOR_SLOTS],
}

impl Default for MajorWatch {
    fn default() -> Self {
        Self {
            flags: 0,
            all_idx: 0,
            minors: [0; MINOR_SLOTS],
        }
    }
}

/// Identity of a watched inode ([`KEYS_MAP`] key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevKey {
    /// `KIND_CHR` or `KIND_FILE`.
    pub kind: u32,
    /// Kernel `dev_t`: `i_rdev` for a char device, `s_dev` for a file.
    pub dev: u32,
    /// `i_ino` for a file, 0 for a char device.
    pub ino: u64,
}

/// A thread's slot for its watched call in flight ([`INFLIGHT_MAP`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Call {
    /// `bpf_ktime_get_ns()` at entry (CLOCK_MONOTONIC); 0 when no call is in flight.
    pub start_ns: u64,
    pub dev_idx: u32,
    pub cmd: u32,
    /// The calling task's cgroup v2 id at entry.
    pub cgroup: u64,
    /// Index + 1 in [`HIST_SLOTS_MAP`] of (`dev_idx`, `cgroup`)'s histogram, looked up in
    /// [`HIST_INDEX_MAP`] when either changes; 0: none yet (the exit counts in [`HIST_MAP`]).
    pub hist_slot: u32,
    pub _pad: u32,
}

/// Key of [`HIST_MAP`]: a device and the cgroup of the tasks calling it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub cgroup: u64,
    pub dev_idx: u32,
    pub _pad: u32,
}

/// One device's counts on one CPU ([`HIST_MAP`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevHist {
    /// Calls per duration bucket (see [`bucket`]).
    pub buckets: [u64; BUCKETS],
    /// Sum of all durations, ns.
    pub sum_ns: u64,
    /// Calls that lasted at least the stall threshold.
    pub stalls: u64,
}

impl Default for DevHist {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_ns: 0,
            stalls: 0,
        }
    }
}

/// A call that returned after the stall threshold ([`EVENTS_MAP`] record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallEvent {
    pub duration_ns: u64,
    /// The calling task's cgroup v2 id.
    pub cgroup: u64,
    /// Process (tgid) and thread ids.
    pub pid: u32,
    pub tid: u32,
    pub dev_idx: u32,
    pub cmd: u32,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_inclusive_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(5), 3);
        for b in 1..40 {
            assert_eq!(bucket(1 << b), b, "2^{b}");
            assert_eq!(bucket((1 << b) + 1), b + 1, "2^{b}+1");
        }
        assert_eq!(bucket(1 << 40), 40);
        assert_eq!(bucket((1 << 40) + 1), BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // 3 ms and 1.5 s, the integration test's calls.
        assert_eq!(bucket(3_000_000), 22);
        assert_eq!(bucket(1_500_000_000), 31);
    }
}
