//! Least privilege: once the probes are attached (and the kernel log is open), the agent needs
//! none of its capabilities any more — it only reads maps and ring buffers through file
//! descriptors it already holds — so it drops them all.

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Names of the capabilities the agent may use, by number.
const NAMES: &[(u32, &str)] = &[
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
    (34, "CAP_SYSLOG"),
];

/// The process's permitted capabilities (two words).
fn current() -> std::io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version-3 header and room for two data words, as capget expects.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc == 0 {
        Ok(data)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Which of the capabilities nodewatch knows about are permitted now.
pub fn held() -> Vec<&'static str> {
    let Ok(data) = current() else {
        return Vec::new();
    };
    NAMES
        .iter()
        .filter(|(bit, _)| data[(bit / 32) as usize].permitted & (1 << (bit % 32)) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// `CAP_PERFMON` and `CAP_BPF`: what attaching a tracepoint program later needs.
pub const ATTACH: &[u32] = &[38, 39];

/// Keeps only `keep` (of what the thread has) in the calling thread's effective and
/// permitted sets; clears the inheritable set. Capabilities are per thread: threads created
/// afterwards inherit the result, threads that exist already keep theirs.
pub fn keep_only(keep: &[u32]) -> std::io::Result<()> {
    let before = current()?;
    let mut data = [CapData::default(); 2];
    for &bit in keep {
        let (w, m) = ((bit / 32) as usize, 1u32 << (bit % 32));
        data[w].permitted |= before[w].permitted & m;
        data[w].effective |= before[w].permitted & m;
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: a version-3 header and two data words, as capset expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Clears the calling thread's capabilities and logs it once, naming what the tick thread
/// still keeps (`tick_keeps`). A process without capabilities has nothing to drop and says
/// nothing.
pub fn drop_all(tick_keeps: bool) -> std::io::Result<()> {
    let before = current()?;
    if before.iter().all(|d| d.permitted == 0) {
        return Ok(());
    }
    let names = held();
    keep_only(&[])?;
    let dropped = if names.is_empty() {
        "all".to_string()
    } else {
        names.join(",")
    };
    if tick_keeps {
        tracing::info!(%dropped, "probes attached; dropped every capability but CAP_BPF and CAP_PERFMON on the tick thread, which attaches the GPU probe once a watched device appears");
    } else {
        tracing::info!(%dropped, "probes attached; dropped every capability");
    }
    Ok(())
}
