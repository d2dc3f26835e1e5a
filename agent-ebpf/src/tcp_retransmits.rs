//! Hook: raw tracepoints `tcp_retransmit_skb` (sk, skb, err) and `tcp_retransmit_synack`
//! (sk, req). Reads `sock_common.skc_num`/`skc_dport` of the socket or request socket and the
//! skb's `tcp_skb_cb.tcp_gso_segs`, at offsets from the kernel's BTF.
//!
//! The socket's cgroup v2 id comes from `sock.sk_cgrp_data.cgroup → kn → id` (the listener's,
//! for a SYN-ACK), so userspace can tell containers apart.
//!
//! Counts retransmitted segments per watched port the way the kernel's own `total_retrans`
//! and `RetransSegs` do: `tcp_skb_pcount(skb)` segments per retransmitted skb, one per SYN-ACK.
//! Raw tracepoints, not perf-based ones: the kernel guards a raw tracepoint program only
//! against re-entering itself, while every perf-based tracing program on a CPU shares one
//! guard, so another tracing program running when a retransmit fires in softirq would make
//! the kernel skip this one (a "recursion miss") and the count fall short.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use nodewatch_common::{
    FULL_CGROUP, PortCgroup, RetransOffsets,
    tcp_retransmits::{MAX_KEYS, MAX_PORTS, OTHER_PORT},
};
use nodewatch_ebpf::counter_add_nesting;

nodewatch_ebpf::license!();

/// Struct offsets, set by userspace from BTF before load.
#[unsafe(no_mangle)]
static RETRANS_OFFSETS: RetransOffsets = RetransOffsets {
    skc_num: 0,
    skc_dport: 0,
    req_common: 0,
    skb_gso_segs: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    valid: 0,
};

/// The watched ports → 1, filled by userspace.
#[map]
static RETRANS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// (port, cgroup) → segments. Shared by all CPUs and added to atomically: retransmits are
/// rare next to the packets around them. Userspace inserts `(port, FULL_CGROUP)` for every
/// watched port and `OTHER_PORT` up front.
#[map]
static RETRANS_SEGS: HashMap<PortCgroup, u64> =
    HashMap::with_max_entries(MAX_KEYS + MAX_PORTS + 1, 0);

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

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    match try_retransmit_skb(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
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

/// Local (host order) and remote (converted from network order) port of a `sock_common`.
#[inline(always)]
fn ports(common: u64, off: &RetransOffsets) -> Result<(u16, u16), i64> {
    let base = common as *const u8;
    // SAFETY: checked kernel reads at offsets from this kernel's BTF.
    let local: u16 =
        unsafe { bpf_probe_read_kernel(base.wrapping_add(off.skc_num as usize).cast())? };
    let remote: u16 =
        unsafe { bpf_probe_read_kernel(base.wrapping_add(off.skc_dport as usize).cast())? };
    Ok((local, u16::from_be(remote)))
}

fn try_retransmit_skb(ctx: &RawTracePointContext) -> Result<(), i64> {
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err)
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let err = ctx.arg::<u64>(2) as i32;
    if NOT_SENT.contains(&err) {
        return Ok(());
    }
    // SAFETY: a checked kernel read.
    let segs: u16 = unsafe {
        bpf_probe_read_kernel(
            (skb as *const u8)
                .wrapping_add(off.skb_gso_segs as usize)
                .cast(),
        )?
    };
    let (local, remote) = ports(sk, &off)?;
    // tcp_skb_pcount() is at least one for anything on the retransmit queue.
    count(local, remote, cgroup(sk, &off), u64::from(segs.max(1)));
    Ok(())
}

fn try_retransmit_synack(ctx: &RawTracePointContext) -> Result<(), i64> {
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    // TP_PROTO(const struct sock *sk, const struct request_sock *req): the request socket
    // carries the connection's ports, the listener its cgroup.
    let sk: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    let (local, remote) = ports(req + u64::from(off.req_common), &off)?;
    // The tracepoint fires only for a SYN-ACK that was sent; the kernel counts it as one.
    count(local, remote, cgroup(sk, &off), 1);
    Ok(())
}

/// The cgroup v2 id of a full socket (0 where it cannot be read: no cgroup data).
#[inline(always)]
fn cgroup(sk: u64, off: &RetransOffsets) -> u64 {
    let read = |base: u64, at: u32| -> Result<u64, i32> {
        // SAFETY: checked kernel reads at offsets from this kernel's BTF.
        unsafe { bpf_probe_read_kernel((base as *const u8).wrapping_add(at as usize).cast()) }
    };
    let id = || -> Result<u64, i32> {
        let cgrp = read(sk, off.sk_cgroup)?;
        let kn = read(cgrp, off.cgroup_kn)?;
        read(kn, off.kn_id)
    };
    id().unwrap_or(0)
}

/// Adds to the (port, cgroup) slot of the local port if watched, else the remote port if
/// watched, else `other`.
#[inline(always)]
fn count(sport: u16, dport: u16, cgroup: u64, segs: u64) {
    // SAFETY: plain u8 values that userspace writes once.
    let port = if unsafe { RETRANS_PORTS.get(&sport) }.is_some() {
        sport
    } else if unsafe { RETRANS_PORTS.get(&dport) }.is_some() {
        dport
    } else {
        OTHER_PORT
    };
    let key = PortCgroup::new(port, cgroup);
    let slot = match RETRANS_SEGS.get_ptr_mut(&key) {
        Some(slot) => Some(slot),
        None => {
            // Another CPU may insert the same key first (EEXIST): either way it now exists,
            // unless the map is full, when the count goes to the port's FULL_CGROUP slot.
            let _ = RETRANS_SEGS.insert(&key, &0, BPF_NOEXIST as u64);
            RETRANS_SEGS
                .get_ptr_mut(&key)
                .or_else(|| RETRANS_SEGS.get_ptr_mut(&PortCgroup::new(port, FULL_CGROUP)))
        }
    };
    if let Some(slot) = slot {
        // Every CPU adds to the same value, and the SYN-ACK program can run in softirq over
        // the skb one in process context on this CPU: one atomic add each.
        counter_add_nesting(slot, segs);
    }
}
