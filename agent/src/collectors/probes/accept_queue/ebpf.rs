//! The eBPF mode of `accept_queue`: a `cgroup_skb` ingress program on the cgroup v2 root that
//! counts, per watched listening port, the handshake packets that find the accept queue full.

use std::path::Path;

use aya::{Ebpf, EbpfLoader, programs::CgroupSkbAttachType};
use nodewatch_common::{
    AcceptqOffsets, PortBits,
    accept_queue::{LISTENERS_MAP, OVERFLOWS_MAP, PORTS_GLOBAL, PROG},
};

use super::netns::Listeners;
use crate::collectors::{
    containers::SharedContainers,
    probes::{
        ebpf::{self, AttachError},
        kernel,
        ports::{CountMapName, PortCounts},
    },
};

/// The kernel object, built by `agent/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/accept_queue"));

/// The eBPF mode: owns the loaded object, so dropping it detaches the program.
pub struct Kernel {
    _ebpf: Ebpf,
    pub counts: PortCounts,
    pub listeners: Listeners,
    pub attach: String,
}

impl Kernel {
    pub fn attach(
        ports: &[u16],
        proc_root: &Path,
        containers: &SharedContainers,
    ) -> Result<Self, AttachError> {
        let offsets = offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("ACCEPTQ_OFFSETS", &offsets, true)
            .override_global(PORTS_GLOBAL, &PortBits::of(ports), true)
            .load(OBJECT)?;
        let counts = PortCounts::take(
            &mut ebpf,
            CountMapName::Shared(OVERFLOWS_MAP),
            ports,
            &[],
            containers,
        )?;
        let listeners = Listeners::new(
            ebpf.take_map(LISTENERS_MAP)
                .ok_or(AttachError::Missing(LISTENERS_MAP))?
                .try_into()?,
            proc_root,
        );
        let attach =
            ebpf::attach_cgroup_skb(&mut ebpf, PROG, proc_root, CgroupSkbAttachType::Ingress)?;
        Ok(Self {
            _ebpf: ebpf,
            counts,
            listeners,
            attach,
        })
    }
}

/// Offsets of the backlog fields from the start of `struct tcp_sock`, which is what
/// `bpf_skc_to_tcp_sock` points at: tcp_sock → inet_connection_sock → inet_sock → sock.
fn offsets() -> Result<AcceptqOffsets, kernel::KernelError> {
    let sock = kernel::member_offset("tcp_sock", "inet_conn")?
        + kernel::member_offset("inet_connection_sock", "icsk_inet")?
        + kernel::member_offset("inet_sock", "sk")?;
    // SOCK_INODE(): a struct socket lives in a socket_alloc, right before its inode.
    let socket_ino = kernel::member_offset("socket_alloc", "vfs_inode")?
        - kernel::member_offset("socket_alloc", "socket")?
        + kernel::member_offset("inode", "i_ino")?;
    // Without these the queues of listeners in other namespaces are found through their
    // cgroup's processes only.
    let netns = || -> Result<(u32, u32), kernel::KernelError> {
        Ok((
            sock + kernel::member_offset("sock", "__sk_common")?
                + kernel::member_offset("sock_common", "skc_net")?,
            kernel::member_offset("net", "ns")? + kernel::member_offset("ns_common", "inum")?,
        ))
    };
    let (sk_net, net_inum) = netns().unwrap_or((0, 0));
    Ok(AcceptqOffsets {
        ack_backlog: sock + kernel::member_offset("sock", "sk_ack_backlog")?,
        max_ack_backlog: sock + kernel::member_offset("sock", "sk_max_ack_backlog")?,
        sk_socket: sock + kernel::member_offset("sock", "sk_socket")?,
        socket_ino,
        sk_net,
        net_inum,
        valid: 1,
    })
}
