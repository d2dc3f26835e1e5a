//! The history's own tests.

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
    assert_eq!(h.recount(), h.sample_count());
    h.truncate_after(1500);
    assert_eq!(h.recount(), h.sample_count());
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

fn key(series: u64) -> SeriesKey {
    SeriesKey {
        metric: 7,
        series,
        part: 0,
    }
}

/// A known key finds its series without its labels; a key seen for the first time builds
/// them once.
#[test]
fn known_series_are_found_by_key_without_their_labels() {
    let built = std::cell::Cell::new(0);
    let mut h = History::new(60_000, 100);
    for t in 0..5 {
        h.ingest(t * 1000, |out| {
            for port in ["1", "2"] {
                out.keyed(key(port.parse().unwrap()), t as f64, &|| {
                    built.set(built.get() + 1);
                    l("a", port)
                });
            }
        });
        h.prune(t * 1000);
    }
    assert_eq!(built.get(), 2, "labels built once per series");
    let sel = h.select(Some("a"), &[]);
    assert_eq!(sel.len(), 2);
    assert_eq!(
        sel[1].1.range(0, 9000),
        (0..5).map(|t| (t * 1000, t as f64)).collect::<Vec<_>>()
    );
    // A second key for the same labels (a series removed and created again) feeds the
    // same series, and is the one kept.
    h.ingest(5000, |out| {
        out.keyed(key(1), 5.0, &|| l("a", "1"));
        out.keyed(key(9), 5.0, &|| {
            built.set(built.get() + 1);
            l("a", "2")
        });
    });
    assert_eq!(built.get(), 3);
    assert_eq!(h.series_count(), 2);
    assert_eq!(h.by_key.len(), 2, "one key per series");
    assert_eq!(h.select(Some("a"), &[])[1].1.instant(5000, 1), Some(5.0));
}

/// A series that vanishes gets its marker, is forgotten, and its slot serves a new series
/// without the old one's key or staleness reaching it.
#[test]
fn vanished_keyed_series_go_stale_and_their_slot_is_reused() {
    let mut h = History::new(60_000, 100);
    h.ingest(1000, |out| {
        out.keyed(key(1), 1.0, &|| l("a", "1"));
        out.keyed(key(2), 2.0, &|| l("a", "2"));
    });
    h.ingest(2000, |out| out.keyed(key(1), 1.0, &|| l("a", "1")));
    let sel = h.select(Some("a"), &[]);
    assert_eq!(sel[1].1.instant(1500, LOOKBACK_MS), Some(2.0));
    assert_eq!(sel[1].1.instant(2000, LOOKBACK_MS), None, "stale");
    h.prune(2000);
    assert_eq!(h.series_count(), 1);
    assert!(
        !h.by_key.contains_key(&key(2)),
        "the key goes with its series"
    );
    h.ingest(3000, |out| {
        out.keyed(key(1), 1.0, &|| l("a", "1"));
        out.keyed(key(3), 3.0, &|| l("b", "3"));
    });
    assert_eq!(h.slots.len(), 2, "the freed slot is reused");
    assert_eq!(
        h.select(Some("b"), &[])[0].1.instant(3000, LOOKBACK_MS),
        Some(3.0)
    );
    // The old key comes back: a new series, not the forgotten one.
    h.ingest(4000, |out| {
        out.keyed(key(2), 4.0, &|| l("a", "2"));
        out.keyed(key(3), 3.0, &|| l("b", "3"));
    });
    let sel = h.select(Some("a"), &[]);
    assert_eq!(sel.len(), 2);
    assert_eq!(sel[0].1.instant(4000, LOOKBACK_MS), None, "a=1 went stale");
    assert_eq!(sel[1].1.range(0, 4000), vec![(4000, 4.0)]);
    assert_eq!(h.recount(), h.sample_count());
}

/// Over the series limit a keyed sample is dropped and counted, every tick, and takes
/// its place once there is room.
#[test]
fn keyed_series_over_the_limit_are_dropped_and_counted() {
    let mut h = History::new(60_000, 1);
    let tick = |h: &mut History, t: i64, both: bool| {
        h.ingest(t, |out| {
            if both {
                out.keyed(key(1), 1.0, &|| l("a", "1"));
            }
            out.keyed(key(2), 2.0, &|| l("a", "2"));
        });
        h.prune(t);
    };
    tick(&mut h, 0, true);
    tick(&mut h, 1000, true);
    assert_eq!(h.dropped_samples(), 2);
    // a=1 goes stale at 2 s (after a=2 was dropped once more) and is forgotten.
    tick(&mut h, 2000, false);
    tick(&mut h, 3000, false);
    assert_eq!(h.dropped_samples(), 3);
    let sel = h.select(Some("a"), &[]);
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].0, &l("a", "2"));
    assert_eq!(sel[0].1.range(0, 9000), vec![(3000, 2.0)]);
}
