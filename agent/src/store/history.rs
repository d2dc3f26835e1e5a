//! A short in-memory history of this node's own series: one ring of `(timestamp, value)` per
//! series, bounded in time (the longest range the rules need) and in series count. Series that
//! vanish get a staleness marker, exactly as a Prometheus scrape writes one, so rules see the
//! same thing a Prometheus scraping this agent would.

use std::collections::{BTreeMap, HashMap as StdHashMap, VecDeque};

use promql_parser::label::Matcher;

use super::{
    hash::HashMap,
    labels::{Labels, METRIC_NAME},
    sink::{SeriesKey, Sink},
};

/// How far back an instant selector looks for a sample (Prometheus's default lookback delta).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Prometheus's staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the staleness marker (not just any NaN).
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

/// The staleness marker.
pub fn stale() -> f64 {
    f64::from_bits(STALE_NAN)
}

/// Most series kept by default; samples of further series are dropped and counted.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// Most samples kept by default, all series together (about 16 bytes each): beyond it each
/// new sample evicts its series' oldest, counted as dropped. Rules over very long ranges at
/// a short interval hit it; the rest never come near.
pub const DEFAULT_MAX_SAMPLES: usize = 2_000_000;

/// The samples of one series, oldest first.
#[derive(Debug, Default)]
pub struct Series {
    samples: VecDeque<(i64, f64)>,
}

impl Series {
    /// The newest sample at or before `t` and not before `t - lookback`, unless it is stale.
    pub fn instant(&self, t: i64, lookback: i64) -> Option<f64> {
        self.instant_sample(t, lookback).map(|s| s.1)
    }

    /// As [`Series::instant`], with the sample's own time.
    pub fn instant_sample(&self, t: i64, lookback: i64) -> Option<(i64, f64)> {
        let idx = self.samples.partition_point(|(ts, _)| *ts <= t);
        let (ts, v) = *self.samples.get(idx.checked_sub(1)?)?;
        (ts >= t - lookback && !is_stale(v)).then_some((ts, v))
    }

    /// Samples with `start <= ts <= end`, staleness markers left out.
    pub fn range(&self, start: i64, end: i64) -> Vec<(i64, f64)> {
        let from = self.samples.partition_point(|(ts, _)| *ts < start);
        self.samples
            .iter()
            .skip(from)
            .take_while(|(ts, _)| *ts <= end)
            .filter(|(_, v)| !is_stale(*v))
            .copied()
            .collect()
    }

    /// Every sample held, staleness markers included, values as bits.
    #[cfg(test)]
    pub fn raw(&self) -> Vec<(i64, u64)> {
        self.samples
            .iter()
            .map(|(t, v)| (*t, v.to_bits()))
            .collect()
    }

    /// Inserts in time order; false for a duplicate timestamp.
    fn insert(&mut self, t: i64, v: f64) -> bool {
        match self.samples.back() {
            None => self.samples.push_back((t, v)),
            Some((last, _)) if *last < t => self.samples.push_back((t, v)),
            _ => {
                // Out of order (rule unit tests load everything up front) or a duplicate
                // timestamp, where the first value stays, as in Prometheus.
                let i = self.samples.partition_point(|(ts, _)| *ts < t);
                if self.samples.get(i).is_some_and(|(ts, _)| *ts == t) {
                    return false;
                }
                self.samples.insert(i, (t, v));
            }
        }
        true
    }
}

/// How long samples are kept: long enough for the range selectors that read a metric. The
/// newest sample of a series is kept for the lookback whatever the retention, so instant
/// selectors see what Prometheus would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// For metrics no named range selector reads.
    pub default_ms: i64,
    /// For the metrics that named range selectors read.
    pub by_name: StdHashMap<String, i64>,
}

/// One series of the history, in a slot that is reused once the series is forgotten.
#[derive(Debug, Default)]
struct Slot {
    series: Series,
    /// Bumped each time the slot is freed: a reference to it kept from before can tell.
    generation: u32,
    /// The scrape that last gave this series a sample.
    seen: u64,
    /// The store's key for this series, once the store has named it.
    key: Option<SeriesKey>,
    live: bool,
}

/// Every series, by metric name, then by label set (which includes the name). Each series
/// lives in a slot that keeps its place from tick to tick: the store's samples find it by
/// their [`SeriesKey`] without their labels, and a scrape finds the series that vanished by
/// the scrape number each slot was last seen in, not by comparing label sets.
#[derive(Debug)]
pub struct History {
    by_name: BTreeMap<String, BTreeMap<Labels, u32>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_key: HashMap<SeriesKey, u32>,
    count: usize,
    max_series: usize,
    /// Samples held, and the most that may be.
    samples: usize,
    max_samples: usize,
    retention: Retention,
    dropped: u64,
    /// The number of the current (or last) scrape.
    scrape: u64,
    /// The series of the last scrape, and of the one under way: slot and its generation.
    scraped: Vec<(u32, u32)>,
    scraping: Vec<(u32, u32)>,
}

impl History {
    /// An empty history keeping `retention_ms` of samples and at most `max_series` series.
    pub fn new(retention_ms: i64, max_series: usize) -> Self {
        Self {
            by_name: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::default(),
            count: 0,
            max_series,
            samples: 0,
            max_samples: usize::MAX,
            retention: Retention {
                default_ms: retention_ms,
                by_name: StdHashMap::new(),
            },
            dropped: 0,
            scrape: 0,
            scraped: Vec::new(),
            scraping: Vec::new(),
        }
    }

    /// Caps the samples held, all series together.
    pub fn set_max_samples(&mut self, max: usize) {
        self.max_samples = max;
    }

    /// How long samples are kept.
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// Samples held, all series together.
    pub fn sample_count(&self) -> usize {
        self.samples
    }

    /// Number of series held.
    pub fn series_count(&self) -> usize {
        self.count
    }

    /// Samples dropped so far because the series or the sample limit was reached.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// The slot of the series `labels`.
    fn find(&self, labels: &Labels) -> Option<u32> {
        self.by_name
            .get(labels.name().unwrap_or_default())?
            .get(labels)
            .copied()
    }

    /// Adds a sample to the series in slot `i`.
    fn push(&mut self, i: u32, t: i64, v: f64) {
        let full = self.samples >= self.max_samples;
        let s = &mut self.slots[i as usize].series;
        if full && s.samples.len() > 1 {
            // The history is full: this series' oldest sample makes room.
            s.samples.pop_front();
            self.samples -= 1;
            self.dropped += 1;
        }
        if s.insert(t, v) {
            self.samples += 1;
        }
    }

    /// A new series holding one sample; `None` (counted as dropped) when a limit is reached.
    fn create(&mut self, labels: Labels, t: i64, v: f64) -> Option<u32> {
        if self.count >= self.max_series || self.samples >= self.max_samples {
            self.dropped += 1;
            return None;
        }
        let mut series = Series::default();
        series.insert(t, v);
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).expect("series are capped far below 2^32")
            }
        };
        let slot = &mut self.slots[i as usize];
        slot.series = series;
        slot.live = true;
        slot.seen = 0;
        slot.key = None;
        let name = labels.name().unwrap_or_default();
        match self.by_name.get_mut(name) {
            Some(m) => m.insert(labels, i),
            None => self
                .by_name
                .entry(name.to_string())
                .or_default()
                .insert(labels, i),
        };
        self.count += 1;
        self.samples += 1;
        Some(i)
    }

    /// Appends one sample; false when the series limit dropped it.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> bool {
        if let Some(i) = self.find(labels) {
            self.push(i, t, v);
            return true;
        }
        is_stale(v) || self.create(labels.clone(), t, v).is_some()
    }

    /// Appends what one collection produced at `t`: `collect` gives the samples to the sink
    /// it is handed. Series that were in the previous collection and are missing now get a
    /// staleness marker.
    pub fn ingest(&mut self, t: i64, collect: impl FnOnce(&mut dyn Sink)) {
        self.scrape += 1;
        self.scraping.clear();
        collect(&mut Ingest { history: self, t });
        let last = std::mem::take(&mut self.scraped);
        for &(i, generation) in &last {
            let s = &self.slots[i as usize];
            if s.live && s.generation == generation && s.seen != self.scrape {
                self.push(i, t, stale());
            }
        }
        self.scraped = std::mem::replace(&mut self.scraping, last);
    }

    /// [`History::ingest`] of a list of samples.
    pub fn ingest_scrape(&mut self, t: i64, samples: Vec<(Labels, f64)>) {
        self.ingest(t, |out| {
            for (labels, v) in &samples {
                out.labelled(labels, *v);
            }
        });
    }

    /// Notes that slot `i` is in the scrape under way.
    fn seen(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        if slot.seen != self.scrape {
            slot.seen = self.scrape;
            self.scraping.push((i, slot.generation));
        }
    }

    /// Makes `key` name the series in slot `i` (one key per series: a key it had before is
    /// forgotten).
    fn bind(&mut self, key: SeriesKey, i: u32) {
        if let Some(old) = self.slots[i as usize].key.replace(key) {
            self.by_key.remove(&old);
        }
        self.by_key.insert(key, i);
    }

    /// Forgets samples older than the retention before `now` (but not the newest one of a
    /// series), and series whose newest sample is a staleness marker or older than the lookback.
    pub fn prune(&mut self, now: i64) {
        let mut removed = 0;
        let mut samples_removed = 0;
        let retention = &self.retention;
        let slots = &mut self.slots;
        let free = &mut self.free;
        let by_key = &mut self.by_key;
        self.by_name.retain(|name, by_labels| {
            let keep_ms = retention
                .by_name
                .get(name)
                .copied()
                .unwrap_or(retention.default_ms);
            let cutoff = now.saturating_sub(keep_ms);
            by_labels.retain(|_, i| {
                let slot = &mut slots[*i as usize];
                let s = &mut slot.series;
                while s.samples.len() > 1 && s.samples.front().is_some_and(|(ts, _)| *ts < cutoff) {
                    s.samples.pop_front();
                    samples_removed += 1;
                }
                let keep = s
                    .samples
                    .back()
                    .is_some_and(|(ts, v)| !is_stale(*v) && *ts >= now.saturating_sub(LOOKBACK_MS));
                if !keep {
                    removed += 1;
                    samples_removed += s.samples.len();
                    if let Some(k) = slot.key.take() {
                        by_key.remove(&k);
                    }
                    *slot = Slot {
                        generation: slot.generation.wrapping_add(1),
                        ..Slot::default()
                    };
                    free.push(*i);
                }
                keep
            });
            !by_labels.is_empty()
        });
        self.count -= removed;
        self.samples -= samples_removed;
    }

    /// Forgets every sample after `t` (rule unit tests: promtool only loads the input up to the
    /// last evaluation).
    pub fn truncate_after(&mut self, t: i64) {
        for slot in self.slots.iter_mut().filter(|s| s.live) {
            let s = &mut slot.series;
            let keep = s.samples.partition_point(|(ts, _)| *ts <= t);
            self.samples -= s.samples.len() - keep;
            s.samples.truncate(keep);
        }
    }

    /// Samples held, counted series by series (the count kept must agree).
    #[cfg(test)]
    fn recount(&self) -> usize {
        let n = self
            .slots
            .iter()
            .filter(|s| s.live)
            .map(|s| s.series.samples.len())
            .sum();
        assert_eq!(
            self.slots.iter().filter(|s| s.live).count(),
            self.count,
            "live slots"
        );
        n
    }

    /// The series whose labels satisfy every matcher (and `name`, when given), in label order.
    pub fn select<'a>(
        &'a self,
        name: Option<&str>,
        matchers: &'a [Matcher],
    ) -> Vec<(&'a Labels, &'a Series)> {
        let matches = |l: &Labels| {
            matchers
                .iter()
                .all(|m| m.is_match(l.get(&m.name).unwrap_or("")))
        };
        // An equality matcher on the name narrows the search to one map.
        let name = name.or_else(|| {
            matchers.iter().find_map(|m| {
                (m.name == METRIC_NAME && matches!(m.op, promql_parser::label::MatchOp::Equal))
                    .then_some(m.value.as_str())
            })
        });
        match name {
            Some(n) => self
                .by_name
                .get(n)
                .into_iter()
                .flatten()
                .filter(|(l, _)| matches(l))
                .map(|(l, i)| (l, &self.slots[*i as usize].series))
                .collect(),
            None => {
                let mut all: Vec<_> = self
                    .by_name
                    .values()
                    .flatten()
                    .filter(|(l, _)| matches(l))
                    .map(|(l, i)| (l, &self.slots[*i as usize].series))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(b.0));
                all
            }
        }
    }
}

/// The sink of one scrape into the history.
struct Ingest<'a> {
    history: &'a mut History,
    t: i64,
}

impl Sink for Ingest<'_> {
    fn keyed(&mut self, key: SeriesKey, v: f64, labels: &dyn Fn() -> Labels) {
        let h = &mut *self.history;
        if let Some(&i) = h.by_key.get(&key) {
            h.push(i, self.t, v);
            h.seen(i);
            return;
        }
        // A series the store has not named before: found by its labels, once.
        let labels = labels();
        let i = match h.find(&labels) {
            Some(i) => {
                h.push(i, self.t, v);
                i
            }
            None if is_stale(v) => return,
            None => match h.create(labels, self.t, v) {
                Some(i) => i,
                None => return,
            },
        };
        h.bind(key, i);
        h.seen(i);
    }

    fn labelled(&mut self, labels: &Labels, v: f64) {
        let h = &mut *self.history;
        let i = match h.find(labels) {
            Some(i) => {
                h.push(i, self.t, v);
                i
            }
            None if is_stale(v) => return,
            None => match h.create(labels.clone(), self.t, v) {
                Some(i) => i,
                None => return,
            },
        };
        h.seen(i);
    }
}

#[cfg(test)]
/// The samples of an OpenMetrics or Prometheus text exposition, as label sets (with
/// `__name__`) and values. `_created` series are left out, as Prometheus does.
pub fn parse_exposition(text: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample_line)
        .filter(|(l, _)| !l.name().is_some_and(|n| n.ends_with("_created")))
        .collect()
}

#[cfg(test)]
fn parse_sample_line(line: &str) -> Option<(Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Labels::new();
    labels.set(METRIC_NAME.into(), name.into());
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            };
            labels.set(key.to_string(), value);
            rest = &rest[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    Some((labels, value.parse().ok()?))
}

#[cfg(test)]
mod tests;
