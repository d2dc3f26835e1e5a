//! Hook: `cgroup_skb` ingress on the cgroup v2 root. Reads each packet's TCP flags and, when
//! its socket is a listener on a watched port, `sock.sk_ack_backlog` and
//! `sock.sk_max_ack_backlog` (through `bpf_skc_to_tcp_sock`, at offsets from the kernel's BTF).
//!
//! The program runs in `tcp_filter()`, just before the kernel decides a packet's fate at the
//! listener. When the accept queue is already full (`sk_acceptq_is_full()`: backlog > max),
//! the kernel drops:
//! - a SYN (no ACK, RST or FIN) in `tcp_conn_request()`, counting `ListenOverflows`;
//! - an ACK that would complete a handshake (request socket or SYN cookie) in
//!   `tcp_v4_syn_recv_sock()` / `tcp_v6_syn_recv_sock()`, counting `ListenOverflows`.
//!
//! Those two cases are counted here, per listening port and the listener's cgroup (v2 id,
//! `bpf_sk_cgroup_id`), except a SYN that a request socket
//! is already waiting for (a retransmitted SYN whose SYN-ACK was lost): the kernel hands it to
//! `tcp_check_req()`, which answers with a SYN-ACK and counts nothing, so neither do we. The
//! program never drops anything.
//!
//! It also notes every watched listener a packet reaches, by socket inode: its cgroup, its
//! backlog limit and its network namespace's inode. Userspace reads the queue length of listeners in other network namespaces
//! from `/proc/<pid>/net/tcp`, which shows the inode but not the limit or the cgroup.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_probe_read_kernel, bpf_sk_cgroup_id, bpf_sk_fullsock, bpf_sk_release,
        bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock,
    },
    macros::{cgroup_skb, map},
    maps::{HashMap, LruHashMap},
    programs::SkBuffContext,
};
use nodewatch_common::{
    AcceptqOffsets, FULL_CGROUP, ListenerSeen, PortBits, PortCgroup,
    accept_queue::{MAX_KEYS, MAX_LISTENERS, MAX_PORTS},
};
use nodewatch_ebpf::{counter_add_nesting, port_in};

nodewatch_ebpf::license!();

/// Offsets of the backlog fields in `struct sock`, set by userspace from BTF before load.
#[unsafe(no_mangle)]
static ACCEPTQ_OFFSETS: AcceptqOffsets = AcceptqOffsets {
    ack_backlog: 0,
    max_ack_backlog: 0,
    sk_socket: 0,
    socket_ino: 0,
    sk_net: 0,
    net_inum: 0,
    valid: 0,
};

/// The watched listening ports, set by userspace before load.
#[unsafe(no_mangle)]
static LISTEN_PORT_BITS: PortBits = PortBits { bits: [0; 8192] };

/// (port, cgroup) → overflows, shared by all CPUs and added to atomically. Userspace inserts
/// `(port, FULL_CGROUP)` for every watched port up front.
#[map]
static LISTEN_OVERFLOWS: HashMap<PortCgroup, u64> =
    HashMap::with_max_entries(MAX_KEYS + MAX_PORTS, 0);

/// Socket inode → what was last seen of that watched listener.
#[map]
static LISTENERS: LruHashMap<u64, ListenerSeen> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;
const IPPROTO_TCP: u32 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Lets every packet through: the program only observes.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn accept_queue(ctx: SkBuffContext) -> i32 {
    match try_accept_queue(&ctx) {
        Ok(()) | Err(_) => PASS,
    }
}

fn try_accept_queue(ctx: &SkBuffContext) -> Result<(), i64> {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run; the verifier rewrites these
    // field reads into checked accesses.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // The cheapest test first: the socket's local port and state, read from its
    // `sock_common` (any socket, request and time-wait ones too), against the bitmap.
    // SAFETY: a non-null socket pointer from the context; the verifier checks the fields.
    let (port, state) = unsafe { ((*sk).src_port as u16, (*sk).state) };
    if !port_in(&LISTEN_PORT_BITS, port) || state != TCP_LISTEN {
        return Ok(());
    }
    // SAFETY: helpers that accept a possibly-null socket and return a checked pointer.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null full socket from the helper is readable.
    if unsafe { (*full).protocol } != IPPROTO_TCP {
        return Ok(());
    }
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    // SAFETY: a full socket from the helper above.
    let cgroup = unsafe { bpf_sk_cgroup_id(full.cast()) };
    // SAFETY: the helper takes a possibly-null socket and returns a checked pointer.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    let (backlog, max) = backlog(tp, &off)?;
    note_listener(tp, &off, port, cgroup, max);
    if backlog <= max {
        return Ok(()); // not sk_acceptq_is_full()
    }
    let seg = segment(ctx, skb)?;
    let dropped_syn = seg.flags & (SYN | ACK | RST | FIN) == SYN && !for_request_sock(ctx, &seg)?;
    let dropped_ack = seg.flags & (SYN | ACK | RST) == ACK;
    if dropped_syn || dropped_ack {
        count(port, cgroup);
    }
    Ok(())
}

/// Adds one overflow to (port, cgroup), inserting the key on first use.
#[inline(always)]
fn count(port: u16, cgroup: u64) {
    let key = PortCgroup::new(port, cgroup);
    let slot = match LISTEN_OVERFLOWS.get_ptr_mut(&key) {
        Some(slot) => Some(slot),
        None => {
            // EEXIST when another CPU inserted it first; a full map sends the count to the
            // port's FULL_CGROUP slot.
            let _ = LISTEN_OVERFLOWS.insert(&key, &0, BPF_NOEXIST as u64);
            LISTEN_OVERFLOWS
                .get_ptr_mut(&key)
                .or_else(|| LISTEN_OVERFLOWS.get_ptr_mut(&PortCgroup::new(port, FULL_CGROUP)))
        }
    };
    if let Some(slot) = slot {
        // Packets for one listener arrive on every CPU.
        counter_add_nesting(slot, 1);
    }
}

/// Remembers a watched listener by its socket inode: its cgroup and backlog limit. A hash
/// lookup per packet; a write only when something changed.
#[inline(always)]
fn note_listener(tp: *const u8, off: &AcceptqOffsets, port: u16, cgroup: u64, max: u32) {
    let ino = || -> Result<u64, i64> {
        // SAFETY: checked kernel reads at offsets from this kernel's BTF.
        unsafe {
            let socket: u64 =
                bpf_probe_read_kernel(tp.wrapping_add(off.sk_socket as usize).cast())?;
            if socket == 0 {
                return Err(-1);
            }
            Ok(bpf_probe_read_kernel(
                (socket as *const u8)
                    .wrapping_add(off.socket_ino as usize)
                    .cast(),
            )?)
        }
    };
    let Ok(ino) = ino() else {
        return;
    };
    let netns = || -> Result<u32, i64> {
        if off.sk_net == 0 {
            return Ok(0);
        }
        // SAFETY: checked kernel reads at offsets from this kernel's BTF.
        unsafe {
            let net: u64 = bpf_probe_read_kernel(tp.wrapping_add(off.sk_net as usize).cast())?;
            Ok(bpf_probe_read_kernel(
                (net as *const u8)
                    .wrapping_add(off.net_inum as usize)
                    .cast(),
            )?)
        }
    };
    let seen = ListenerSeen {
        cgroup,
        max_backlog: max,
        port,
        _pad: 0,
        netns: netns().unwrap_or(0),
        _pad2: 0,
    };
    // SAFETY: a value userspace only reads; a stale read here only costs an extra write.
    if unsafe { LISTENERS.get(&ino) } != Some(&seen) {
        let _ = LISTENERS.insert(&ino, &seen, 0);
    }
}

/// Where a packet's TCP header starts, its IP version and its flags.
struct Segment {
    v6: bool,
    l4: usize,
    flags: u8,
}

/// True when the packet belongs to a connection a request socket is already waiting for.
#[inline(always)]
fn for_request_sock(ctx: &SkBuffContext, seg: &Segment) -> Result<bool, i64> {
    // SAFETY: a zeroed tuple is valid; the helper reads `size` bytes of it.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if seg.v6 {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: ctx.load(8)?,
            daddr: ctx.load(24)?,
            sport: ctx.load(seg.l4)?,
            dport: ctx.load(seg.l4 + 2)?,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } else {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: ctx.load(12)?,
            daddr: ctx.load(16)?,
            sport: ctx.load(seg.l4)?,
            dport: ctx.load(seg.l4 + 2)?,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    };
    // SAFETY: the helper takes the context, a stack tuple of `size` bytes, and returns a
    // referenced socket (or null) that must be released, which it is right after the read.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.skb.skb.cast(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return Ok(false);
        }
        let state = (*sk).state;
        bpf_sk_release(sk.cast());
        Ok(state == TCP_NEW_SYN_RECV)
    }
}

#[inline(always)]
fn offsets() -> AcceptqOffsets {
    // SAFETY: a frozen .rodata global; the volatile read keeps the compiler from folding the
    // zero initialiser.
    unsafe { core::ptr::read_volatile(&ACCEPTQ_OFFSETS) }
}

/// `sk_ack_backlog` and `sk_max_ack_backlog` of the listener's `tcp_sock` (from
/// `bpf_skc_to_tcp_sock`); the queue is full (`sk_acceptq_is_full()`) when the first is
/// larger.
#[inline(always)]
fn backlog(tp: *const u8, off: &AcceptqOffsets) -> Result<(u32, u32), i64> {
    // SAFETY: the reads go through bpf_probe_read_kernel, which checks them.
    unsafe {
        let backlog: u32 = bpf_probe_read_kernel(tp.wrapping_add(off.ack_backlog as usize).cast())?;
        let max: u32 = bpf_probe_read_kernel(tp.wrapping_add(off.max_ack_backlog as usize).cast())?;
        Ok((backlog, max))
    }
}

/// The TCP segment of a packet. In cgroup_skb ingress the packet data starts at the IP header.
#[inline(always)]
fn segment(ctx: &SkBuffContext, skb: *mut __sk_buff) -> Result<Segment, i64> {
    // SAFETY: context field read, checked by the verifier.
    let proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    let (v6, l4) = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0)?;
        (false, usize::from(vihl & 0x0f) * 4)
    } else if proto == ETH_P_IPV6 {
        // A listener's packets carry no extension headers in practice; anything else is not
        // a TCP segment we can read and is skipped.
        let next: u8 = ctx.load(6)?;
        if u32::from(next) != IPPROTO_TCP {
            return Err(-1);
        }
        (true, 40)
    } else {
        return Err(-1);
    };
    Ok(Segment {
        v6,
        l4,
        flags: ctx.load(l4 + 13)?,
    })
}
