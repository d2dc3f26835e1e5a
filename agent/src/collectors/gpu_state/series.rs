//! One NVML reading written into the families. Each GPU's label sets and metric handles are
//! made once, when its series first appear, so a tick only stores numbers: the families are
//! touched (a series created or removed) only when a GPU or one of its values comes or goes.
//! Every value is set from what NVML answered this time (counters to NVML's own totals), and
//! the series of a GPU or a value NVML no longer answers for are removed, so nothing stale
//! stays exported.

use std::collections::BTreeMap;

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::{
    metrics::{
        CLOCK_EVENT_REASONS, EccLabels, GpuLabels, InfoLabels, KindLabels, LinkErrorLabels,
        LinkLabels, Metrics, ReasonLabels, StateLabels,
    },
    nvml::{NVLINK_ERRORS, NvLink, Reading, Snapshot},
};
use crate::store::{Family, GaugeF64, LabelSet, set_total};

/// The series of every GPU exported now, by NVML index.
#[derive(Default)]
pub struct Exported {
    gpus: BTreeMap<u32, GpuSeries>,
    /// `nodewatch_gpu_needs_reset` of every GPU NVML counts, lost ones too (whose other
    /// series are gone).
    needs_reset: BTreeMap<u32, (GpuLabels, Gauge)>,
}

/// What identifies a GPU's series: a new UUID, name or driver at an index is a new GPU.
struct Identity {
    uuid: String,
    name: String,
    driver: String,
}

/// The handles of one GPU's series; `None` where NVML gave no value last time.
struct GpuSeries {
    identity: Identity,
    labels: GpuLabels,
    temperature: Option<Gauge>,
    power: Option<GaugeF64>,
    utilization: Option<GaugeF64>,
    memory: Option<(Gauge, Gauge)>,
    ecc: [Option<Counter>; 2],
    clock: Option<Vec<Gauge>>,
    /// Correctable and uncorrectable rows, pending, failed.
    remap: Option<[Gauge; 4]>,
    pcie: Option<Counter>,
    /// Per link: up, and the error counters of [`NVLINK_ERRORS`].
    nvlinks: BTreeMap<u32, (Gauge, [Option<Counter>; 4])>,
    /// Healthy, and the state series with its label.
    fabric: Option<(Gauge, &'static str, Gauge)>,
    persistence: Option<Gauge>,
    /// Width, its maximum, generation, its maximum.
    pcie_link: [Option<Gauge>; 4],
}

const ECC_TYPES: [&str; 2] = ["corrected", "uncorrected"];
const REMAP_KINDS: [&str; 2] = ["correctable", "uncorrectable"];

/// Keeps `slot` in step with whether its value is there: creates the series when it appears,
/// removes it when it goes; the handle, when there is a value.
fn keep<'s, L: LabelSet, M: Clone + Default>(
    family: &Family<L, M>,
    labels: impl FnOnce() -> L,
    slot: &'s mut Option<M>,
    present: bool,
) -> Option<&'s M> {
    match (present, slot.is_some()) {
        (true, false) => *slot = Some(family.get_or_create(&labels())),
        (false, true) => {
            family.remove(&labels());
            *slot = None;
        }
        _ => {}
    }
    slot.as_ref()
}

impl GpuSeries {
    fn new(m: &Metrics, index: u32, identity: Identity) -> Self {
        let labels = GpuLabels {
            gpu: index.to_string(),
            uuid: identity.uuid.clone(),
        };
        m.info
            .get_or_create(&Self::info_labels(&labels, &identity))
            .set(1);
        Self {
            identity,
            labels,
            temperature: None,
            power: None,
            utilization: None,
            memory: None,
            ecc: [None, None],
            clock: None,
            remap: None,
            pcie: None,
            nvlinks: BTreeMap::new(),
            fabric: None,
            persistence: None,
            pcie_link: [None, None, None, None],
        }
    }

    fn info_labels(l: &GpuLabels, id: &Identity) -> InfoLabels {
        InfoLabels {
            gpu: l.gpu.clone(),
            uuid: l.uuid.clone(),
            name: id.name.clone(),
            driver: id.driver.clone(),
        }
    }

    fn ecc_labels(&self, i: usize) -> EccLabels {
        EccLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            kind: ECC_TYPES[i],
        }
    }

    fn reason_labels(&self, reason: &str) -> ReasonLabels {
        ReasonLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            reason: reason.into(),
        }
    }

    fn kind_labels(&self, kind: &str) -> KindLabels {
        KindLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            kind: kind.into(),
        }
    }

    /// Writes one reading; a value NVML did not give removes its series.
    fn update(&mut self, m: &Metrics, r: &Reading) {
        let l = &self.labels;
        if let Some(g) = keep(
            &m.temperature,
            || l.clone(),
            &mut self.temperature,
            r.temperature.is_some(),
        ) {
            g.set(i64::from(r.temperature.unwrap_or_default()));
        }
        if let Some(g) = keep(
            &m.power,
            || l.clone(),
            &mut self.power,
            r.power_mw.is_some(),
        ) {
            g.set(f64::from(r.power_mw.unwrap_or_default()) / 1000.0);
        }
        if let Some(g) = keep(
            &m.utilization,
            || l.clone(),
            &mut self.utilization,
            r.utilization.is_some(),
        ) {
            g.set(f64::from(r.utilization.unwrap_or_default()) / 100.0);
        }
        match (&r.memory, &self.memory) {
            (Some(_), None) => {
                self.memory = Some((
                    m.memory_used.get_or_create(l),
                    m.memory_total.get_or_create(l),
                ));
            }
            (None, Some(_)) => {
                m.memory_used.remove(l);
                m.memory_total.remove(l);
                self.memory = None;
            }
            _ => {}
        }
        if let (Some(mem), Some((used, total))) = (&r.memory, &self.memory) {
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            used.set(bytes(mem.used));
            total.set(bytes(mem.total));
        }
        for (i, count) in [r.ecc_corrected, r.ecc_uncorrected].into_iter().enumerate() {
            let labels = self.ecc_labels(i);
            let mut slot = self.ecc[i].take();
            if let Some(c) = keep(&m.ecc, || labels, &mut slot, count.is_some()) {
                set_total(c, count.unwrap_or_default());
            }
            self.ecc[i] = slot;
        }
        self.update_clock(m, r.clock_events);
        self.update_remap(m, r);
        let l = &self.labels;
        if let Some(c) = keep(
            &m.pcie_replays,
            || l.clone(),
            &mut self.pcie,
            r.pcie_replays.is_some(),
        ) {
            set_total(c, u64::from(r.pcie_replays.unwrap_or_default()));
        }
        self.update_links(m, r);
    }

    fn link_labels(&self, link: u32) -> LinkLabels {
        LinkLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            link: link.to_string(),
        }
    }

    fn link_error_labels(&self, link: u32, i: usize) -> LinkErrorLabels {
        LinkErrorLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            link: link.to_string(),
            kind: NVLINK_ERRORS[i].1,
        }
    }

    fn state_labels(&self, state: &str) -> StateLabels {
        StateLabels {
            gpu: self.labels.gpu.clone(),
            uuid: self.labels.uuid.clone(),
            state: state.into(),
        }
    }

    /// NVLinks, fabric, persistence mode and the PCIe link.
    fn update_links(&mut self, m: &Metrics, r: &Reading) {
        let now: BTreeMap<u32, &NvLink> = r.nvlinks.iter().map(|l| (l.link, l)).collect();
        let gone: Vec<u32> = self
            .nvlinks
            .keys()
            .filter(|k| !now.contains_key(k))
            .copied()
            .collect();
        for link in gone {
            m.nvlink_up.remove(&self.link_labels(link));
            if let Some((_, mut errors)) = self.nvlinks.remove(&link) {
                for (i, slot) in errors.iter_mut().enumerate() {
                    let labels = self.link_error_labels(link, i);
                    keep(&m.nvlink_errors, || labels, slot, false);
                }
            }
        }
        for (link, l) in now {
            if !self.nvlinks.contains_key(&link) {
                let up = m.nvlink_up.get_or_create(&self.link_labels(link));
                self.nvlinks.insert(link, (up, [None, None, None, None]));
            }
            let labels: Vec<LinkErrorLabels> =
                (0..4).map(|i| self.link_error_labels(link, i)).collect();
            let (up, errors) = self.nvlinks.get_mut(&link).expect("inserted above");
            up.set(i64::from(l.up));
            for ((slot, value), labels) in errors.iter_mut().zip(l.errors).zip(labels) {
                if let Some(c) = keep(&m.nvlink_errors, || labels, slot, value.is_some()) {
                    set_total(c, value.unwrap_or_default());
                }
            }
        }

        let state = r.fabric.map(|f| f.state_label());
        if let Some((_, old, _)) = &self.fabric
            && Some(*old) != state
        {
            m.fabric_healthy.remove(&self.labels);
            m.fabric_state.remove(&self.state_labels(old));
            self.fabric = None;
        }
        if let (Some(f), None) = (r.fabric, &self.fabric) {
            let label = f.state_label();
            self.fabric = Some((
                m.fabric_healthy.get_or_create(&self.labels),
                label,
                m.fabric_state.get_or_create(&self.state_labels(label)),
            ));
        }
        if let (Some(f), Some((healthy, _, state))) = (r.fabric, &self.fabric) {
            healthy.set(i64::from(f.healthy()));
            state.set(1);
        }

        let l = &self.labels;
        if let Some(g) = keep(
            &m.persistence,
            || l.clone(),
            &mut self.persistence,
            r.persistence.is_some(),
        ) {
            g.set(i64::from(r.persistence.unwrap_or_default()));
        }
        let p = r.pcie_link;
        let families = [
            &m.pcie_width,
            &m.pcie_width_max,
            &m.pcie_gen,
            &m.pcie_gen_max,
        ];
        let values = [p.width, p.width_max, p.generation, p.generation_max];
        for ((family, value), slot) in families.into_iter().zip(values).zip(&mut self.pcie_link) {
            if let Some(g) = keep(family, || l.clone(), slot, value.is_some()) {
                g.set(i64::from(value.unwrap_or_default()));
            }
        }
    }

    fn update_clock(&mut self, m: &Metrics, bits: Option<u64>) {
        match (bits, &self.clock) {
            (Some(_), None) => {
                let gauges = CLOCK_EVENT_REASONS
                    .iter()
                    .map(|(_, reason)| m.clock_event.get_or_create(&self.reason_labels(reason)))
                    .collect();
                self.clock = Some(gauges);
            }
            (None, Some(_)) => {
                for (_, reason) in CLOCK_EVENT_REASONS {
                    m.clock_event.remove(&self.reason_labels(reason));
                }
                self.clock = None;
            }
            _ => {}
        }
        if let (Some(bits), Some(gauges)) = (bits, &self.clock) {
            for ((bit, _), g) in CLOCK_EVENT_REASONS.iter().zip(gauges) {
                g.set(i64::from(bits & bit != 0));
            }
        }
    }

    fn update_remap(&mut self, m: &Metrics, r: &Reading) {
        match (&r.remapped, &self.remap) {
            (Some(_), None) => {
                self.remap = Some([
                    m.remapped.get_or_create(&self.kind_labels(REMAP_KINDS[0])),
                    m.remapped.get_or_create(&self.kind_labels(REMAP_KINDS[1])),
                    m.remap_pending.get_or_create(&self.labels),
                    m.remap_failed.get_or_create(&self.labels),
                ]);
            }
            (None, Some(_)) => {
                for kind in REMAP_KINDS {
                    m.remapped.remove(&self.kind_labels(kind));
                }
                m.remap_pending.remove(&self.labels);
                m.remap_failed.remove(&self.labels);
                self.remap = None;
            }
            _ => {}
        }
        if let (Some(rm), Some([corr, unc, pending, failed])) = (&r.remapped, &self.remap) {
            corr.set(i64::from(rm.correctable));
            unc.set(i64::from(rm.uncorrectable));
            pending.set(i64::from(rm.pending));
            failed.set(i64::from(rm.failed));
        }
    }

    /// Removes every series of this GPU.
    fn remove(mut self, m: &Metrics) {
        self.update(m, &Reading::default());
        m.info
            .remove(&Self::info_labels(&self.labels, &self.identity));
    }
}

impl Exported {
    /// `nodewatch_gpu_needs_reset` for every GPU NVML counts; a GPU whose index now has
    /// another UUID gets a new series.
    fn export_needs_reset(&mut self, m: &Metrics, snapshot: &Snapshot) {
        let mut gone = std::mem::take(&mut self.needs_reset);
        for r in &snapshot.gpus {
            let labels = GpuLabels {
                gpu: r.index.to_string(),
                uuid: r.uuid.clone(),
            };
            let entry = match gone.remove(&r.index) {
                Some(e) if e.0 == labels => e,
                other => {
                    if let Some((old, _)) = other {
                        m.needs_reset.remove(&old);
                    }
                    let g = m.needs_reset.get_or_create(&labels);
                    (labels, g)
                }
            };
            entry.1.set(i64::from(r.needs_reset));
            self.needs_reset.insert(r.index, entry);
        }
        for (_, (labels, _)) in gone {
            m.needs_reset.remove(&labels);
        }
    }

    /// Writes `snapshot` into `m`'s families; `driver` labels `nodewatch_gpu_info`. Returns
    /// the number of GPUs present (counted by NVML and reachable).
    pub fn export(&mut self, m: &Metrics, snapshot: &Snapshot, driver: &str) -> i64 {
        let mut present = 0;
        let mut gone = std::mem::take(&mut self.gpus);
        for r in snapshot.gpus.iter().filter(|r| !r.lost) {
            present += 1;
            let same =
                |id: &Identity| id.uuid == r.uuid && id.name == r.name && id.driver == driver;
            let mut series = match gone.remove(&r.index) {
                Some(s) if same(&s.identity) => s,
                other => {
                    if let Some(old) = other {
                        old.remove(m);
                    }
                    let identity = Identity {
                        uuid: r.uuid.clone(),
                        name: r.name.clone(),
                        driver: driver.to_string(),
                    };
                    GpuSeries::new(m, r.index, identity)
                }
            };
            series.update(m, r);
            self.gpus.insert(r.index, series);
        }
        for (_, s) in gone {
            s.remove(m);
        }
        self.export_needs_reset(m, snapshot);
        m.devices.set(present);
        present
    }
}
