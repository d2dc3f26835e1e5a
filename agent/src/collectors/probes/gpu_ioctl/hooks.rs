//! Where the entry program is attached: `sys_enter_ioctl`, or the watched drivers' own ioctl
//! handlers (see `driver.rs`), chosen again when the watched devices change.

use std::{collections::BTreeSet, path::PathBuf};

use aya::{
    Ebpf,
    programs::{KProbe, TracePoint, kprobe::KProbeLinkId, trace_point::TracePointLinkId},
};
use nodewatch_common::gpu_ioctl::{
    PROG_DRIVER_ENTER, PROG_ENTER, PROG_ENTER_CAST, PROG_EXIT, PROG_THREAD_EXIT,
};

use super::driver;
use crate::collectors::collector::CollectError;

/// The tracepoints, as `nodewatch probes` names them.
pub const ATTACH: &str =
    "tracepoint syscalls:sys_enter_ioctl, syscalls:sys_exit_ioctl, sched:sched_process_exit";

/// Where the entry program is attached.
enum Hooks {
    /// Nothing watched yet.
    None,
    /// `syscalls:sys_enter_ioctl`.
    Tracepoint(TracePointLinkId),
    /// The watched drivers' handlers (by name).
    Driver(Vec<String>, Vec<KProbeLinkId>),
}

/// What is attached, and why the driver entry is not.
pub struct Attach {
    /// Whether the exit and thread-exit programs are attached (once something is watched).
    pub attached: bool,
    /// The entry program that loaded: `PROG_ENTER_CAST`, `PROG_ENTER` or `PROG_ENTER_COMPAT`.
    pub enter: &'static str,
    hooks: Hooks,
    /// Whether the driver-entry program can be used on this kernel, and why not.
    driver_entry: Result<(), String>,
    /// The watched drivers at the last choice of hooks, and why the driver entry was not
    /// chosen then.
    chosen_for: Option<Option<BTreeSet<String>>>,
    why_not_driver: Option<String>,
    proc_root: PathBuf,
}

impl Attach {
    pub fn new(enter: &'static str, driver_entry: Result<(), String>, proc_root: PathBuf) -> Self {
        Self {
            attached: false,
            enter,
            hooks: Hooks::None,
            driver_entry,
            chosen_for: None,
            why_not_driver: None,
            proc_root,
        }
    }

    /// Attaches what is not attached yet, for watched devices of `drivers` (None: one is not
    /// a character device of a named driver): the exit programs, then the entry program on
    /// the drivers' handlers where they allow, else on `sys_enter_ioctl`. True when the
    /// entry program moved.
    pub fn update(
        &mut self,
        ebpf: &mut Ebpf,
        drivers: Option<BTreeSet<String>>,
    ) -> Result<bool, CollectError> {
        if !self.attached {
            // The thread-exit cleanup first, so no slot can outlive its thread.
            for (prog, category, event) in [
                (PROG_THREAD_EXIT, "sched", "sched_process_exit"),
                (PROG_EXIT, "syscalls", "sys_exit_ioctl"),
            ] {
                attach_tracepoint(ebpf, prog, category, event)?;
            }
            self.attached = true;
        }
        if self.chosen_for.as_ref() == Some(&drivers) {
            return Ok(false);
        }
        self.chosen_for = Some(drivers.clone());
        let want = self.driver_entry.clone().and_then(|()| {
            let drivers = drivers.ok_or_else(|| {
                "a watched device is not a character device of a named driver".to_string()
            })?;
            let path = self.proc_root.join("kallsyms");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            driver::handlers(&drivers, &text)
        });
        // The new hooks go on before the old ones come off, so no call goes unseen; a call
        // that enters by both is timed once (its start is written twice, its end seen once).
        let hooks = match want {
            Ok(handlers) if matches!(&self.hooks, Hooks::Driver(h, _) if *h == handlers) => {
                return Ok(false);
            }
            Ok(handlers) => match attach_driver(ebpf, &handlers) {
                Ok(links) => {
                    self.why_not_driver = None;
                    Hooks::Driver(handlers, links)
                }
                Err(e) => {
                    self.why_not_driver = Some(e);
                    self.tracepoint_hooks(ebpf)?
                }
            },
            Err(e) => {
                self.why_not_driver = Some(e);
                self.tracepoint_hooks(ebpf)?
            }
        };
        let old = std::mem::replace(&mut self.hooks, hooks);
        detach(ebpf, self.enter, old);
        Ok(true)
    }

    /// What `nodewatch probes` says: the hooks, the fd walk, the command types let through
    /// (`types`), and why the driver entry is not used.
    pub fn describe(&self, types: Option<String>) -> String {
        let walk = match self.enter {
            PROG_ENTER_CAST => "fd walk: BTF, bpf_rdonly_cast",
            PROG_ENTER => "fd walk: BTF",
            _ => "fd walk: bpf_probe_read_kernel",
        };
        let why_not = self
            .why_not_driver
            .as_deref()
            .or(self.driver_entry.as_ref().err().map(String::as_str))
            .map(|w| format!("; driver entry not used: {w}"))
            .unwrap_or_default();
        match &self.hooks {
            Hooks::Driver(handlers, _) => format!(
                "kprobe {} (driver entry), tracepoint syscalls:sys_exit_ioctl, sched:sched_process_exit",
                handlers.join(", ")
            ),
            Hooks::Tracepoint(_) => {
                let types = types.map(|t| format!("; {t}")).unwrap_or_default();
                format!("{ATTACH} ({walk}{types}{why_not})")
            }
            Hooks::None => {
                format!(
                    "{ATTACH} ({walk}{why_not}; attached once a watched device exists, none yet)"
                )
            }
        }
    }

    /// The entry program on `sys_enter_ioctl`, unless it is there already.
    fn tracepoint_hooks(&mut self, ebpf: &mut Ebpf) -> Result<Hooks, CollectError> {
        if let Hooks::Tracepoint(_) = self.hooks {
            return Ok(std::mem::replace(&mut self.hooks, Hooks::None));
        }
        let link = attach_tracepoint(ebpf, self.enter, "syscalls", "sys_enter_ioctl")?;
        Ok(Hooks::Tracepoint(link))
    }
}

/// `prog` on the tracepoint `category:event`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &'static str,
    category: &str,
    event: &str,
) -> Result<TracePointLinkId, CollectError> {
    let err = |source| CollectError::Attach {
        program: prog,
        source,
    };
    let tp: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or(aya::programs::ProgramError::NotLoaded)
        .map_err(err)?
        .try_into()
        .map_err(err)?;
    tp.attach(category, event).map_err(err)
}

/// The driver-entry program on every handler in `handlers`; on any failure none.
fn attach_driver(ebpf: &mut Ebpf, handlers: &[String]) -> Result<Vec<KProbeLinkId>, String> {
    let kp: &mut KProbe = ebpf
        .program_mut(PROG_DRIVER_ENTER)
        .ok_or("not loaded")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    let mut links = Vec::new();
    for h in handlers {
        match kp.attach(h, 0) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    let _ = kp.detach(link);
                }
                return Err(format!("kprobe on {h}: {e}"));
            }
        }
    }
    Ok(links)
}

/// Takes `hooks` off (`enter`: the entry program on `sys_enter_ioctl`).
fn detach(ebpf: &mut Ebpf, enter: &'static str, hooks: Hooks) {
    match hooks {
        Hooks::None => {}
        Hooks::Tracepoint(link) => {
            if let Some(Ok(tp)) = ebpf.program_mut(enter).map(<&mut TracePoint>::try_from) {
                let _ = tp.detach(link);
            }
        }
        Hooks::Driver(_, links) => {
            if let Some(Ok(kp)) = ebpf
                .program_mut(PROG_DRIVER_ENTER)
                .map(<&mut KProbe>::try_from)
            {
                for link in links {
                    let _ = kp.detach(link);
                }
            }
        }
    }
}
