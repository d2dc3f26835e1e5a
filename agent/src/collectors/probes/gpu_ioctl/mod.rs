//! GPU-driver ioctls per device: latency histogram, stalls, and calls hung right now.
//!
//! eBPF: tracepoints `syscalls:sys_enter_ioctl` / `sys_exit_ioctl`. The kernel side resolves
//! each call's fd to its inode, keeps only watched devices, times them per thread and adds the
//! duration to a log2 histogram per device and cgroup of the caller (told apart here as
//! containers); calls over the stall threshold also come up the
//! ring buffer. Each tick this side re-reads the device globs (devices that appear later are
//! picked up), copies the histograms, logs stalls, and walks the in-flight calls to find those
//! hung past the threshold. Without eBPF the probe is off (one WARN); the agent runs on.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{KProbe, TracePoint},
};
use nodewatch_common::gpu_ioctl::{
    Call, DevHist, ENTER_CMD_AT, ENTER_FD_AT, EVENTS_MAP, GpuIoctlParams, HIST_INDEX_MAP, HIST_MAP,
    HIST_SLOTS_MAP, HistKey, INFLIGHT_MAP, KEYS_MAP, MAJORS_MAP, PARAMS_GLOBAL, PROG_DRIVER_ENTER,
    PROG_ENTER, PROG_ENTER_CAST, PROG_ENTER_COMPAT, PROG_EXIT, PROG_THREAD_EXIT, StallEvent,
    THREAD_WORDS, THREADS_MAP, TYPES_MAP, ZERO_MAP,
};

pub mod config;
mod devices;
mod driver;
mod hooks;
mod kfunc;
mod report;
mod slots;
mod table;

pub use self::config::NAME;
use self::{
    config::GpuIoctlConfig,
    kfunc::with_kfunc,
    report::{
        Cmd, DROP_REASONS, DeviceLabels, DropLabels, Hist, LineBudget, Metrics, comm, monotonic_ns,
    },
    table::Watched,
};
use crate::{
    collectors::{
        collector::{CollectError, Collector, Env, Mode, Off},
        probes::{
            ebpf::{self, AttachError},
            kernel::{self, TracepointFormat},
            owners::{Entry, Owners, Totals, lock},
        },
    },
    store::{OwnerLabels, Store, hash::HashMap as FxHashMap, set_total},
};

/// The kernel object, built by `agent/build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gpu_ioctl"));

/// Registers the probe's families and loads its programs (attached once a watched device
/// exists); without eBPF it is off.
pub fn start(cfg: &GpuIoctlConfig, env: Env<'_>, store: &mut Store) -> Box<dyn Collector> {
    let metrics = Metrics::register(store);
    match Kernel::load(cfg, env, metrics) {
        Ok(mut k) => {
            if let Err(e) = k.refresh_devices() {
                tracing::warn!(probe = NAME, error = %e, "cannot apply the watched devices yet; retrying every tick");
            }
            Box::new(k)
        }
        Err(e) => {
            tracing::warn!(
                probe = NAME,
                error = %e,
                "eBPF unavailable; GPU ioctl latency, stalls and hung calls are not measured"
            );
            Box::new(Off {
                name: NAME,
                reason: e.to_string(),
            })
        }
    }
}

/// The eBPF mode: owns the loaded object, so dropping it detaches both programs.
struct Kernel {
    ebpf: Ebpf,
    /// The programs' hooks.
    attach: hooks::Attach,
    watched: Watched,
    inflight: HashMap<MapData, u64, Call>,
    hist: PerCpuHashMap<MapData, HistKey, DevHist>,
    slots: slots::Slots,
    /// Container labels of the series, and totals that outlive the kernel keys of cgroups
    /// that are gone.
    owners: Owners,
    totals: Totals<DeviceLabels, Hist>,
    /// The series exported last tick (the in-flight gauge is set on each of them).
    series: Vec<DeviceLabels>,
    /// Series that exist only for a call hung right now.
    hung_series: Vec<DeviceLabels>,
    events: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    threshold: Duration,
    /// Hung calls already logged: (thread, start).
    hung_logged: HashSet<(u64, u64)>,
    /// Calls in flight at the last walk, not yet past the threshold: (thread, start, when
    /// they pass it), so the tick can run the moment one does.
    pending: Vec<(u64, u64, Instant)>,
    /// Events lost so far, per reason in [`DROP_REASONS`] order: a WARN when one first moves.
    dropped: [u64; DROP_REASONS.len()],
    metrics: Metrics,
}

impl Kernel {
    fn load(c: &GpuIoctlConfig, env: Env<'_>, metrics: Metrics) -> Result<Self, AttachError> {
        let params = params(c.stall_threshold.0)?;
        // One bit per possible thread id: the exit program's first test.
        let words = std::fs::read_to_string(env.proc_root.join("sys/kernel/pid_max"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .map_or(THREAD_WORDS, |max| max.div_ceil(64).clamp(1, THREAD_WORDS));
        // The cast entry program calls a kfunc whose BTF id only this kernel knows.
        let patched = if params.file_slot_btf != 0 {
            kernel::func_id("bpf_rdonly_cast").and_then(|id| with_kfunc(OBJECT, id))
        } else {
            None
        };
        let object = patched.as_ref().map_or(OBJECT, |o| o.bytes());
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| AttachError::Cpus(format!("{what}: {e}")))?;
        let slot_count = slots::slot_count(cpus);
        let mut ebpf = EbpfLoader::new()
            .override_global(PARAMS_GLOBAL, &params, true)
            .map_max_entries(THREADS_MAP, words)
            .map_max_entries(HIST_SLOTS_MAP, slot_count)
            .load(object)?;
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(AttachError::Missing(name));
        let majors: Array<MapData, _> = take(MAJORS_MAP)?.try_into()?;
        let keys: HashMap<MapData, _, _> = take(KEYS_MAP)?.try_into()?;
        let types: Array<MapData, u8> = take(TYPES_MAP)?.try_into()?;
        let inflight = take(INFLIGHT_MAP)?.try_into()?;
        let hist = take(HIST_MAP)?.try_into()?;
        let events = take(EVENTS_MAP)?.try_into()?;
        let drops = take(nodewatch_common::gpu_ioctl::DROPS_MAP)?.try_into()?;
        let mut zero: PerCpuArray<MapData, DevHist> = take(ZERO_MAP)?.try_into()?;
        let index = take(HIST_INDEX_MAP)?.try_into()?;
        let slot_maps = take(HIST_SLOTS_MAP)?.try_into()?;
        let zeros = PerCpuValues::try_from(vec![DevHist::default(); cpus])
            .map_err(|e| AttachError::Cpus(e.to_string()))?;
        zero.set(0, zeros, 0)?;
        let slots = slots::Slots::new(index, slot_maps, cpus, slot_count);
        let load = |ebpf: &mut Ebpf, prog: &'static str| -> Result<(), AttachError> {
            let err = |source| AttachError::Program { name: prog, source };
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or(AttachError::Missing(prog))?
                .try_into()
                .map_err(err)?;
            tp.load().map_err(err)
        };
        // The cheapest entry program the kernel takes: plain loads all the way to the inode
        // (the record at its usual offsets, the fd table through BTF-typed pointers, the
        // file and inode through `bpf_rdonly_cast`), then the same with helper reads from
        // the file on, then helper reads only. NODEWATCH_FD_WALK=btf or =probe_read starts
        // further down the list, for the benchmark and the tests.
        let forced = std::env::var("NODEWATCH_FD_WALK").unwrap_or_default();
        let usual_record =
            (params.enter_fd as usize, params.enter_cmd as usize) == (ENTER_FD_AT, ENTER_CMD_AT);
        let mut candidates = Vec::new();
        if usual_record && patched.is_some() && forced.is_empty() {
            candidates.push(PROG_ENTER_CAST);
        }
        if usual_record && forced != "probe_read" {
            candidates.push(PROG_ENTER);
        }
        candidates.push(PROG_ENTER_COMPAT);
        let mut enter = None;
        for (i, prog) in candidates.iter().enumerate() {
            match load(&mut ebpf, prog) {
                Ok(()) => {
                    enter = Some(*prog);
                    break;
                }
                Err(e) if i + 1 < candidates.len() => {
                    tracing::info!(probe = NAME, program = prog, error = %e, "entry program not loaded; trying the next");
                }
                Err(e) => return Err(e),
            }
        }
        let enter = enter.unwrap_or(PROG_ENTER_COMPAT);
        load(&mut ebpf, PROG_EXIT)?;
        load(&mut ebpf, PROG_THREAD_EXIT)?;
        // Loaded wherever the kernel takes it (its verifier is checked even where kprobes
        // are missing); attached only where they are not.
        let driver_entry = ebpf
            .program_mut(PROG_DRIVER_ENTER)
            .ok_or_else(|| "not in the object".to_string())
            .and_then(|p| {
                let kp: &mut KProbe = p.try_into().map_err(|e| format!("{e}"))?;
                kp.load().map_err(|e| format!("did not load: {e}"))
            })
            .and_then(|()| driver::kprobes());
        for (_, reason, _) in DROP_REASONS {
            let _ = metrics.dropped.get_or_create(&DropLabels {
                reason: reason.into(),
            });
        }
        Ok(Self {
            ebpf,
            attach: hooks::Attach::new(enter, driver_entry, env.proc_root.to_path_buf()),
            watched: Watched::new(
                c.devices.0.clone(),
                env.proc_root.join("devices"),
                majors,
                keys,
                types,
            ),
            inflight,
            hist,
            slots,
            owners: Owners::new(env.containers),
            totals: Totals::<DeviceLabels, Hist>::default(),
            series: Vec::new(),
            hung_series: Vec::new(),
            events,
            drops,
            threshold: c.stall_threshold.0,
            hung_logged: HashSet::new(),
            pending: Vec::new(),
            dropped: [0; DROP_REASONS.len()],
            metrics,
        })
    }

    /// Re-reads the globs and updates the kernel's tables; attaches the programs the first
    /// time there is something to watch, so hosts without GPUs pay nothing.
    fn refresh_devices(&mut self) -> Result<(), CollectError> {
        let any = self.watched.refresh()?;
        for label in self.watched.labels() {
            self.metrics.device(label);
        }
        if !any {
            return Ok(());
        }
        let drivers = self.watched.drivers();
        if self.attach.update(&mut self.ebpf, drivers)? {
            tracing::info!(
                probe = NAME,
                attach = %self.attach_method(),
                "watched devices present; programs attached"
            );
        }
        Ok(())
    }

    /// Copies the kernel's per-CPU histograms and stall counts into the metrics.
    fn read_histograms(&mut self) -> Result<(), CollectError> {
        let map_err = |source| CollectError::Map {
            map: HIST_MAP,
            source,
        };
        let mut entries = Vec::new();
        for entry in self.hist.iter() {
            let (key, per_cpu) = entry.map_err(map_err)?;
            let in_slot = self.slots.read(&key).map_err(|source| CollectError::Map {
                map: HIST_SLOTS_MAP,
                source,
            })?;
            entries.push(Entry {
                key,
                cgroup: key.cgroup,
                value: Hist::of(per_cpu.iter().chain(in_slot.iter())),
            });
        }
        // Every known device has its host series from the start.
        let fixed: Vec<DeviceLabels> = self
            .watched
            .labels()
            .iter()
            .map(|l| self.metrics.device(l))
            .collect();
        let (watched, hist, slots) = (&self.watched, &mut self.hist, &mut self.slots);
        let update = self.totals.update(
            Instant::now(),
            &mut self.owners,
            entries,
            &fixed,
            |k: &HistKey, owner| DeviceLabels {
                device: watched.label(k.dev_idx).unwrap_or("?").to_string(),
                owner,
            },
            |k| {
                slots.remove(k);
                let _ = hist.remove(k);
            },
        );
        for s in &update.removed {
            self.metrics.remove(s);
        }
        self.series = update.totals.keys().cloned().collect();
        for (l, t) in update.totals {
            let l = self.metrics.owned(&l.device, l.owner);
            self.metrics
                .duration
                .get_or_create(&l)
                .set(&t.buckets, t.sum_ns);
            set_total(&self.metrics.stalls.get_or_create(&l), t.stalls);
        }
        for (i, (slot, reason, cost)) in DROP_REASONS.into_iter().enumerate() {
            let n: u64 = self
                .drops
                .get(&slot, 0)
                .map_err(|source| CollectError::Map {
                    map: nodewatch_common::gpu_ioctl::DROPS_MAP,
                    source,
                })?
                .iter()
                .sum();
            let c = self.metrics.dropped.get_or_create(&DropLabels {
                reason: reason.into(),
            });
            set_total(&c, n);
            if self.dropped[i] == 0 && n > 0 {
                tracing::warn!(
                    probe = NAME,
                    reason,
                    lost = n,
                    "GPU ioctl events lost: {cost}"
                );
            }
            self.dropped[i] = n;
        }
        Ok(())
    }

    /// Logs every stall the kernel sent since the last tick.
    fn drain_stalls(&mut self) {
        let mut budget = LineBudget::new();
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<StallEvent>() || !budget.take() {
                continue;
            }
            // SAFETY: the kernel wrote a whole StallEvent; read_unaligned copes with alignment.
            events.push(unsafe { std::ptr::read_unaligned::<StallEvent>(item.as_ptr().cast()) });
        }
        for ev in events {
            let owner = self.owner_of(ev.cgroup);
            tracing::warn!(
                probe = NAME,
                device = self.watched.label(ev.dev_idx).unwrap_or("?"),
                container = owner.container.as_deref().unwrap_or(""),
                pod = owner.pod.as_deref().unwrap_or(""),
                pid = ev.pid,
                tid = ev.tid,
                comm = %comm(&ev.comm),
                cmd = %Cmd(ev.cmd),
                duration_ms = ev.duration_ns as f64 / 1e6,
                "GPU ioctl stalled"
            );
        }
        budget.summarize("GPU ioctl stalls");
    }

    /// Counts, per device, the calls in flight for longer than the threshold; logs each
    /// such call once.
    fn walk_inflight(&mut self) -> Result<(), CollectError> {
        let now = monotonic_ns();
        let threshold = self.threshold.as_nanos() as u64;
        let mut stalled: FxHashMap<(u32, u64), i64> = FxHashMap::default();
        let mut seen = HashSet::new();
        let mut budget = LineBudget::new();
        let calls: Vec<(u64, Call)> = self.inflight.iter().filter_map(Result::ok).collect();
        let at = Instant::now();
        self.pending.clear();
        for (id, call) in calls {
            // An entry can vanish between listing its key and reading it: the call returned.
            if call.start_ns == 0 {
                continue; // the thread's slot, idle between calls
            }
            let age = now.saturating_sub(call.start_ns);
            if age < threshold {
                let left = Duration::from_nanos(threshold - age);
                self.pending.push((id, call.start_ns, at + left));
                continue;
            }
            *stalled.entry((call.dev_idx, call.cgroup)).or_default() += 1;
            seen.insert((id, call.start_ns));
            if self.hung_logged.insert((id, call.start_ns)) && budget.take() {
                let (pid, tid) = ((id >> 32) as u32, id as u32);
                let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default();
                let owner = self.owner_of(call.cgroup);
                tracing::warn!(
                    probe = NAME,
                    device = self.watched.label(call.dev_idx).unwrap_or("?"),
                    container = owner.container.as_deref().unwrap_or(""),
                    pod = owner.pod.as_deref().unwrap_or(""),
                    pid,
                    tid,
                    comm = %comm,
                    cmd = %Cmd(call.cmd),
                    in_flight_ms = age as f64 / 1e6,
                    "GPU ioctl hung: still in the driver past the stall threshold"
                );
            }
        }
        budget.summarize("GPU ioctls hung");
        self.hung_logged.retain(|k| seen.contains(k));
        // Per series: the exported ones (zero unless a call hangs), and any series of a
        // hung call that has no finished call yet.
        let mut per: FxHashMap<DeviceLabels, i64> =
            self.series.iter().map(|l| (l.clone(), 0)).collect();
        for ((idx, cgroup), n) in stalled {
            let owner = self.owner_of(cgroup);
            let label = self.watched.label(idx).unwrap_or("?").to_string();
            *per.entry(self.metrics.owned(&label, owner)).or_default() += n;
        }
        // A hung call's own series, whose call is gone without finishing (a killed thread).
        for l in std::mem::take(&mut self.hung_series) {
            if !per.contains_key(&l) {
                self.metrics.remove(&l);
            }
        }
        for (l, n) in per {
            self.metrics.inflight_stalled.get_or_create(&l).set(n);
            if n > 0 && !self.series.contains(&l) {
                self.hung_series.push(l);
            }
        }
        Ok(())
    }

    /// The labels of a cgroup's calls.
    fn owner_of(&mut self, cgroup: u64) -> OwnerLabels {
        let shared = self.owners.shared();
        let mut c = lock(&shared);
        self.owners.labels(&mut c, cgroup)
    }
}

impl Collector for Kernel {
    fn name(&self) -> &'static str {
        NAME
    }
    fn mode(&self) -> Option<Mode> {
        Some(Mode::Ebpf)
    }
    fn attach_method(&self) -> String {
        self.attach.describe(self.watched.command_types_shown())
    }
    fn awaiting_attach(&self) -> bool {
        !self.attach.attached
    }
    fn missed_events(&self) -> u64 {
        ebpf::programs_missed(
            &self.ebpf,
            &[
                self.attach.enter,
                PROG_DRIVER_ENTER,
                PROG_EXIT,
                PROG_THREAD_EXIT,
            ],
        )
    }
    fn deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|&(_, _, due)| due).min()
    }
    /// A call whose threshold has come is hung if its thread is still in that same call.
    fn due(&mut self, now: Instant) -> bool {
        let mut hung = false;
        let inflight = &self.inflight;
        self.pending.retain(|&(id, start, due)| {
            if due > now {
                return true;
            }
            hung |= inflight.get(&id, 0).is_ok_and(|c| c.start_ns == start);
            false
        });
        hung
    }
    fn collect(&mut self) -> Result<(), CollectError> {
        let devices = self.refresh_devices();
        if !self.attach.attached {
            // No program runs yet: the kernel's maps hold nothing to read (and walking the
            // empty in-flight table still scans all its buckets).
            return devices;
        }
        self.drain_stalls();
        self.read_histograms()?;
        self.walk_inflight()?;
        devices
    }
}

/// Where the programs find their fields on this kernel, and the threshold.
fn params(threshold: Duration) -> Result<GpuIoctlParams, kernel::KernelError> {
    let enter = TracepointFormat::read("syscalls", "sys_enter_ioctl")?;
    // These records are not read, but the tracepoints must exist.
    TracepointFormat::read("syscalls", "sys_exit_ioctl")?;
    TracepointFormat::read("sched", "sched_process_exit")?;
    let m = kernel::member_offset;
    Ok(GpuIoctlParams {
        stall_ns: threshold.as_nanos() as u64,
        enter_fd: enter.offset("fd")?,
        enter_cmd: enter.offset("cmd")?,
        task_files: m("task_struct", "files")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_inode: m("file", "f_inode")?,
        inode_mode: m("inode", "i_mode")?,
        inode_rdev: m("inode", "i_rdev")?,
        inode_sb: m("inode", "i_sb")?,
        inode_ino: m("inode", "i_ino")?,
        sb_dev: m("super_block", "s_dev")?,
        valid: 1,
        file_slot_btf: kernel::file_slot_struct_id().unwrap_or(0),
        file_btf: kernel::struct_id("file").unwrap_or(0),
        task_cgroups: m("task_struct", "cgroups")?,
        cset_dfl_cgrp: m("css_set", "dfl_cgrp")?,
        cgroup_kn: m("cgroup", "kn")?,
        kn_id: m("kernfs_node", "id")?,
        _pad: 0,
    })
}
