//! How the entry programs walk from an ioctl's fd (or a handler's file) to the inode's fields
//! and the caller's cgroup: four ways, from plain typed loads to helper reads only.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel},
    programs::TracePointContext,
};
use nodewatch_common::gpu_ioctl::{ENTER_CMD_AT, ENTER_FD_AT, GpuIoctlParams};

use super::{GPU_IOCTL_PARAMS, cgroup_id};

/// How a program reads the inode's fields and the caller's cgroup.
pub(crate) trait Fields {
    /// A field of the inode (or of its super block): `T` at `inode + off`.
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32>;
    /// The calling task's cgroup v2 id.
    fn cgroup(_p: &GpuIoctlParams) -> u64 {
        cgroup_id()
    }
}

/// How a tracepoint entry program reads its record and walks from the fd to the inode.
pub(crate) trait Entry: Fields {
    /// The ioctl's `fd` argument.
    fn fd(ctx: &TracePointContext, p: &GpuIoctlParams) -> Result<u64, i32>;
    /// Reads its own offset: the command is read before the rest of the parameters.
    fn cmd(ctx: &TracePointContext) -> Result<u64, i32>;
    /// The inode behind the current task's `fd`, or 0 where the fd is not open.
    fn inode(p: &GpuIoctlParams, fd: u64) -> Result<u64, i32>;
}

/// Plain loads: the record at the syscall tracepoints' fixed layout (userspace loads this
/// program only after checking it against tracefs), the fd table through BTF-typed pointers;
/// the file and the inode with helper reads.
pub(crate) struct Fast;

/// As [`Fast`], and the file and inode through `bpf_rdonly_cast`: no helper call.
pub(crate) struct Cast;

/// Helper reads only.
pub(crate) struct Compat;

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
}

impl Fields for Fast {
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
}

impl Fields for Cast {
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
}

impl Fields for Compat {
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

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) fn read<T>(base: u64, off: impl Into<u64>) -> Result<T, i32> {
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

/// How [`gpu_ioctl_driver_enter`] reads the inode's fields: helper reads, which need nothing
/// the kernel might lack.
pub(crate) struct Driver;

impl Fields for Driver {
    #[inline(always)]
    fn field<T: Copy>(inode: u64, off: u32) -> Result<T, i32> {
        read(inode, off)
    }
}
