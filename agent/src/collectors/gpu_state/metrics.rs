//! The probe's metric families and their label sets.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::Counter, gauge::Gauge},
};

use crate::store::{
    At, Escaped, Family, GaugeF64, LabelSet, Labels, Names, Sampled, Sink, Store, label_set, names,
};

label_set! {
    /// Labels `{gpu, uuid}`: NVML's index and the GPU's UUID.
    pub struct GpuLabels { pub gpu, pub uuid }
}

label_set! {
    /// Labels of `nodewatch_gpu_info`.
    pub struct InfoLabels { pub gpu, pub uuid, pub name, pub driver }
}

label_set! {
    /// Labels `{gpu, uuid, reason}` of a clock event.
    pub struct ReasonLabels { pub gpu, pub uuid, pub reason }
}

label_set! {
    /// Labels `{gpu, uuid, kind}` of remapped rows.
    pub struct KindLabels { pub gpu, pub uuid, pub kind }
}

label_set! {
    /// Labels `{gpu, uuid, link}` of an NVLink.
    pub struct LinkLabels { pub gpu, pub uuid, pub link }
}

label_set! {
    /// Labels `{gpu, uuid, state}` of the fabric registration state.
    pub struct StateLabels { pub gpu, pub uuid, pub state }
}

/// Labels `{gpu, uuid, link, type}` of NVLink error counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LinkErrorLabels {
    pub gpu: String,
    pub uuid: String,
    pub link: String,
    pub kind: &'static str,
}

impl EncodeLabelSet for LinkErrorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("gpu", self.gpu.as_str()).encode(encoder.encode_label())?;
        ("uuid", self.uuid.as_str()).encode(encoder.encode_label())?;
        ("link", self.link.as_str()).encode(encoder.encode_label())?;
        ("type", self.kind).encode(encoder.encode_label())
    }
}

impl LabelSet for LinkErrorLabels {
    fn write(&self, into: &mut Labels) {
        into.set("gpu".into(), self.gpu.clone());
        into.set("uuid".into(), self.uuid.clone());
        into.set("link".into(), self.link.clone());
        into.set("type".into(), self.kind.into());
    }
}

label_set! {
    /// Labels `{gpu, call}` of a failed NVML call.
    pub struct CallErrorLabels { pub gpu, pub call }
}

label_set! {
    /// Labels `{call}`: an NVML function.
    pub struct CallLabels { pub call }
}

/// Labels `{gpu, uuid, type}` of ECC error counts (`type` is a Rust keyword, so this set is
/// written out rather than declared with `label_set!`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct EccLabels {
    pub gpu: String,
    pub uuid: String,
    pub kind: &'static str,
}

impl EncodeLabelSet for EccLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("gpu", Escaped(&self.gpu)).encode(encoder.encode_label())?;
        ("uuid", Escaped(&self.uuid)).encode(encoder.encode_label())?;
        ("type", self.kind).encode(encoder.encode_label())
    }
}

impl LabelSet for EccLabels {
    fn write(&self, into: &mut Labels) {
        into.set("gpu".into(), self.gpu.clone());
        into.set("uuid".into(), self.uuid.clone());
        into.set("type".into(), self.kind.into());
    }
}

/// A gauge without labels that is exported only once it has been set: before the first
/// reading (an init that hangs) the GPU count is unknown, not 0.
#[derive(Clone, Debug, Default)]
pub struct LateGauge {
    gauge: Gauge,
    set: Arc<AtomicBool>,
}

impl LateGauge {
    pub fn set(&self, v: i64) {
        self.gauge.set(v);
        self.set.store(true, Ordering::Relaxed);
    }
}

impl TypedMetric for LateGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for LateGauge {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.gauge.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
    fn is_empty(&self) -> bool {
        !self.set.load(Ordering::Relaxed)
    }
}

impl Sampled for LateGauge {
    fn samples(&self, names: &Names, at: At<'_>, out: &mut dyn Sink) {
        if !self.is_empty() {
            self.gauge.samples(names, at, out);
        }
    }
}

/// NVML's clock-event reason bits (`nvmlClocksEventReason*`) and their `reason` labels.
pub const CLOCK_EVENT_REASONS: &[(u64, &str)] = &[
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clock_setting"),
];

/// Every family of the probe.
#[derive(Default)]
pub struct Metrics {
    pub info: Family<InfoLabels, Gauge>,
    /// Set by the first reading: before it (an init that hangs) the count is unknown.
    pub devices: LateGauge,
    pub expected: Gauge,
    pub temperature: Family<GpuLabels, Gauge>,
    pub power: Family<GpuLabels, GaugeF64>,
    pub utilization: Family<GpuLabels, GaugeF64>,
    pub memory_used: Family<GpuLabels, Gauge>,
    pub memory_total: Family<GpuLabels, Gauge>,
    pub ecc: Family<EccLabels, Counter>,
    pub clock_event: Family<ReasonLabels, Gauge>,
    pub remapped: Family<KindLabels, Gauge>,
    pub remap_pending: Family<GpuLabels, Gauge>,
    pub remap_failed: Family<GpuLabels, Gauge>,
    pub pcie_replays: Family<GpuLabels, Counter>,
    pub errors: Family<CallErrorLabels, Counter>,
    pub timeouts: Family<CallLabels, Counter>,
    pub hung: Gauge,
    pub nvlink_up: Family<LinkLabels, Gauge>,
    pub nvlink_errors: Family<LinkErrorLabels, Counter>,
    pub fabric_healthy: Family<GpuLabels, Gauge>,
    pub fabric_state: Family<StateLabels, Gauge>,
    pub persistence: Family<GpuLabels, Gauge>,
    pub pcie_width: Family<GpuLabels, Gauge>,
    pub pcie_width_max: Family<GpuLabels, Gauge>,
    pub pcie_gen: Family<GpuLabels, Gauge>,
    pub pcie_gen_max: Family<GpuLabels, Gauge>,
    pub needs_reset: Family<GpuLabels, Gauge>,
}

impl Metrics {
    /// Registers every family in `store`.
    pub fn register(store: &mut Store) -> Self {
        let m = Self::default();
        store.register(
            names::GPU_INFO,
            "Always 1 for each GPU NVML reaches, labelled by its name and the driver version",
            m.info.clone(),
        );
        store.register(
            names::GPU_DEVICES,
            "GPUs NVML counts and reaches (a GPU that fell off the bus is not counted)",
            m.devices.clone(),
        );
        store.register(
            names::GPU_DEVICES_EXPECTED,
            "GPUs this node should have: probes.gpu_state.expected_gpus, else the NVIDIA display and 3D controllers on the PCI bus at start",
            m.expected.clone(),
        );
        store.register(
            names::GPU_TEMPERATURE,
            "GPU die temperature in degrees Celsius",
            m.temperature.clone(),
        );
        store.register(
            names::GPU_POWER,
            "Power the GPU draws, in watts",
            m.power.clone(),
        );
        store.register(
            names::GPU_UTILIZATION,
            "Share of the last sample period in which a kernel ran on the GPU",
            m.utilization.clone(),
        );
        store.register(
            names::GPU_MEMORY_USED,
            "GPU memory allocated, in bytes",
            m.memory_used.clone(),
        );
        store.register(
            names::GPU_MEMORY_TOTAL,
            "GPU memory installed, in bytes",
            m.memory_total.clone(),
        );
        store.register(
            names::GPU_ECC_ERRORS,
            "ECC memory errors since the driver loaded (NVML's volatile counts), by type (corrected, uncorrected)",
            m.ecc.clone(),
        );
        store.register(
            names::GPU_CLOCK_EVENT,
            "1 while this reason holds the GPU's clocks down (throttling), else 0",
            m.clock_event.clone(),
        );
        store.register(
            names::GPU_REMAPPED_ROWS,
            "Memory rows remapped to spare rows, by the kind of error that caused it (correctable, uncorrectable)",
            m.remapped.clone(),
        );
        store.register(
            names::GPU_ROW_REMAP_PENDING,
            "1 while a row remap waits for the GPU's next reset",
            m.remap_pending.clone(),
        );
        store.register(
            names::GPU_ROW_REMAP_FAILED,
            "1 when a row remap failed (no spare row left)",
            m.remap_failed.clone(),
        );
        store.register(
            names::GPU_PCIE_REPLAYS,
            "PCIe replays (link-level retransmissions) of the GPU",
            m.pcie_replays.clone(),
        );
        store.register(
            names::GPU_NVML_ERRORS,
            "NVML calls that failed, by GPU and NVML function",
            m.errors.clone(),
        );
        store.register(
            names::GPU_NVML_TIMEOUTS,
            "NVML calls that had not returned by their deadline, by NVML function",
            m.timeouts.clone(),
        );
        store.register(
            names::GPU_NVML_HUNG,
            "1 while an NVML call is blocked past its deadline (no other NVML call starts meanwhile)",
            m.hung.clone(),
        );
        store.register(
            names::GPU_NVLINK_UP,
            "1 while the NVLink is active, 0 when it is down (each link NVML numbers for the GPU)",
            m.nvlink_up.clone(),
        );
        store.register(
            names::GPU_NVLINK_ERRORS,
            "NVLink data-link errors by link and type (replay, recovery, crc_flit, crc_data), NVML's counts",
            m.nvlink_errors.clone(),
        );
        store.register(
            names::GPU_FABRIC_HEALTHY,
            "1 when the GPU's registration with the NVLink fabric completed with success and no health-mask field reports a fault, else 0 (GPUs on an NVSwitch fabric)",
            m.fabric_healthy.clone(),
        );
        store.register(
            names::GPU_FABRIC_STATE,
            "Always 1, labelled by the GPU's NVLink fabric registration state (not_started, in_progress, completed)",
            m.fabric_state.clone(),
        );
        store.register(
            names::GPU_PERSISTENCE_MODE,
            "1 when the driver keeps the GPU initialised without clients (persistence mode), else 0",
            m.persistence.clone(),
        );
        store.register(
            names::GPU_PCIE_LINK_WIDTH,
            "Lanes of the GPU's PCIe link now",
            m.pcie_width.clone(),
        );
        store.register(
            names::GPU_PCIE_LINK_WIDTH_MAX,
            "Most lanes the GPU's PCIe link can have",
            m.pcie_width_max.clone(),
        );
        store.register(
            names::GPU_PCIE_LINK_GENERATION,
            "PCIe generation of the GPU's link now (it drops at idle to save power)",
            m.pcie_gen.clone(),
        );
        store.register(
            names::GPU_PCIE_LINK_GENERATION_MAX,
            "Highest PCIe generation the GPU's link can run",
            m.pcie_gen_max.clone(),
        );
        store.register(
            names::GPU_NEEDS_RESET,
            "1 while NVML answers GPU_IS_LOST or RESET_REQUIRED for the GPU (reset it or reboot), else 0",
            m.needs_reset.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::gpu_state::{
        nvml::{Memory, Reading, Remapped, Snapshot},
        series::Exported,
    };

    fn reading(index: u32) -> Reading {
        Reading {
            index,
            uuid: format!("GPU-{index}"),
            name: "NVIDIA H100".into(),
            temperature: Some(40 + index),
            power_mw: Some(300_500),
            utilization: Some(25),
            memory: Some(Memory {
                used: 1 << 30,
                total: 80 << 30,
            }),
            ecc_corrected: Some(7),
            ecc_uncorrected: Some(1),
            clock_events: Some(0x8 | 0x40),
            remapped: Some(Remapped {
                correctable: 2,
                uncorrectable: 1,
                pending: true,
                failed: false,
            }),
            pcie_replays: Some(9),
            failed: Vec::new(),
            lost: false,
            ..Reading::default()
        }
    }

    fn values(store: &Store) -> Vec<String> {
        let mut v: Vec<String> = store
            .samples()
            .into_iter()
            .filter(|(l, _)| {
                l.get("__name__")
                    .is_some_and(|n| n.starts_with("nodewatch_gpu_"))
            })
            .map(|(l, v)| format!("{l:?} {v}"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_reading_becomes_its_series_and_a_gone_gpu_takes_them_along() {
        let mut store = Store::new();
        let m = Metrics::register(&mut store);
        let mut exported = Exported::default();
        assert!(
            !values(&store).iter().any(|s| s.contains("gpu_devices\"")),
            "no GPU count before a reading"
        );
        let two = Snapshot {
            count: Ok(2),
            gpus: vec![reading(0), reading(1)],
        };
        assert_eq!(exported.export(&m, &two, "550.1"), 2);
        let text = store.encode_prometheus();
        for line in [
            "nodewatch_gpu_devices 2",
            "nodewatch_gpu_temperature_celsius{gpu=\"1\",uuid=\"GPU-1\"} 41",
            "nodewatch_gpu_power_watts{gpu=\"0\",uuid=\"GPU-0\"} 300.5",
            "nodewatch_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-0\"} 0.25",
            "nodewatch_gpu_memory_total_bytes{gpu=\"0\",uuid=\"GPU-0\"} 85899345920",
            "nodewatch_gpu_ecc_errors_total{gpu=\"0\",uuid=\"GPU-0\",type=\"uncorrected\"} 1",
            "nodewatch_gpu_clock_event{gpu=\"0\",uuid=\"GPU-0\",reason=\"hw_slowdown\"} 1",
            "nodewatch_gpu_clock_event{gpu=\"0\",uuid=\"GPU-0\",reason=\"hw_thermal\"} 1",
            "nodewatch_gpu_clock_event{gpu=\"0\",uuid=\"GPU-0\",reason=\"gpu_idle\"} 0",
            "nodewatch_gpu_remapped_rows{gpu=\"0\",uuid=\"GPU-0\",kind=\"uncorrectable\"} 1",
            "nodewatch_gpu_row_remap_pending{gpu=\"0\",uuid=\"GPU-0\"} 1",
            "nodewatch_gpu_pcie_replays_total{gpu=\"1\",uuid=\"GPU-1\"} 9",
            "nodewatch_gpu_info{gpu=\"1\",uuid=\"GPU-1\",name=\"NVIDIA H100\",driver=\"550.1\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let per_gpu = values(&store).len();

        // GPU 1 lost, GPU 0 stops answering some queries: their series go.
        let mut lost = reading(1);
        lost.lost = true;
        lost.needs_reset = true;
        let mut partial = reading(0);
        partial.temperature = None;
        partial.remapped = None;
        partial.clock_events = None;
        let one = Snapshot {
            count: Ok(2),
            gpus: vec![partial, lost],
        };
        assert_eq!(exported.export(&m, &one, "550.1"), 1);
        let text = store.encode_prometheus();
        assert!(text.contains("nodewatch_gpu_devices 1"), "{text}");
        let lost_lines: Vec<&str> = text.lines().filter(|l| l.contains("gpu=\"1\"")).collect();
        assert_eq!(
            lost_lines,
            ["nodewatch_gpu_needs_reset{gpu=\"1\",uuid=\"GPU-1\"} 1"],
            "the lost GPU keeps only its needs-reset series:\n{text}"
        );
        assert!(
            !text.contains("nodewatch_gpu_temperature_celsius"),
            "{text}"
        );
        assert!(!text.contains("nodewatch_gpu_clock_event"), "{text}");
        assert!(!text.contains("nodewatch_gpu_row_remap_pending"), "{text}");
        assert!(
            text.contains("nodewatch_gpu_power_watts{gpu=\"0\""),
            "{text}"
        );
        assert!(values(&store).len() < per_gpu / 2);

        // A count NVML could not give: no GPU is present.
        let none = Snapshot {
            count: Err("nvmlDeviceGetCount_v2: Unknown".into()),
            gpus: vec![],
        };
        assert_eq!(exported.export(&m, &none, "550.1"), 0);
        let text = store.encode_prometheus();
        assert!(text.contains("nodewatch_gpu_devices 0"), "{text}");
        assert!(!text.contains("nodewatch_gpu_info"), "{text}");
    }
}
