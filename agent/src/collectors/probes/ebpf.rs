//! What every eBPF-backed probe shares: why attaching failed, and the events the kernel
//! skipped delivering to a probe's programs.

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
