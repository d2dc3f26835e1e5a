//! A short in-memory history of this node's own series: one ring of `(timestamp, value)` per
//! series, bounded in time (the longest range the rules need) and in series count. Series that
//! vanish get a staleness marker, exactly as a Prometheus scrape writes one, so rules see the
//! same thing a Prometheus scraping this agent would.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::hash::HashSet;

use promql_parser::label::Matcher;

use super::labels::{Labels, METRIC_NAME};

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
    pub by_name: HashMap<String, i64>,
}

/// Every series, by metric name, then by label set (which includes the name).
#[derive(Debug)]
pub struct History {
    series: BTreeMap<String, BTreeMap<Labels, Series>>,
    count: usize,
    max_series: usize,
    /// Samples held, and the most that may be.
    samples: usize,
    max_samples: usize,
    retention: Retention,
    dropped: u64,
    scraped: HashSet<Labels>,
}

impl History {
    /// An empty history keeping `retention_ms` of samples and at most `max_series` series.
    pub fn new(retention_ms: i64, max_series: usize) -> Self {
        Self {
            series: BTreeMap::new(),
            count: 0,
            max_series,
            samples: 0,
            max_samples: usize::MAX,
            retention: Retention {
                default_ms: retention_ms,
                by_name: HashMap::new(),
            },
            dropped: 0,
            scraped: HashSet::default(),
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
        self.series
            .values()
            .flat_map(|m| m.values())
            .map(|s| s.samples.len())
            .sum()
    }

    /// Number of series held.
    pub fn series_count(&self) -> usize {
        self.count
    }

    /// Samples dropped so far because the series or the sample limit was reached.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// Appends one sample; false when the series limit dropped it.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> bool {
        let name = labels.name().unwrap_or_default();
        let by_name = self.series.entry(name.to_string()).or_default();
        let full = self.samples >= self.max_samples;
        if let Some(s) = by_name.get_mut(labels) {
            if full && s.samples.len() > 1 {
                // The history is full: this series' oldest sample makes room.
                s.samples.pop_front();
                self.samples -= 1;
                self.dropped += 1;
            }
            if s.insert(t, v) {
                self.samples += 1;
            }
            return true;
        }
        if is_stale(v) {
            return true;
        }
        if self.count >= self.max_series || full {
            self.dropped += 1;
            return false;
        }
        let mut s = Series::default();
        s.insert(t, v);
        by_name.insert(labels.clone(), s);
        self.count += 1;
        self.samples += 1;
        true
    }

    /// Appends what one collection produced at `t`; series that were in the previous one and
    /// are missing now get a staleness marker.
    pub fn ingest_scrape(&mut self, t: i64, samples: Vec<(Labels, f64)>) {
        let mut now = HashSet::with_capacity_and_hasher(samples.len(), Default::default());
        for (labels, v) in samples {
            self.append(&labels, t, v);
            now.insert(labels);
        }
        let gone: Vec<Labels> = self.scraped.difference(&now).cloned().collect();
        for labels in gone {
            self.append(&labels, t, stale());
        }
        self.scraped = now;
    }

    /// Forgets samples older than the retention before `now` (but not the newest one of a
    /// series), and series whose newest sample is a staleness marker or older than the lookback.
    pub fn prune(&mut self, now: i64) {
        let mut removed = 0;
        let mut samples_removed = 0;
        let retention = &self.retention;
        self.series.retain(|name, by_labels| {
            let keep_ms = retention
                .by_name
                .get(name)
                .copied()
                .unwrap_or(retention.default_ms);
            let cutoff = now.saturating_sub(keep_ms);
            by_labels.retain(|_, s| {
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
        for by_labels in self.series.values_mut() {
            for s in by_labels.values_mut() {
                let keep = s.samples.partition_point(|(ts, _)| *ts <= t);
                self.samples -= s.samples.len() - keep;
                s.samples.truncate(keep);
            }
        }
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
                .series
                .get(n)
                .into_iter()
                .flatten()
                .filter(|(l, _)| matches(l))
                .collect(),
            None => {
                let mut all: Vec<_> = self
                    .series
                    .values()
                    .flatten()
                    .filter(|(l, _)| matches(l))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(b.0));
                all
            }
        }
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
mod tests {
    use super::*;

    fn l(name: &str, port: &str) -> Labels {
        Labels::from_pairs([("__name__", name), ("port", port)])
    }

    #[test]
    fn parses_openmetrics_text() {
        let text = "# HELP nodewatch_x X.\n# TYPE nodewatch_x counter\nnodewatch_x_total{port=\"8000\"} 3\nnodewatch_x_created{port=\"8000\"} 1.7e9\nnodewatch_h_bucket{le=\"+Inf\",dev=\"a\\\"b\"} 2 # {trace_id=\"x\"} 1\nnodewatch_g 1.5\nnodewatch_n NaN\n# EOF\n";
        let got = parse_exposition(text);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, l("nodewatch_x_total", "8000"));
        assert_eq!(got[0].1, 3.0);
        assert_eq!(got[1].0.get("dev"), Some("a\"b"));
        assert_eq!(got[1].0.get("le"), Some("+Inf"));
        assert_eq!(got[2].1, 1.5);
        assert!(got[3].1.is_nan());
    }

    #[test]
    fn vanished_series_get_a_staleness_marker() {
        let mut h = History::new(60_000, 100);
        h.ingest_scrape(1000, vec![(l("a", "1"), 1.0), (l("a", "2"), 2.0)]);
        h.ingest_scrape(2000, vec![(l("a", "1"), 1.5)]);
        let sel = h.select(Some("a"), &[]);
        assert_eq!(sel.len(), 2);
        assert_eq!(sel[0].1.instant(2000, 300_000), Some(1.5));
        assert_eq!(sel[1].1.instant(1500, 300_000), Some(2.0));
        assert_eq!(sel[1].1.instant(2000, 300_000), None, "stale");
        assert_eq!(sel[1].1.range(0, 2000), vec![(1000, 2.0)]);
    }

    #[test]
    fn sample_limit_evicts_the_oldest_and_counts() {
        let mut h = History::new(i64::MAX, 100);
        h.set_max_samples(4);
        for t in 0..3 {
            assert!(h.append(&l("a", "1"), t * 1000, t as f64));
        }
        assert!(h.append(&l("a", "2"), 0, 9.0));
        assert_eq!(h.sample_count(), 4);
        assert!(!h.append(&l("a", "3"), 0, 1.0), "no room for a new series");
        assert!(h.append(&l("a", "1"), 3000, 3.0));
        assert_eq!(h.sample_count(), 4);
        assert_eq!(h.dropped_samples(), 2);
        let sel = h.select(Some("a"), &[]);
        assert_eq!(
            sel[0].1.range(0, 9000),
            vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)]
        );
        h.prune(3000);
        assert_eq!(h.samples, h.sample_count());
        h.truncate_after(1500);
        assert_eq!(h.samples, h.sample_count());
    }

    #[test]
    fn retention_and_series_limit() {
        let mut h = History::new(1500, 2);
        assert!(h.append(&l("a", "1"), 0, 1.0));
        assert!(h.append(&l("a", "2"), 0, 1.0));
        assert!(!h.append(&l("a", "3"), 0, 1.0));
        assert_eq!(h.dropped_samples(), 1);
        h.append(&l("a", "1"), 1000, 2.0);
        h.append(&l("a", "1"), 2000, 3.0);
        h.append(&l("a", "2"), 1000, stale());
        h.prune(2000);
        assert_eq!(h.series_count(), 1, "a=2 went stale");
        let sel = h.select(Some("a"), &[]);
        assert_eq!(sel[0].1.range(0, 3000), vec![(1000, 2.0), (2000, 3.0)]);
        // The newest sample stays for the lookback even when older than the retention.
        h.append(&l("b", "1"), 0, 1.0);
        h.prune(100_000);
        let b = h.select(Some("b"), &[]);
        assert_eq!(b[0].1.instant(100_000, 300_000), Some(1.0));
        h.prune(300_001);
        assert!(
            h.select(Some("b"), &[]).is_empty(),
            "older than the lookback"
        );
        // A metric read by a longer range keeps its window.
        let mut h = History::new(1000, 10);
        h.set_retention(Retention {
            default_ms: 1000,
            by_name: [("long".to_string(), 10_000)].into(),
        });
        for t in 0..=10 {
            h.append(&l("long", "1"), t * 1000, 1.0);
            h.append(&l("short", "1"), t * 1000, 1.0);
        }
        h.prune(10_000);
        assert_eq!(h.sample_count(), 11 + 2);
    }

    #[test]
    fn first_sample_at_a_timestamp_wins() {
        let mut h = History::new(i64::MAX, 10);
        h.append(&l("a", "1"), 0, 1.0);
        h.append(&l("a", "1"), 0, 2.0);
        h.append(&l("a", "1"), 2, 3.0);
        h.append(&l("a", "1"), 1, 4.0);
        let sel = h.select(Some("a"), &[]);
        assert_eq!(sel[0].1.range(0, 5), vec![(0, 1.0), (1, 4.0), (2, 3.0)]);
    }
}
