//! What every eBPF-backed probe shares: why attaching failed, attaching a `cgroup_skb`
//! program to the cgroup v2 root, and the events the kernel skipped delivering to a probe's
//! programs.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};

use crate::collectors::containers::cgroup2_mount;

/// Why a probe's eBPF path could not start (the probe then degrades, saying why).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Kernel(#[from] super::kernel::KernelError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("object lacks {0}")]
    Missing(&'static str),
    #[error("counting CPUs: {0}")]
    Cpus(String),
    #[error("first read of the counters: {0}")]
    FirstRead(String),
    #[error("no cgroup v2 mount in {0}")]
    NoCgroup2(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to {path}: {errors}")]
    Attach { path: String, errors: String },
}

/// Loads program `name` of `ebpf` and attaches it to the first cgroup v2 mount of
/// `<proc_root>/self/mountinfo`; says how, for `nodewatch probes`.
pub fn attach_cgroup_skb(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    proc_root: &Path,
    kind: CgroupSkbAttachType,
) -> Result<String, AttachError> {
    let root = cgroup2_root(proc_root)?;
    let path = root.display().to_string();
    let program = |source| AttachError::Program { name, source };
    let prog: &mut CgroupSkb = ebpf
        .program_mut(name)
        .ok_or(AttachError::Missing(name))?
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
    for &(mode, label) in modes {
        let cgroup = File::open(&root).map_err(|source| AttachError::Open {
            path: path.clone(),
            source,
        })?;
        match prog.attach(cgroup, kind, mode) {
            Ok(_) => {
                let kind = match kind {
                    CgroupSkbAttachType::Ingress => "ingress",
                    CgroupSkbAttachType::Egress => "egress",
                };
                return Ok(format!("cgroup_skb {kind} on {path} ({label})"));
            }
            Err(e) => errors.push(format!("{label}: {e}")),
        }
    }
    Err(AttachError::Attach {
        path,
        errors: errors.join("; "),
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

/// Events the kernel skipped for the named programs of `ebpf`, summed (see
/// [`recursion_misses`]); programs not loaded count nothing.
pub fn programs_missed(ebpf: &aya::Ebpf, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|name| {
            let fd = ebpf.program(name)?.fd().ok()?;
            recursion_misses(std::os::fd::AsFd::as_fd(fd)).ok()
        })
        .sum()
}

/// How often the kernel skipped program `fd` because a BPF program was already running on
/// that CPU (`bpf_prog_info.recursion_misses`): events the probe did not see.
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut info: aya_obj::generated::bpf_prog_info =
        // SAFETY: plain old data; all zeros is a valid value.
        unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as i32,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
