//! `#[repr(C)]` types and constants shared by the eBPF programs and the agent.
#![no_std]

/// The TCP retransmit probe's names and limits.
pub mod tcp_retransmits {
    /// Counter map key for retransmits on connections with no watched port at either end.
    pub const OTHER_PORT: u16 = 0;
    /// Most ports a user can watch (plus the `other` slot).
    pub const MAX_PORTS: u32 = 256;
    /// `.rodata` global [`crate::PortBits`]: the watched ports, set by userspace before load.
    pub const PORTS_GLOBAL: &str = "RETRANS_PORT_BITS";
    /// Counter map [`crate::PortCgroup`] → segments retransmitted: the watched port at either
    /// end (`OTHER_PORT` for the rest) and the cgroup of the socket. The programs insert keys;
    /// userspace deletes those of cgroups that are gone.
    pub const COUNTS_MAP: &str = "RETRANS_SEGS";
    /// Most (port, cgroup) keys; when the map is full a count goes to the port's
    /// [`crate::FULL_CGROUP`] key, which userspace inserts up front.
    pub const MAX_KEYS: u32 = 16384;
    /// Raw tracepoint programs, named after their tracepoints.
    pub const PROG_SKB: &str = "tcp_retransmit_skb";
    pub const PROG_SYNACK: &str = "tcp_retransmit_synack";
    /// The `cgroup_skb` egress program that counts segments sent.
    pub const PROG_SENT: &str = "tcp_segments_sent";
    /// Per-CPU counter map [`crate::PortCgroup`] → TCP segments sent on watched ports (new
    /// ones, the kernel's `OutSegs`, and retransmits, `RetransSegs`), keyed like
    /// [`COUNTS_MAP`]: the denominator of the retransmit ratio. Userspace sums the CPUs.
    pub const SENT_MAP: &str = "TCP_SEGS_SENT";
    /// Per-CPU array of [`crate::PortSlot`], one per watched port (in configuration order):
    /// where the egress program counts the segments of the one cgroup userspace gave the
    /// port's slot (the first seen in [`SENT_MAP`]), with no hash lookup. Userspace adds it to
    /// that (port, cgroup)'s hash entry.
    pub const SENT_SLOTS_MAP: &str = "TCP_SENT_SLOTS";
    /// `.rodata` global [`crate::PortIndex`]: watched port → its slot + 1.
    pub const SENT_INDEX_GLOBAL: &str = "SENT_PORT_INDEX";
}

/// The accept-queue probe's names and limits.
pub mod accept_queue {
    /// Most listening ports a user can watch.
    pub const MAX_PORTS: u32 = 256;
    /// `.rodata` global [`crate::PortBits`]: the watched listening ports, set before load.
    pub const PORTS_GLOBAL: &str = "LISTEN_PORT_BITS";
    /// Counter map [`crate::PortCgroup`] → connections the kernel dropped because the
    /// listener's accept queue was full, by listening port and the listener's cgroup.
    pub const OVERFLOWS_MAP: &str = "LISTEN_OVERFLOWS";
    /// Most (port, cgroup) overflow keys (see [`crate::FULL_CGROUP`]).
    pub const MAX_KEYS: u32 = 16384;
    /// LRU hash map: socket inode (as `/proc/net/tcp` shows it) → [`crate::ListenerSeen`],
    /// for every watched listener a packet reached: its cgroup and backlog limit.
    pub const LISTENERS_MAP: &str = "LISTENERS";
    pub const MAX_LISTENERS: u32 = 8192;
    /// The `cgroup_skb` ingress program.
    pub const PROG: &str = "accept_queue";
}

/// A set of ports as a bitmap (bit `port % 8` of byte `port / 8`): the programs' first test
/// on every packet, a load at a known offset of a frozen `.rodata` global, before any map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBits {
    pub bits: [u8; 8192],
}

impl PortBits {
    /// The set of `ports`.
    pub fn of(ports: &[u16]) -> Self {
        let mut s = Self { bits: [0; 8192] };
        for &p in ports {
            s.bits[usize::from(p >> 3)] |= 1 << (p & 7);
        }
        s
    }

    /// Whether `port` is in the set.
    #[inline(always)]
    pub fn has(&self, port: u16) -> bool {
        self.bits[usize::from(port >> 3)] & (1 << (port & 7)) != 0
    }
}

/// Port → its slot + 1 in a per-port array (0: not watched), a `.rodata` global: the egress
/// program's watched test and its slot in one load.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PortIndex {
    pub idx: [u16; 65536],
}

impl PortIndex {
    /// `ports[i]` at slot `i` (at most `u16::MAX - 1` of them).
    pub fn of(ports: &[u16]) -> Self {
        let mut s = Self { idx: [0; 65536] };
        for (i, &p) in ports.iter().enumerate() {
            s.idx[usize::from(p)] = i as u16 + 1;
        }
        s
    }
}

/// A watched port's slot of segments sent ([`tcp_retransmits::SENT_SLOTS_MAP`] value, per
/// CPU): the count of the one cgroup userspace gave the slot; the port's other cgroups count
/// in the hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlot {
    /// The cgroup whose segments this slot counts; [`FULL_CGROUP`]: none yet.
    pub cgroup: u64,
    pub segs: u64,
}

/// The cgroup a count goes to when its map is full (no cgroup has this id): exported under
/// `container="other"`.
pub const FULL_CGROUP: u64 = u64::MAX;

/// Key of the TCP probes' counter maps: a port and the cgroup (v2 id) of the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortCgroup {
    pub cgroup: u64,
    pub port: u16,
    pub _pad: [u16; 3],
}

impl PortCgroup {
    /// Built as two words, so the padding costs no separate zeroing (in eBPF, a memset).
    #[inline(always)]
    pub const fn new(port: u16, cgroup: u64) -> Self {
        let tail = if cfg!(target_endian = "little") {
            port as u64
        } else {
            (port as u64) << 48
        };
        // SAFETY: two u64s have the size and alignment of this `repr(C)` struct of plain
        // integers, and `tail` puts `port` where the field lies, zeros in the padding.
        unsafe { core::mem::transmute::<[u64; 2], Self>([cgroup, tail]) }
    }
}

/// What the accept-queue program last saw of a watched listener
/// ([`accept_queue::LISTENERS_MAP`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSeen {
    /// The listener's cgroup v2 id (the cgroup of the task that created it).
    pub cgroup: u64,
    /// `sk_max_ack_backlog`: the accept queue's limit.
    pub max_backlog: u32,
    pub port: u16,
    pub _pad: u16,
    /// The inode number of the listener's network namespace (what `/proc/<pid>/ns/net`
    /// names), 0 where it could not be read.
    pub netns: u32,
    pub _pad2: u32,
}

/// Where the accept-queue program finds a listener's queue length and limit: byte offsets of
/// `sock.sk_ack_backlog` and `sock.sk_max_ack_backlog` (both u32), read from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptqOffsets {
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
    /// `sock.sk_socket`, from the start of `struct tcp_sock`.
    pub sk_socket: u32,
    /// The socket's inode number from its `struct socket`: `socket_alloc.vfs_inode` −
    /// `socket_alloc.socket` + `inode.i_ino`.
    pub socket_ino: u32,
    /// `sock_common.skc_net` (a `struct net *`), from the start of `struct tcp_sock`, and
    /// `net.ns` + `ns_common.inum`: the listener's network namespace. 0 where this kernel's
    /// BTF lacks them (the namespace is then not noted).
    pub sk_net: u32,
    pub net_inum: u32,
    /// Set to 1 by userspace once the fields above are filled in.
    pub valid: u32,
}

/// Where the retransmit programs find what they read, as byte offsets taken from the running
/// kernel's BTF by userspace and handed over as a frozen `.rodata` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransOffsets {
    /// `sock_common.skc_num`: the local port, host order (from a `sock` or a `request_sock`,
    /// which both start with a `sock_common`).
    pub skc_num: u32,
    /// `sock_common.skc_dport`: the remote port, network order.
    pub skc_dport: u32,
    /// `request_sock.__req_common`: where a request socket's `sock_common` starts.
    pub req_common: u32,
    /// Byte offset of `tcp_skb_cb.tcp_gso_segs` from the start of `struct sk_buff`
    /// (`sk_buff.cb` plus the member's offset inside `struct tcp_skb_cb`).
    pub skb_gso_segs: u32,
    /// The socket's cgroup v2 id: `sock.sk_cgrp_data` + `sock_cgroup_data.cgroup` (a
    /// `struct cgroup *`), then `cgroup.kn` (a `struct kernfs_node *`), then `kernfs_node.id`.
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// Set to 1 by userspace once every field above is filled in.
    pub valid: u32,
}

pub mod gpu_ioctl;

#[cfg(feature = "user")]
mod user {
    use super::gpu_ioctl::{
        Call, DevHist, DevKey, GpuIoctlParams, HistKey, MajorWatch, StallEvent,
    };

    // SAFETY: plain old data, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::RetransOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptqOffsets {}
    unsafe impl aya::Pod for super::PortCgroup {}
    unsafe impl aya::Pod for super::ListenerSeen {}
    unsafe impl aya::Pod for super::PortBits {}
    unsafe impl aya::Pod for super::PortIndex {}
    unsafe impl aya::Pod for super::PortSlot {}
    // SAFETY: as above; each is #[repr(C)] with fields ordered so there is no padding.
    unsafe impl aya::Pod for GpuIoctlParams {}
    unsafe impl aya::Pod for MajorWatch {}
    unsafe impl aya::Pod for DevKey {}
    unsafe impl aya::Pod for Call {}
    unsafe impl aya::Pod for DevHist {}
    unsafe impl aya::Pod for HistKey {}
    unsafe impl aya::Pod for StallEvent {}
}
