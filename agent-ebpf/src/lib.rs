//! Pieces every nodewatch eBPF object needs. Each probe is one `[[bin]]` (one object file).
#![no_std]

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

/// Adds `n` to a per-CPU counter slot. Tracing programs do not nest on one CPU (the kernel's
/// `bpf_prog_active` guard), so a plain add cannot lose an update.
#[inline(always)]
pub fn counter_add(slot: *mut u64, n: u64) {
    // SAFETY: `slot` points into this CPU's copy of a map value, which outlives the program.
    unsafe { *slot += n };
}
