//! Hook: tracepoints `syscalls:sys_enter_ioctl` (`fd`, `cmd`) and `syscalls:sys_exit_ioctl`,
//! and `sched:sched_process_exit`. Reads current task → files → fdt → fd[n] → file → inode
//! (`i_mode`, `i_rdev`, `i_sb` → `s_dev`, `i_ino`) to find the device behind the fd.
//!
//! At entry a call on a watched device is remembered per thread (start, device, command, the
//! task's cgroup v2 id); at exit its duration goes into the power-of-two histogram of that
//! device and cgroup, and a call that lasted
//! the stall threshold or longer is counted and sent to userspace through a ring buffer.
//! `sched:sched_process_exit` frees a thread's slot when the thread ends.
//!
//! Every ioctl on the host runs both programs, so each starts with its cheapest test: the
//! entry program looks the command's type byte up in a 256-slot array (the watched drivers
//! use few types) before it walks to the fd's inode; the exit program tests the thread's bit
//! in a bitmap of the threads that hold an in-flight slot before any hash lookup.
#![no_std]
#![no_main]
// `bpf_rdonly_cast` is a kfunc: its call is written as one raw instruction.
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{kprobe, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, TracePointContext},
};
use nodewatch_common::gpu_ioctl::{
    BUCKETS, Call, DROP_EVENTS, DROP_HIST, DROP_INFLIGHT, DROP_SLOTS, DevHist, DevKey,
    EVENTS_BYTES, GpuIoctlParams, HIST_SLOTS, HistKey, KIND_CHR, KIND_FILE, MAJOR_ALL, MAJOR_BLOCK,
    MAJOR_KEYS, MAX_HIST, MAX_INFLIGHT, MAX_KEYS, MAX_MAJORS, MINOR_BITS, MINOR_SLOTS, MajorWatch,
    StallEvent, THREAD_WORDS, bucket,
};
use nodewatch_ebpf::{counter_add, counter_add_nesting};

nodewatch_ebpf::license!();

#[path = "gpu_ioctl_walk.rs"]
mod walk;
use walk::{Cast, Compat, Driver, Entry, Fast, Fields, read};

/// Offsets and threshold, set by userspace from tracefs, BTF and the config before load.
#[unsafe(no_mangle)]
static GPU_IOCTL_PARAMS: GpuIoctlParams = GpuIoctlParams {
    stall_ns: 0,
    enter_fd: 0,
    enter_cmd: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_mode: 0,
    inode_rdev: 0,
    inode_sb: 0,
    inode_ino: 0,
    sb_dev: 0,
    valid: 0,
    file_slot_btf: 0,
    file_btf: 0,
    task_cgroups: 0,
    cset_dfl_cgrp: 0,
    cgroup_kn: 0,
    kn_id: 0,
    _pad: 0,
};

#[map]
static GPU_MAJORS: Array<MajorWatch> = Array::with_max_entries(MAX_MAJORS, 0);
/// Command type byte → 1 where a watched device may use it.
#[map]
static GPU_CMD_TYPES: Array<u8> = Array::with_max_entries(256, 0);
/// Bit per thread id: set while the thread has a slot in [`GPU_INFLIGHT`].
#[map]
static GPU_THREADS: Array<u64> = Array::with_max_entries(THREAD_WORDS, 0);
/// How many bits [`GPU_THREADS`] has set: while none, an exit returns after one load.
#[map]
static GPU_THREADS_ON: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static GPU_KEYS: HashMap<DevKey, u32> = HashMap::with_max_entries(MAX_KEYS, 0);
#[map]
static GPU_INFLIGHT: HashMap<u64, Call> = HashMap::with_max_entries(MAX_INFLIGHT, 0);
/// Entries are allocated on first use: preallocating them would cost every CPU a copy of
/// every slot up front.
#[map]
static GPU_HIST: PerCpuHashMap<HistKey, DevHist> =
    PerCpuHashMap::with_max_entries(MAX_HIST, BPF_F_NO_PREALLOC);
#[map]
static GPU_HIST_SLOTS: PerCpuArray<DevHist> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);
#[map]
static GPU_HIST_INDEX: HashMap<HistKey, u32> = HashMap::with_max_entries(MAX_HIST, 0);
#[map]
static GPU_HIST_ZERO: PerCpuArray<DevHist> = PerCpuArray::with_max_entries(1, 0);
#[map]
static GPU_STALLS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
static GPU_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;
const S_IFREG: u16 = 0o100000;

#[tracepoint]
pub fn gpu_ioctl_enter(ctx: TracePointContext) -> u32 {
    match try_enter::<Fast>(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

/// The same with the file, its inode and the inode's fields read by plain loads: the fd
/// array's slot is cast to a kernel struct whose first member is a `struct file *`
/// (`bpf_rdonly_cast`, which the verifier turns into a move), so the walk makes no helper
/// call at all. For kernels with that kfunc (6.2 and later).
#[tracepoint]
pub fn gpu_ioctl_enter_cast(ctx: TracePointContext) -> u32 {
    match try_enter::<Cast>(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

/// The same, reading the record at the offsets tracefs gives and walking to the fd table
/// with `bpf_probe_read_kernel` only: for kernels whose verifier refuses
/// `bpf_get_current_task_btf` in a tracepoint program, or whose record layout differs.
#[tracepoint]
pub fn gpu_ioctl_enter_compat(ctx: TracePointContext) -> u32 {
    match try_enter::<Compat>(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn gpu_ioctl_exit(_ctx: TracePointContext) -> u32 {
    match try_exit() {
        Ok(()) | Err(_) => 0,
    }
}

#[inline(always)]
fn params() -> GpuIoctlParams {
    // SAFETY: a frozen .rodata global; the volatile read keeps the compiler from folding the
    // zero initialiser.
    unsafe { core::ptr::read_volatile(&GPU_IOCTL_PARAMS) }
}

#[inline(always)]
fn try_enter<E: Entry>(ctx: &TracePointContext) -> Result<(), i32> {
    // One array lookup rejects every command whose type no watched driver uses: most
    // ioctls on a host whose watched drivers are known stop here, before the fd walk.
    let cmd = E::cmd(ctx)?;
    match GPU_CMD_TYPES.get(((cmd >> 8) & 0xff) as u32) {
        Some(&t) if t != 0 => {}
        _ => return Ok(()),
    }
    let p = params();
    if p.valid == 0 {
        return Err(-1);
    }
    let fd = E::fd(ctx, &p)?;
    let inode = E::inode(&p, fd)?;
    watch_call::<E>(&p, cmd, inode)
}

/// Entry into a watched driver's own ioctl handler (`long handler(struct file *, unsigned int
/// cmd, unsigned long arg)`), on kernels with kprobes: only calls to that driver run it, so
/// no other ioctl on the host runs an entry program, and the file comes as the first argument
/// (no fd walk). The call's end is still seen by [`gpu_ioctl_exit`] on `sys_exit_ioctl`: a
/// kretprobe would miss the returns of calls blocked beyond its `maxactive` instances.
#[kprobe]
pub fn gpu_ioctl_driver_enter(ctx: ProbeContext) -> u32 {
    match try_driver_enter(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_driver_enter(ctx: &ProbeContext) -> Result<(), i32> {
    let p = params();
    if p.valid == 0 {
        return Err(-1);
    }
    let file: u64 = ctx.arg(0).ok_or(-1)?;
    let cmd: u64 = ctx.arg::<u64>(1).ok_or(-1)? & 0xffff_ffff;
    if file == 0 {
        return Ok(());
    }
    let inode: u64 = read(file, p.file_inode)?;
    watch_call::<Driver>(&p, cmd, inode)
}

/// The call `cmd` on `inode`: timed from now if the inode is a watched device (or file).
#[inline(always)]
fn watch_call<E: Fields>(p: &GpuIoctlParams, cmd: u64, inode: u64) -> Result<(), i32> {
    if inode == 0 {
        return Ok(());
    }
    let p = *p;
    let rdev: u32 = E::field(inode, p.inode_rdev)?;
    // One array lookup rejects every call whose major (or, for non-device inodes, slot 0)
    // nobody watches: most ioctls on the host stop here. Watched char devices are then found
    // in the major's minor table, also without a hash lookup.
    let Some(w) = GPU_MAJORS.get(rdev >> MINOR_BITS) else {
        return Ok(());
    };
    let flags = w.flags;
    if flags == 0 {
        return Ok(());
    }
    let dev_idx = if rdev != 0 {
        if flags & MAJOR_BLOCK != 0 {
            let mode: u16 = E::field(inode, p.inode_mode)?;
            if mode & S_IFMT != S_IFCHR {
                return Ok(()); // a block device with the same major
            }
        }
        let minor = (rdev & ((1 << MINOR_BITS) - 1)) as usize;
        let slot = if minor < MINOR_SLOTS {
            w.minors[minor]
        } else {
            0
        };
        if slot != 0 {
            u32::from(slot) - 1
        } else {
            let key = DevKey {
                kind: KIND_CHR,
                dev: rdev,
                ino: 0,
            };
            match lookup_key(flags, &key) {
                Some(idx) => idx,
                None if flags & MAJOR_ALL != 0 => w.all_idx,
                None => return Ok(()),
            }
        }
    } else {
        let mode: u16 = E::field(inode, p.inode_mode)?;
        if mode & S_IFMT != S_IFREG {
            return Ok(()); // a socket, pipe, ...: not a watched file
        }
        let sb: u64 = E::field(inode, p.inode_sb)?;
        let key = DevKey {
            kind: KIND_FILE,
            dev: E::field(sb, p.sb_dev)?,
            ino: E::field(inode, p.inode_ino)?,
        };
        match lookup_key(flags, &key) {
            Some(idx) => idx,
            None => return Ok(()),
        }
    };
    let id = bpf_get_current_pid_tgid();
    // A thread keeps its slot between calls (idle: start_ns == 0) and reuses it in place,
    // which spares the map's insert and delete (a lock each) on every call; the slot goes
    // when the thread exits.
    let cgroup = E::cgroup(&p);
    match GPU_INFLIGHT.get_ptr_mut(id) {
        // SAFETY: only this thread writes its own slot, and it is in this syscall.
        Some(slot) => unsafe {
            if (*slot).hist_slot == 0 || (*slot).dev_idx != dev_idx || (*slot).cgroup != cgroup {
                (*slot).hist_slot = hist_slot(dev_idx, cgroup);
                (*slot).dev_idx = dev_idx;
                (*slot).cgroup = cgroup;
            }
            (*slot).cmd = cmd as u32;
            core::ptr::write_volatile(&raw mut (*slot).start_ns, now_ns());
        },
        None => {
            let call = Call {
                start_ns: now_ns(),
                dev_idx,
                cmd: cmd as u32,
                cgroup,
                hist_slot: hist_slot(dev_idx, cgroup),
                _pad: 0,
            };
            if GPU_INFLIGHT.insert(id, call, 0).is_err() {
                drop_one(DROP_INFLIGHT);
            } else {
                mark_thread(id as u32, true);
            }
        }
    }
    Ok(())
}

/// The slot + 1 userspace gave (device, cgroup)'s histogram in [`GPU_HIST_SLOTS`]; 0: none.
#[inline(always)]
fn hist_slot(dev_idx: u32, cgroup: u64) -> u32 {
    let key = HistKey {
        cgroup,
        dev_idx,
        _pad: 0,
    };
    // SAFETY: values are plain u32s that userspace only replaces whole.
    match unsafe { GPU_HIST_INDEX.get(&key) } {
        Some(&i) => i + 1,
        None => 0,
    }
}

#[inline(always)]
fn lookup_key(flags: u32, key: &DevKey) -> Option<u32> {
    if flags & MAJOR_KEYS == 0 {
        return None;
    }
    // SAFETY: values are plain u32s that userspace only replaces whole.
    unsafe { GPU_KEYS.get(key) }.copied()
}

/// Frees an exiting thread's slot, so the in-flight map holds only live threads.
#[tracepoint]
pub fn gpu_ioctl_thread_exit(_ctx: TracePointContext) -> u32 {
    if !any_thread() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if has_slot(id as u32) {
        let _ = GPU_INFLIGHT.remove(id);
        mark_thread(id as u32, false);
    }
    0
}

/// Whether any thread holds a slot: the first test of every exit, with no helper call.
#[inline(always)]
fn any_thread() -> bool {
    // SAFETY: the one word of an array map; read whole.
    GPU_THREADS_ON
        .get_ptr(0)
        .is_some_and(|n| unsafe { core::ptr::read_volatile(n) } != 0)
}

/// Whether thread `tid` may have a slot in [`GPU_INFLIGHT`]: its bit, or true for a thread
/// id beyond the bitmap.
#[inline(always)]
fn has_slot(tid: u32) -> bool {
    match GPU_THREADS.get(tid >> 6) {
        Some(word) => *word & (1 << (tid & 63)) != 0,
        None => true,
    }
}

/// Sets or clears thread `tid`'s bit. Only the thread itself changes its bit (at its first
/// watched call, and as it exits), so an atomic add of the bit sets or clears it without
/// touching the other threads' bits of the word.
#[inline(always)]
fn mark_thread(tid: u32, on: bool) {
    let bit: u64 = 1 << (tid & 63);
    let Some(word) = GPU_THREADS.get_ptr_mut(tid >> 6) else {
        // A thread id beyond the bitmap (pid_max raised after start): its slot is looked
        // up by every exit from now on, so count it as one that never ends.
        if on {
            threads_on_add(1);
        }
        return;
    };
    // SAFETY: a word of the array map; every writer uses an atomic add.
    let set = unsafe { core::ptr::read_volatile(word) } & bit != 0;
    if set != on {
        counter_add_nesting(word, if on { bit } else { bit.wrapping_neg() });
        threads_on_add(if on { 1 } else { u64::MAX });
    }
}

#[inline(always)]
fn threads_on_add(n: u64) {
    if let Some(c) = GPU_THREADS_ON.get_ptr_mut(0) {
        counter_add_nesting(c, n);
    }
}

fn try_exit() -> Result<(), i32> {
    if !any_thread() {
        return Ok(()); // no thread has called a watched device
    }
    let id = bpf_get_current_pid_tgid();
    if !has_slot(id as u32) {
        return Ok(()); // this thread never called a watched device
    }
    let Some(slot) = GPU_INFLIGHT.get_ptr_mut(id) else {
        return Ok(());
    };
    // SAFETY: only this thread writes its own slot.
    let call = unsafe { *slot };
    if call.start_ns == 0 {
        return Ok(()); // idle: this call was not on a watched device
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*slot).start_ns, 0) };
    let ns = now_ns().saturating_sub(call.start_ns);
    let hist = if call.hist_slot != 0 {
        GPU_HIST_SLOTS.get_ptr_mut(call.hist_slot - 1)
    } else {
        hist_of(call.dev_idx, call.cgroup)
    };
    let Some(hist) = hist else {
        drop_one(DROP_HIST);
        return Ok(());
    };
    let b = bucket(ns);
    if b >= BUCKETS {
        return Err(-1); // unreachable; tells the verifier the index is bounded
    }
    // SAFETY: this CPU's copy of the value; tracing programs do not nest on one CPU.
    unsafe {
        counter_add(&raw mut (*hist).buckets[b], 1);
        counter_add(&raw mut (*hist).sum_ns, ns);
    }
    if ns < params().stall_ns {
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { counter_add(&raw mut (*hist).stalls, 1) };
    let Some(mut entry) = GPU_STALLS.reserve::<StallEvent>(0) else {
        drop_one(DROP_EVENTS);
        return Ok(());
    };
    entry.write(StallEvent {
        duration_ns: ns,
        pid: (id >> 32) as u32,
        tid: id as u32,
        dev_idx: call.dev_idx,
        cmd: call.cmd,
        cgroup: call.cgroup,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
    Ok(())
}

/// This CPU's histogram of (device, cgroup), created zeroed on first use; None when the map
/// is full.
#[inline(always)]
fn hist_of(dev_idx: u32, cgroup: u64) -> Option<*mut DevHist> {
    let key = HistKey {
        cgroup,
        dev_idx,
        _pad: 0,
    };
    if let Some(h) = GPU_HIST.get_ptr_mut(&key) {
        return Some(h);
    }
    // The zeroed template is never written.
    let zero = GPU_HIST_ZERO.get(0)?;
    // EEXIST if this thread was preempted by another inserting the same key: fine.
    let _ = GPU_HIST.insert(&key, zero, BPF_NOEXIST as u64);
    GPU_HIST.get_ptr_mut(&key)
}

#[inline(always)]
fn cgroup_id() -> u64 {
    // SAFETY: no preconditions; the current task's cgroup v2 id.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: reads CLOCK_MONOTONIC; no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn drop_one(slot: u32) {
    if let Some(c) = GPU_DROPS.get_ptr_mut(slot) {
        counter_add(c, 1);
    }
}
