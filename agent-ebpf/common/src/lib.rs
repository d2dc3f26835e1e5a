//! `#[repr(C)]` types and constants shared by the eBPF programs and the agent.
#![no_std]

/// The TCP retransmit probe's names and limits.
pub mod tcp_retransmits {
    /// Counter map key for retransmits on connections with no watched port at either end.
    pub const OTHER_PORT: u16 = 0;
    /// Most ports a user can watch (plus the `other` slot).
    pub const MAX_PORTS: u32 = 256;
    /// Per-CPU counter map: port (host order; `OTHER_PORT` for the rest) → segments retransmitted.
    pub const COUNTS_MAP: &str = "RETRANS_SEGS";
    /// Raw tracepoint programs, named after their tracepoints.
    pub const PROG_SKB: &str = "tcp_retransmit_skb";
    pub const PROG_SYNACK: &str = "tcp_retransmit_synack";
}

/// The accept-queue probe's names and limits.
pub mod accept_queue {
    /// Most listening ports a user can watch.
    pub const MAX_PORTS: u32 = 256;
    /// Per-CPU counter map: listening port (host order) → connections the kernel dropped
    /// because that listener's accept queue was full.
    pub const OVERFLOWS_MAP: &str = "LISTEN_OVERFLOWS";
    /// The `cgroup_skb` ingress program.
    pub const PROG: &str = "accept_queue";
}

/// Where the accept-queue program finds a listener's queue length and limit: byte offsets of
/// `sock.sk_ack_backlog` and `sock.sk_max_ack_backlog` (both u32), read from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptqOffsets {
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
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
    /// Set to 1 by userspace once every field above is filled in.
    pub valid: u32,
}

pub mod gpu_ioctl;

#[cfg(feature = "user")]
mod user {
    use super::gpu_ioctl::{Call, DevHist, DevKey, GpuIoctlParams, MajorWatch, StallEvent};

    // SAFETY: plain old data, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::RetransOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AcceptqOffsets {}
    // SAFETY: as above; each is #[repr(C)] with fields ordered so there is no padding.
    unsafe impl aya::Pod for GpuIoctlParams {}
    unsafe impl aya::Pod for MajorWatch {}
    unsafe impl aya::Pod for DevKey {}
    unsafe impl aya::Pod for Call {}
    unsafe impl aya::Pod for DevHist {}
    unsafe impl aya::Pod for StallEvent {}
}
