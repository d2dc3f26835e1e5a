//! Driver entry: where the kernel has kprobes, the entry program attaches to the watched
//! drivers' own ioctl handlers instead of `syscalls:sys_enter_ioctl`, so only calls into
//! those drivers run it: every other ioctl on the host skips the entry program altogether,
//! and the handler is given the file (no fd walk). The exit stays on `sys_exit_ioctl`, whose
//! first tests (does any thread, then this thread, hold a slot?) are a load and a bit test:
//! a kretprobe would lose the returns of calls blocked in the driver beyond its `maxactive`
//! instances, and a lost return would leave a call that looks hung.
//!
//! Chosen at run time: every watched device must be a character device of a driver listed in
//! [`HANDLERS`] whose handler is in `/proc/kallsyms`, and the kernel must offer kprobes (the
//! `kprobe` perf event source). Anything else (a watched regular file, a driver not listed,
//! no kprobes) keeps the tracepoints.

use std::collections::BTreeSet;

/// The ioctl handlers (`file_operations.unlocked_ioctl` and `.compat_ioctl`) of each known
/// driver, by its name in `/proc/devices`. Of each group the first present is used; a driver
/// needs one group present. NVIDIA's major (`nvidia-frontend` in the proprietary modules,
/// `nvidia` in the open ones) is served by `nv-frontend.c`'s handlers where that layer exists,
/// else by `nv.c`'s; `nvidia-uvm` by `uvm.c`'s entry; DRM render nodes by DRM's core; AMD's
/// KFD by its own.
pub const HANDLERS: &[(&str, &[&[&str]])] = &[
    (
        "nvidia-frontend",
        &[
            &["nvidia_frontend_unlocked_ioctl", "nvidia_unlocked_ioctl"],
            &["nvidia_frontend_compat_ioctl"],
        ],
    ),
    (
        "nvidia",
        &[
            &["nvidia_frontend_unlocked_ioctl", "nvidia_unlocked_ioctl"],
            &["nvidia_frontend_compat_ioctl"],
        ],
    ),
    ("nvidia-uvm", &[&["uvm_unlocked_ioctl_entry"]]),
    ("drm", &[&["drm_ioctl"], &["drm_compat_ioctl"]]),
    ("kfd", &[&["kfd_ioctl"]]),
];

/// The handlers to attach to for `drivers`, from `/proc/kallsyms` text; why not, where a
/// driver has none.
pub fn handlers(drivers: &BTreeSet<String>, kallsyms: &str) -> Result<Vec<String>, String> {
    let text: BTreeSet<&str> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T").then_some(name)
        })
        .collect();
    let mut out = BTreeSet::new();
    for driver in drivers {
        let Some((_, groups)) = HANDLERS.iter().find(|(d, _)| d == driver) else {
            return Err(format!("no known ioctl handler for driver {driver}"));
        };
        let mut found = false;
        for group in *groups {
            if let Some(sym) = group.iter().find(|s| text.contains(*s)) {
                out.insert((*sym).to_string());
                found = true;
            }
        }
        if !found {
            return Err(format!(
                "driver {driver}: none of {} in kallsyms",
                groups[0].join(", ")
            ));
        }
    }
    Ok(out.into_iter().collect())
}

/// Whether the kernel offers kprobes (the `kprobe` perf event source perf_event_open uses).
/// `NODEWATCH_KPROBES=assume` says yes regardless, so the tests can take the attach path (and
/// its fallback) on kernels without them.
pub fn kprobes() -> Result<(), String> {
    if std::env::var("NODEWATCH_KPROBES").as_deref() == Ok("assume")
        || std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
    {
        Ok(())
    } else {
        Err("this kernel has no kprobes".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffffc1000000 t nvidia_unlocked_ioctl\t[nvidia]
ffffffffc1000100 T nvidia_frontend_poll\t[nvidia]
ffffffffc2000000 t uvm_unlocked_ioctl_entry\t[nvidia_uvm]
ffffffff81000000 T drm_ioctl
ffffffff81000100 T drm_compat_ioctl
ffffffff81000200 D drm_ioctl_table
";

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_each_drivers_handlers() {
        assert_eq!(
            handlers(&set(&["nvidia", "nvidia-uvm", "drm"]), KALLSYMS),
            Ok(vec![
                "drm_compat_ioctl".to_string(),
                "drm_ioctl".into(),
                "nvidia_unlocked_ioctl".into(),
                "uvm_unlocked_ioctl_entry".into()
            ])
        );
    }

    #[test]
    fn the_frontend_layer_comes_first_where_it_exists() {
        let old = "ffffffffc1000000 t nvidia_frontend_unlocked_ioctl\t[nvidia]\n\
                   ffffffffc1000010 t nvidia_frontend_compat_ioctl\t[nvidia]\n\
                   ffffffffc1000020 t nvidia_unlocked_ioctl\t[nvidia]\n";
        assert_eq!(
            handlers(&set(&["nvidia-frontend"]), old),
            Ok(vec![
                "nvidia_frontend_compat_ioctl".to_string(),
                "nvidia_frontend_unlocked_ioctl".into()
            ])
        );
    }

    #[test]
    fn a_driver_without_a_handler_keeps_the_tracepoints() {
        assert!(
            handlers(&set(&["kfd"]), KALLSYMS)
                .unwrap_err()
                .contains("kfd_ioctl")
        );
        assert!(
            handlers(&set(&["nvidia", "fuse"]), KALLSYMS)
                .unwrap_err()
                .contains("fuse")
        );
        // A data symbol of the same name is not a handler.
        assert!(handlers(&set(&["kfd"]), "ffff D kfd_ioctl\n").is_err());
    }
}
