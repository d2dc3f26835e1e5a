//! The eBPF mode of `accept_queue`: a `cgroup_skb` ingress program on the cgroup v2 root that
//! counts, per watched listening port, the handshake packets that find the accept queue full.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use nodewatch_common::{
    AcceptqOffsets,
    accept_queue::{LISTENERS_MAP, OVERFLOWS_MAP, PORTS_MAP, PROG},
};

use super::netns::Listeners;
use crate::collectors::{
    containers::{SharedContainers, cgroup2_mount},
    probes::{ebpf::AttachError, kernel, ports::PortCounts},
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
            .load(OBJECT)?;
        let counts = PortCounts::take(
            &mut ebpf,
            (OVERFLOWS_MAP, PORTS_MAP),
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
        let root = cgroup2_root(proc_root)?;
        let path = root.display().to_string();
        let program = |source| AttachError::Program { name: PROG, source };
        let prog: &mut CgroupSkb = ebpf
            .program_mut(PROG)
            .ok_or(AttachError::Missing(PROG))?
            .try_into()
            .map_err(program)?;
        prog.load().map_err(program)?;
        // Other cgroup programs (systemd's IP accounting and firewalling, ...) must keep
        // working below the root, so the program is attached in multi mode. From 5.7 aya
        // attaches through a bpf_link, which takes no flags and which the kernel always
        // attaches as multi; before that, prog_attach with BPF_F_ALLOW_MULTI, and exclusive
        // mode only where the kernel refuses multi.
        let links = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 7, 0));
        let modes: &[(CgroupAttachMode, &str)] = if links {
            &[(CgroupAttachMode::Single, "bpf_link, multi")]
        } else {
            &[
                (CgroupAttachMode::AllowMultiple, "prog_attach, multi"),
                (CgroupAttachMode::Single, "prog_attach, exclusive"),
            ]
        };
        let mut errors = Vec::new();
        let mut how = None;
        for &(mode, label) in modes {
            let cgroup = File::open(&root).map_err(|source| AttachError::Open {
                path: path.clone(),
                source,
            })?;
            match prog.attach(cgroup, CgroupSkbAttachType::Ingress, mode) {
                Ok(_) => {
                    how = Some(label);
                    break;
                }
                Err(e) => errors.push(format!("{label}: {e}")),
            }
        }
        let Some(how) = how else {
            return Err(AttachError::Attach {
                path,
                errors: errors.join("; "),
            });
        };
        Ok(Self {
            _ebpf: ebpf,
            counts,
            listeners,
            attach: format!("cgroup_skb ingress on {path} ({how})"),
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
    Ok(AcceptqOffsets {
        ack_backlog: sock + kernel::member_offset("sock", "sk_ack_backlog")?,
        max_ack_backlog: sock + kernel::member_offset("sock", "sk_max_ack_backlog")?,
        sk_socket: sock + kernel::member_offset("sock", "sk_socket")?,
        socket_ino,
        valid: 1,
    })
}

/// The first cgroup v2 mount in `<proc>/self/mountinfo`.
fn cgroup2_root(proc_root: &Path) -> Result<PathBuf, AttachError> {
    let path = proc_root.join("self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| AttachError::Open {
        path: path.display().to_string(),
        source,
    })?;
    cgroup2_mount(&text).ok_or_else(|| AttachError::NoCgroup2(path.display().to_string()))
}
