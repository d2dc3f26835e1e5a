//! Pieces every nodewatch eBPF object needs. Each probe is one `[[bin]]` (one object file).
#![no_std]
// The BPF target has no `fetch_add` on core's atomics (it lacks compare-and-swap), but LLVM
// lowers this intrinsic to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this only satisfies the compiler.
    loop {}
}

/// Declares the object's license. `bpf_probe_read_kernel` and friends are GPL-only helpers.
#[macro_export]
macro_rules! license {
    () => {
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}

/// Adds `n` to a per-CPU counter slot, for programs that cannot nest on one CPU: perf-based
/// tracepoint programs (the kernel's per-CPU `bpf_prog_active` guard runs one at a time) and
/// programs that run only in softirq. A plain add is then safe, and the cheapest.
#[inline(always)]
pub fn counter_add(slot: *mut u64, n: u64) {
    // SAFETY: `slot` points into this CPU's copy of a map value, which outlives the program.
    unsafe { *slot += n };
}

/// Adds `n` to a per-CPU counter slot with one atomic instruction, for programs that can
/// nest on one CPU. A raw tracepoint program is guarded only against re-entering itself, so
/// a softirq can run another program of the same probe over one running in process context;
/// with a plain add (load, add, store) the interrupted program would then write back a stale
/// value and one of the two updates would be lost.
#[inline(always)]
pub fn counter_add_nesting(slot: *mut u64, n: u64) {
    // SAFETY: `slot` points into this CPU's copy of a map value, aligned and live for the
    // program's run; every writer goes through this atomic add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            slot, n,
        )
    };
}

/// Whether `port` is in `set`, a frozen `.rodata` global: one load, no map lookup. The
/// volatile read keeps the compiler from folding the global's zero initialiser.
#[inline(always)]
pub fn port_in(set: &'static nodewatch_common::PortBits, port: u16) -> bool {
    // SAFETY: the byte index is below 8192, the size of the bitmap.
    let byte = unsafe {
        core::ptr::read_volatile(
            (&raw const set.bits)
                .cast::<u8>()
                .add(usize::from(port >> 3)),
        )
    };
    byte & (1 << (port & 7)) != 0
}
