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

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{kprobe, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, TracePointContext},
};
use nodewatch_common::gpu_ioctl::{
    BUCKETS, Call, DROP_EVENTS, DROP_HIST, DROP_INFLIGHT, DROP_SLOTS, DevHist, DevKey,
    ENTER_CMD_AT, ENTER_FD_AT, EVENTS_BYTES, GpuIoctlParams, HIST_SLOTS, HistKey, KIND_CHR,
    KIND_FILE, MAJOR_ALL, MAJOR_BLOCK, MAJOR_KEYS, MAX_HIST, MAX_INFLIGHT, MAX_KEYS, MAX_MAJORS,
    MINOR_BITS, MINOR_SLOTS, MajorWatch, StallEvent, THREAD_WORDS, bucket,
};
use nodewatch_ebpf::{counter_add, counter_add_nesting};

nodewatch_ebpf::license!();

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

/// How an entry program reads its record and walks from the fd to the inode's fields.
trait Entry {
    /// The ioctl's `fd` argument.
    fn fd(ctx: &TracePointContext, p: &GpuIoctlParams) -> Result<u64, i32>;
    /// Reads its own offset: the command is read before the rest of the parameters.
    fn cmd(ctx: &TracePointContext) -> Result<u64, i32>;
    /// The inode behind the current task's `fd`, or 0 where the fd is not open.
    fn inode(p: &GpuIoctlParams, fd: u64) -> Result<u64, i32>;
    /// A field of the inode (or of its super block): `T` at `inode + off`.
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32>;
    /// The calling task's cgroup v2 id.
    fn cgroup(_p: &GpuIoctlParams) -> u64 {
        cgroup_id()
    }
}

/// Plain loads: the record at the syscall tracepoints' fixed layout (userspace loads this
/// program only after checking it against tracefs), the fd table through BTF-typed pointers;
/// the file and the inode with helper reads.
struct Fast;

/// As [`Fast`], and the file and inode through `bpf_rdonly_cast`: no helper call.
struct Cast;

/// Helper reads only.
struct Compat;

impl Entry for Fast {
    #[inline(always)]
    fn fd(ctx: &TracePointContext, _: &GpuIoctlParams) -> Result<u64, i32> {
        // SAFETY: a constant offset inside the record; the verifier checks context reads.
        Ok(unsafe { read_volatile(ctx.as_ptr().cast::<u8>().add(ENTER_FD_AT).cast()) })
    }
    #[inline(always)]
    fn cmd(ctx: &TracePointContext) -> Result<u64, i32> {
        // SAFETY: as above.
        Ok(unsafe { read_volatile(ctx.as_ptr().cast::<u8>().add(ENTER_CMD_AT).cast()) })
    }
    #[inline(always)]
    fn inode(p: &GpuIoctlParams, fd: u64) -> Result<u64, i32> {
        inode_of(p, fd, fdtable_btf(p))
    }
    #[inline(always)]
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32> {
        read(inode, off)
    }
    #[inline(always)]
    fn cgroup(p: &GpuIoctlParams) -> u64 {
        cgroup_btf(p)
    }
}

impl Entry for Cast {
    #[inline(always)]
    fn fd(ctx: &TracePointContext, p: &GpuIoctlParams) -> Result<u64, i32> {
        Fast::fd(ctx, p)
    }
    #[inline(always)]
    fn cmd(ctx: &TracePointContext) -> Result<u64, i32> {
        Fast::cmd(ctx)
    }
    #[inline(always)]
    fn inode(p: &GpuIoctlParams, fd: u64) -> Result<u64, i32> {
        let (max_fds, fds) = fdtable_btf(p);
        if fd >= u64::from(max_fds) {
            return Ok(0); // EBADF: not a file at all
        }
        // SAFETY: the cast only retypes the slot's address for the verifier, which makes
        // every load through it fault-safe; the offsets are constants of the frozen .rodata.
        unsafe {
            let slot = rdonly_cast(fds + fd * 8, p.file_slot_btf);
            let file = read_volatile(slot as *const *const u8);
            if file.is_null() {
                return Ok(0);
            }
            Ok(read_volatile(file.add(p.file_inode as usize) as *const u64))
        }
    }
    #[inline(always)]
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32> {
        // SAFETY: `inode` came from a typed load (see above), so this load is typed too.
        Ok(unsafe { read_volatile((inode as *const u8).add(off as usize) as *const T) })
    }
    #[inline(always)]
    fn cgroup(p: &GpuIoctlParams) -> u64 {
        cgroup_btf(p)
    }
}

impl Entry for Compat {
    #[inline(always)]
    fn fd(ctx: &TracePointContext, p: &GpuIoctlParams) -> Result<u64, i32> {
        // SAFETY: offsets come from this kernel's tracepoint format; the field is 8 bytes.
        unsafe { ctx.read_at(p.enter_fd as usize) }
    }
    #[inline(always)]
    fn cmd(ctx: &TracePointContext) -> Result<u64, i32> {
        // SAFETY: a field of the frozen .rodata global, then as above.
        unsafe {
            let at = read_volatile(&raw const GPU_IOCTL_PARAMS.enter_cmd);
            ctx.read_at(at as usize)
        }
    }
    #[inline(always)]
    fn inode(p: &GpuIoctlParams, fd: u64) -> Result<u64, i32> {
        inode_of(p, fd, fdtable_probe(p)?)
    }
    #[inline(always)]
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32> {
        read(inode, off)
    }
}

/// The inode behind `fd` in the fd table `(max_fds, fd array)`, with helper reads; 0 where
/// the fd is not open.
#[inline(always)]
fn inode_of(p: &GpuIoctlParams, fd: u64, (max_fds, fds): (u32, u64)) -> Result<u64, i32> {
    if fd >= u64::from(max_fds) {
        return Ok(0); // EBADF: not a file at all
    }
    let file: u64 = read(fds, fd * 8)?;
    if file == 0 {
        return Ok(0);
    }
    read(file, p.file_inode)
}

/// `bpf_rdonly_cast(obj, btf_id)`: `obj` as an untrusted pointer to the kernel struct
/// `btf_id`, through which every load is a plain one the verifier checks against the
/// kernel's types and makes fault-safe. The verifier replaces the call with `r0 = r1`.
/// `btf_id` must be a constant to the verifier (a field of the frozen `.rodata`); the
/// kfunc's own BTF id is filled in by userspace (see `RDONLY_CAST_INSN`).
#[inline(always)]
unsafe fn rdonly_cast(obj: u64, btf_id: u32) -> u64 {
    let out: u64;
    // SAFETY: one call instruction; it reads r1 and r2 and clobbers r0-r5 like any call.
    unsafe {
        core::arch::asm!(
            ".quad 0x7ffffff000002085",
            inlateout("r1") obj => _,
            inlateout("r2") u64::from(btf_id) => _,
            lateout("r0") out,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, pure, nomem),
        );
    }
    out
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

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, off: impl Into<u64>) -> Result<T, i32> {
    let addr = base.wrapping_add(off.into());
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }
}

/// The current task's fd table: `(max_fds, fd array)`, through BTF-typed pointers. The
/// verifier turns these into plain loads guarded by the exception table, which cost far less
/// than a helper call each; the offsets are constants it reads from the frozen `.rodata`.
#[inline(always)]
fn fdtable_btf(p: &GpuIoctlParams) -> (u32, u64) {
    // SAFETY: a trusted pointer to the current task; the loads below go through BTF-typed
    // pointers, which the verifier checks against the kernel's types and makes fault-safe.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = read_volatile(task.add(p.task_files as usize) as *const *const u8);
        let fdt = read_volatile(files.add(p.files_fdt as usize) as *const *const u8);
        let max_fds = read_volatile(fdt.add(p.fdt_max_fds as usize) as *const u32);
        let fds = read_volatile(fdt.add(p.fdt_fd as usize) as *const u64);
        (max_fds, fds)
    }
}

/// The current task's cgroup v2 id (task → cgroups → dfl_cgrp → kn → id) through BTF-typed
/// pointers: the same value as `bpf_get_current_cgroup_id`, without the helper call.
#[inline(always)]
fn cgroup_btf(p: &GpuIoctlParams) -> u64 {
    // SAFETY: as in `fdtable_btf`: typed, fault-safe loads at the kernel's own offsets.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let cset = read_volatile(task.add(p.task_cgroups as usize) as *const *const u8);
        let cgrp = read_volatile(cset.add(p.cset_dfl_cgrp as usize) as *const *const u8);
        let kn = read_volatile(cgrp.add(p.cgroup_kn as usize) as *const *const u8);
        read_volatile(kn.add(p.kn_id as usize) as *const u64)
    }
}

/// The current task's fd table with `bpf_probe_read_kernel`.
#[inline(always)]
fn fdtable_probe(p: &GpuIoctlParams) -> Result<(u32, u64), i32> {
    // SAFETY: the helper only returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, p.task_files)?;
    let fdt: u64 = read(files, p.files_fdt)?;
    // `struct fdtable` starts with `max_fds` and then `fd` on every kernel since 2.6: read
    // both at once when BTF says so (the verifier drops the branch not taken).
    if p.fdt_fd == p.fdt_max_fds + 8 {
        let both: [u64; 2] = read(fdt, p.fdt_max_fds)?;
        Ok((both[0] as u32, both[1]))
    } else {
        Ok((read(fdt, p.fdt_max_fds)?, read(fdt, p.fdt_fd)?))
    }
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

/// How [`gpu_ioctl_driver_enter`] reads the inode's fields: helper reads, which need nothing
/// the kernel might lack.
struct Driver;

impl Entry for Driver {
    #[inline(always)]
    fn fd(_: &TracePointContext, _: &GpuIoctlParams) -> Result<u64, i32> {
        Err(-1) // not used: the handler is given the file
    }
    #[inline(always)]
    fn cmd(_: &TracePointContext) -> Result<u64, i32> {
        Err(-1) // not used: the handler is given the command
    }
    #[inline(always)]
    fn inode(_: &GpuIoctlParams, _: u64) -> Result<u64, i32> {
        Err(-1) // not used: see try_driver_enter
    }
    #[inline(always)]
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32> {
        read(inode, off)
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
fn watch_call<E: Entry>(p: &GpuIoctlParams, cmd: u64, inode: u64) -> Result<(), i32> {
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
