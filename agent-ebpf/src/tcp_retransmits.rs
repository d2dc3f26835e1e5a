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
//!
//! Hook: `cgroup_skb` egress on the cgroup v2 root, for every packet the host sends: the TCP
//! segments it carries (`max(1, gso_segs)`, the kernel's `tcp_skb_pcount`), counted per
//! watched port and cgroup like the retransmits — the denominator of the retransmit ratio.
//! That is the kernel's `OutSegs` (new segments) plus `RetransSegs`, except segments a local
//! firewall drops on output, which never reach this hook, and the ACK a TIME_WAIT socket sends,
//! for which the kernel runs no cgroup program; a retransmitted SYN-ACK, which the kernel adds
//! to both `OutSegs` and `RetransSegs`, counts once. The ports come straight from the
//! headers (direct packet access) and are looked up in a port table in `.rodata` first: a
//! packet with no watched port costs a few loads and is not counted; a watched one adds to its
//! port's per-CPU slot when it is of the cgroup userspace gave that slot, else to a per-CPU
//! hash; userspace sums both (the adds are atomic: a softirq can send over a program running
//! in process context on the same CPU).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{bpf_probe_read_kernel, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, SkBuffContext},
};
use nodewatch_common::{
    FULL_CGROUP, PortBits, PortCgroup, PortIndex, PortSlot, RetransOffsets,
    tcp_retransmits::{MAX_KEYS, MAX_PORTS, OTHER_PORT},
};
use nodewatch_ebpf::{counter_add_nesting, port_in};

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

/// The watched ports, set by userspace before load.
#[unsafe(no_mangle)]
static RETRANS_PORT_BITS: PortBits = PortBits { bits: [0; 8192] };

/// (port, cgroup) → segments. Shared by all CPUs and added to atomically: retransmits are
/// rare next to the packets around them. Userspace inserts `(port, FULL_CGROUP)` for every
/// watched port and `OTHER_PORT` up front.
#[map]
static RETRANS_SEGS: HashMap<PortCgroup, u64> =
    HashMap::with_max_entries(MAX_KEYS + MAX_PORTS + 1, 0);

/// Watched port → its slot in [`TCP_SENT_SLOTS`] + 1, set by userspace before load.
#[unsafe(no_mangle)]
static SENT_PORT_INDEX: PortIndex = PortIndex { idx: [0; 65536] };

/// Per watched port, per CPU: the segments sent of the cgroup userspace gave the slot.
#[map]
static TCP_SENT_SLOTS: PerCpuArray<PortSlot> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

/// (port, cgroup) → segments sent on a watched port, keyed as [`RETRANS_SEGS`], per CPU.
#[map]
static TCP_SEGS_SENT: PerCpuHashMap<PortCgroup, u64> =
    PerCpuHashMap::with_max_entries(MAX_KEYS + MAX_PORTS, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
/// Lets every packet through: the program only observes.
const PASS: i32 = 1;

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
    count(
        &RETRANS_SEGS,
        local,
        remote,
        cgroup(sk, &off),
        u64::from(segs.max(1)),
    );
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
    count(&RETRANS_SEGS, local, remote, cgroup(sk, &off), 1);
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

#[cgroup_skb(egress)]
pub fn tcp_segments_sent(ctx: SkBuffContext) -> i32 {
    match try_sent(&ctx) {
        Ok(()) | Err(_) => PASS,
    }
}

/// Counts the TCP segments of an outgoing packet. In cgroup_skb the data starts at the IP
/// header; the ports come from the TCP header, so the kernel's own replies (a RST, a
/// TIME-WAIT ACK, sent from its control socket) count under the port they are for.
fn try_sent(ctx: &SkBuffContext) -> Result<(), i64> {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: context field reads, checked by the verifier (data and data_end become packet
    // pointers).
    let (proto, data, end) = unsafe {
        (
            u16::from_be((*skb).protocol as u16),
            (*skb).data as usize,
            (*skb).data_end as usize,
        )
    };
    let Some((sport, dport)) = tcp_ports(ctx, proto, data, end)? else {
        return Ok(());
    };
    // `gso_segs` lives in the skb's shared info, past the packet data: a cache line of its
    // own, read only once the packet is known to count.
    // SAFETY: a context field read, checked by the verifier.
    let segs = || u64::from(unsafe { core::ptr::read_volatile(&raw const (*skb).gso_segs) }.max(1));
    let (port, idx) = match (sent_index(sport), sent_index(dport)) {
        (0, 0) => {
            // Not counted: the ratio is for watched ports, and an unwatched packet's test
            // ends here, before its cgroup, its segment count or any map.
            return Ok(());
        }
        (0, i) => (dport, i),
        (i, _) => (sport, i),
    };
    // SAFETY: takes the context; the cgroup of the packet's socket (the listener's for a
    // request socket), 0 without one.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    // The port's slot counts one cgroup (the port's service, usually its only one) without
    // a hash lookup.
    if let Some(slot) = TCP_SENT_SLOTS.get_ptr_mut(u32::from(idx) - 1) {
        // SAFETY: this CPU's copy of the slot; userspace writes the cgroup only while no
        // packet of that cgroup can count into it (see the agent's ports.rs).
        if unsafe { core::ptr::read_volatile(&raw const (*slot).cgroup) } == cgroup {
            counter_add_nesting(unsafe { &raw mut (*slot).segs }, segs());
            return Ok(());
        }
    }
    let key = PortCgroup::new(port, cgroup);
    let slot = match TCP_SEGS_SENT.get_ptr_mut(&key) {
        Some(slot) => Some(slot),
        None => {
            // The new key's other CPUs start at zero; a full map sends the count to the
            // port's FULL_CGROUP slot.
            let _ = TCP_SEGS_SENT.insert(&key, &0, BPF_NOEXIST as u64);
            TCP_SEGS_SENT
                .get_ptr_mut(&key)
                .or_else(|| TCP_SEGS_SENT.get_ptr_mut(&PortCgroup::new(port, FULL_CGROUP)))
        }
    };
    if let Some(slot) = slot {
        counter_add_nesting(slot, segs());
    }
    Ok(())
}

/// A watched port's slot + 1 in [`TCP_SENT_SLOTS`]; 0 for a port nobody watches. One load.
#[inline(always)]
fn sent_index(port: u16) -> u16 {
    // SAFETY: the index is below 65536, the table's length; a frozen .rodata global.
    unsafe {
        core::ptr::read_volatile(
            (&raw const SENT_PORT_INDEX.idx)
                .cast::<u16>()
                .add(usize::from(port)),
        )
    }
}

/// The (source, destination) ports of a TCP packet, host order; None for anything else.
/// Headers in the linear part are read directly; the helper reads the rest.
#[inline(always)]
fn tcp_ports(
    ctx: &SkBuffContext,
    proto: u16,
    data: usize,
    end: usize,
) -> Result<Option<(u16, u16)>, i64> {
    if proto == ETH_P_IP {
        if data + 20 <= end {
            // SAFETY: inside the packet, as the bounds check above tells the verifier.
            let (vihl, next) = unsafe { (*(data as *const u8), *((data + 9) as *const u8)) };
            if next != IPPROTO_TCP {
                return Ok(None);
            }
            let l4 = data + usize::from(vihl & 0x0f) * 4;
            if l4 + 4 <= end {
                // SAFETY: as above.
                let (s, d) = unsafe { (*(l4 as *const u16), *((l4 + 2) as *const u16)) };
                return Ok(Some((u16::from_be(s), u16::from_be(d))));
            }
        }
        let vihl: u8 = ctx.load(0)?;
        let next: u8 = ctx.load(9)?;
        if next != IPPROTO_TCP {
            return Ok(None);
        }
        let l4 = usize::from(vihl & 0x0f) * 4;
        let (s, d): (u16, u16) = (ctx.load(l4)?, ctx.load(l4 + 2)?);
        Ok(Some((u16::from_be(s), u16::from_be(d))))
    } else if proto == ETH_P_IPV6 {
        if data + 44 <= end {
            // SAFETY: inside the packet, as the bounds check above tells the verifier.
            let (next, s, d) = unsafe {
                (
                    *((data + 6) as *const u8),
                    *((data + 40) as *const u16),
                    *((data + 42) as *const u16),
                )
            };
            if next != IPPROTO_TCP {
                return Ok(None);
            }
            return Ok(Some((u16::from_be(s), u16::from_be(d))));
        }
        let next: u8 = ctx.load(6)?;
        if next != IPPROTO_TCP {
            return Ok(None);
        }
        let (s, d): (u16, u16) = (ctx.load(40)?, ctx.load(42)?);
        Ok(Some((u16::from_be(s), u16::from_be(d))))
    } else {
        Ok(None)
    }
}

/// Adds to `map`'s (port, cgroup) slot of the local port if watched, else the remote port if
/// watched, else `other`.
#[inline(always)]
fn count(map: &HashMap<PortCgroup, u64>, sport: u16, dport: u16, cgroup: u64, segs: u64) {
    let port = if port_in(&RETRANS_PORT_BITS, sport) {
        sport
    } else if port_in(&RETRANS_PORT_BITS, dport) {
        dport
    } else {
        OTHER_PORT
    };
    let key = PortCgroup::new(port, cgroup);
    let slot = match map.get_ptr_mut(&key) {
        Some(slot) => Some(slot),
        None => {
            // Another CPU may insert the same key first (EEXIST): either way it now exists,
            // unless the map is full, when the count goes to the port's FULL_CGROUP slot.
            let _ = map.insert(&key, &0, BPF_NOEXIST as u64);
            map.get_ptr_mut(&key)
                .or_else(|| map.get_ptr_mut(&PortCgroup::new(port, FULL_CGROUP)))
        }
    };
    if let Some(slot) = slot {
        // Every CPU adds to the same value, and the SYN-ACK program can run in softirq over
        // the skb one in process context on this CPU: one atomic add each.
        counter_add_nesting(slot, segs);
    }
}
