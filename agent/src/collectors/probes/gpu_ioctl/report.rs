//! How `gpu_ioctl` reports: its metric families, the budget of log lines per tick, and the
//! decoding of what the kernel sends up (process names, ioctl commands).

use nodewatch_common::gpu_ioctl::{BUCKETS, DROP_EVENTS, DROP_HIST, DROP_INFLIGHT, DevHist};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::config::NAME;
use crate::{
    collectors::probes::owners::Tally,
    store::{Family, Log2Histogram, OwnerLabels, Store, label_set, names},
};

/// Stalls and hung calls logged one by one per tick; the rest get one summary line, so a
/// driver that stalls every call cannot flood the journal (the counters stay exact).
pub const LINES_PER_TICK: usize = 20;

label_set! {
    /// Labels `{device}`: the watched path (or `/dev/<driver>` for a whole major), and the
    /// calling task's owner (`container`, `pod`; none for the host).
    pub struct DeviceLabels { pub device; owner pub owner }
}

/// One (device, cgroup)'s counts, summed over the CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; BUCKETS],
    pub sum_ns: u64,
    pub stalls: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum_ns: 0,
            stalls: 0,
        }
    }
}

impl Hist {
    /// The sum of a per-CPU value's copies.
    pub fn of<'a>(per_cpu: impl IntoIterator<Item = &'a DevHist>) -> Self {
        let mut t = Self::default();
        for h in per_cpu {
            for (t, v) in t.buckets.iter_mut().zip(h.buckets.iter()) {
                *t += v;
            }
            t.sum_ns += h.sum_ns;
            t.stalls += h.stalls;
        }
        t
    }
}

impl Tally for Hist {
    fn add(&mut self, o: &Self) {
        for (t, v) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *t += v;
        }
        self.sum_ns += o.sum_ns;
        self.stalls += o.stalls;
    }
}

label_set! {
    /// Labels `{reason}` of lost events.
    pub struct DropLabels { pub reason }
}

/// The probe's metric families.
#[derive(Clone, Default)]
pub struct Metrics {
    pub duration: Family<DeviceLabels, Log2Histogram>,
    pub stalls: Family<DeviceLabels, Counter>,
    pub inflight_stalled: Family<DeviceLabels, Gauge>,
    pub dropped: Family<DropLabels, Counter>,
}

impl Metrics {
    pub fn register(store: &mut Store) -> Self {
        let m = Self::default();
        store.register(
            names::GPU_IOCTL_DURATION,
            "Duration of ioctls on watched GPU devices, in the kernel's power-of-two buckets",
            m.duration.clone(),
        );
        store.register(
            names::GPU_IOCTL_STALLS,
            "ioctls on watched GPU devices that returned after the stall threshold or later",
            m.stalls.clone(),
        );
        store.register(
            names::GPU_IOCTL_INFLIGHT_STALLED,
            "ioctls on watched GPU devices still blocked past the stall threshold right now",
            m.inflight_stalled.clone(),
        );
        store.register(
            names::GPU_IOCTL_EVENTS_DROPPED,
            "GPU ioctl events lost: ringbuf_full (a stall's log line; the stall is still counted), inflight_full (a call not timed), hist_full (a call not counted: too many (device, cgroup) pairs)",
            m.dropped.clone(),
        );
        m
    }

    /// The host's series of a device.
    pub fn device(&self, label: &str) -> DeviceLabels {
        self.owned(label, OwnerLabels::HOST)
    }

    /// The series of a device's calls by `owner`.
    pub fn owned(&self, label: &str, owner: OwnerLabels) -> DeviceLabels {
        let l = DeviceLabels {
            device: label.to_string(),
            owner,
        };
        // Every known device shows all three series, zero until something happens.
        let _ = self.duration.get_or_create(&l);
        let _ = self.stalls.get_or_create(&l);
        let _ = self.inflight_stalled.get_or_create(&l);
        l
    }

    /// Removes the series of `l`.
    pub fn remove(&self, l: &DeviceLabels) {
        self.duration.remove(l);
        self.stalls.remove(l);
        self.inflight_stalled.remove(l);
    }
}

/// The drop slots the kernel side counts in, with their `reason` label and what they cost.
pub const DROP_REASONS: [(u32, &str, &str); 3] = [
    (
        DROP_EVENTS,
        "ringbuf_full",
        "the stall ring buffer was full: some stalls are counted but not logged",
    ),
    (
        DROP_INFLIGHT,
        "inflight_full",
        "the in-flight table is full (one slot per thread using a watched device): some calls are not timed",
    ),
    (
        DROP_HIST,
        "hist_full",
        "the histogram table is full (one entry per device and cgroup calling it): some calls are not counted",
    ),
];

/// Counts log lines against [`LINES_PER_TICK`] and sums up the rest.
pub struct LineBudget {
    left: usize,
    over: u64,
}

impl LineBudget {
    pub fn new() -> Self {
        Self {
            left: LINES_PER_TICK,
            over: 0,
        }
    }
    /// Whether one more line may be written now.
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            self.over += 1;
            return false;
        }
        self.left -= 1;
        true
    }
    pub fn summarize(self, what: &str) {
        if self.over > 0 {
            tracing::warn!(
                probe = NAME,
                more = self.over,
                limit = LINES_PER_TICK,
                "{what}: more this tick than are logged one by one"
            );
        }
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// An ioctl command, shown raw and decoded (`_IOC` direction, type, number, size).
pub struct Cmd(pub u32);

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        let (nr, ty, size, dir) = (c & 0xff, (c >> 8) & 0xff, (c >> 16) & 0x3fff, c >> 30);
        let dir = ["none", "write", "read", "read/write"][dir as usize];
        let ty = match char::from_u32(ty) {
            Some(ch) if ch.is_ascii_graphic() => format!("'{ch}'"),
            _ => format!("{ty:#x}"),
        };
        write!(f, "{c:#010x} (type {ty} nr {nr:#x} size {size} {dir})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ioctl_commands() {
        // NV_ESC_RM_CONTROL on nvidiactl: _IOWR('F', 0x2a, 32 bytes).
        assert_eq!(
            Cmd(0xc020_462a).to_string(),
            "0xc020462a (type 'F' nr 0x2a size 32 read/write)"
        );
        assert_eq!(
            Cmd(0x5401).to_string(),
            "0x00005401 (type 'T' nr 0x1 size 0 none)"
        );
        assert_eq!(comm(b"python3\0\0\0\0\0\0\0\0\0"), "python3");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }
}
