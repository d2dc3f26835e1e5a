//! Hook: tracepoints `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack`. Reads the
//! records' `sport`, `dport`, `skbaddr` and `err`, and the skb's `tcp_skb_cb.tcp_gso_segs`.
//!
//! Counts retransmitted segments per watched port the way the kernel's own `total_retrans`
//! and `RetransSegs` do: `tcp_skb_pcount(skb)` segments per retransmitted skb, one per SYN-ACK.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use nodewatch_common::{
    RetransOffsets,
    tcp_retransmits::{MAX_PORTS, OTHER_PORT},
};
use nodewatch_ebpf::counter_add;

nodewatch_ebpf::license!();

/// Record and struct offsets, set by userspace from tracefs and BTF before load.
#[unsafe(no_mangle)]
static RETRANS_OFFSETS: RetransOffsets = RetransOffsets {
    skb_skbaddr: 0,
    skb_sport: 0,
    skb_dport: 0,
    skb_err: 0,
    synack_sport: 0,
    synack_dport: 0,
    skb_gso_segs: 0,
    valid: 0,
};

/// Port → segments. Userspace inserts every watched port and `OTHER_PORT` up front.
#[map]
static RETRANS_SEGS: PerCpuHashMap<u16, u64> = PerCpuHashMap::with_max_entries(MAX_PORTS + 1, 0);

// Errors that __tcp_retransmit_skb returns *before* it counts the retransmit: busy in the host
// queue, nothing left to send, no memory, no route, no window. Any other error comes from the
// transmit itself (a local firewall drop, a full qdisc) after the kernel has counted it.
const NOT_SENT: [i32; 5] = [
    -16,  // EBUSY
    -22,  // EINVAL
    -12,  // ENOMEM
    -113, // EHOSTUNREACH
    -11,  // EAGAIN
];

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_retransmit_skb(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    match try_retransmit_synack(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[inline(always)]
fn offsets() -> RetransOffsets {
    // SAFETY: a frozen .rodata global; the volatile read keeps the compiler from folding the
    // zero initialiser.
    unsafe { core::ptr::read_volatile(&RETRANS_OFFSETS) }
}

fn try_retransmit_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    // SAFETY: offsets come from this kernel's tracepoint format; reads are checked helpers.
    let err: i32 = unsafe { ctx.read_at(off.skb_err as usize)? };
    if NOT_SENT.contains(&err) {
        return Ok(());
    }
    let skb: u64 = unsafe { ctx.read_at(off.skb_skbaddr as usize)? };
    let segs: u16 = unsafe {
        bpf_probe_read_kernel(
            (skb as *const u8)
                .wrapping_add(off.skb_gso_segs as usize)
                .cast(),
        )?
    };
    let sport: u16 = unsafe { ctx.read_at(off.skb_sport as usize)? };
    let dport: u16 = unsafe { ctx.read_at(off.skb_dport as usize)? };
    // tcp_skb_pcount() is at least one for anything on the retransmit queue.
    count(sport, dport, u64::from(segs.max(1)));
    Ok(())
}

fn try_retransmit_synack(ctx: &TracePointContext) -> Result<(), i32> {
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    // SAFETY: as above.
    let sport: u16 = unsafe { ctx.read_at(off.synack_sport as usize)? };
    let dport: u16 = unsafe { ctx.read_at(off.synack_dport as usize)? };
    // The tracepoint fires only for a SYN-ACK that was sent; the kernel counts it as one.
    count(sport, dport, 1);
    Ok(())
}

/// Adds to the local port's slot, else the remote port's, else `other`.
#[inline(always)]
fn count(sport: u16, dport: u16, segs: u64) {
    let slot = RETRANS_SEGS
        .get_ptr_mut(sport)
        .or_else(|| RETRANS_SEGS.get_ptr_mut(dport))
        .or_else(|| RETRANS_SEGS.get_ptr_mut(OTHER_PORT));
    if let Some(slot) = slot {
        counter_add(slot, segs);
    }
}
