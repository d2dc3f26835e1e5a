//! The rule evaluator against Prometheus itself: the same input series and the same
//! expressions go to `promtool test rules` (Debian's Prometheus 2.42) and to
//! `nodewatch test-rules`, with no expected samples, so both report what they computed. Both
//! print results the same way (labels, then the value in shortest round-trip form), so equal
//! text means equal label sets and bit-equal values. Alert rules are compared the same way:
//! firing alerts with their expanded labels and annotations at every evaluation.

mod common;

use std::{collections::BTreeMap, process::Command};

use common::{BIN, TempDir};

/// Series exercising counters with resets, gaps, staleness, NaN/Inf, sparse samples and
/// classic histograms, every 15 s for 10 minutes.
const INPUT: &str = r#"
      - series: 'c{job="a",port="80"}'
        values: '0+7x20 3+5x19'
      - series: 'c{job="a",port="81"}'
        values: '10+0.3x40'
      - series: 'c{job="b",port="80"}'
        values: '_x5 1+2.5x10 stale 100+1x20 _x3'
      - series: 'g{dev="x"}'
        values: '1 5 2 8 -3 4.5 0.1 0.2 0.3 1e-5 NaN 7 Inf -Inf 2 2 2 2 2 2 2 -1.5 0 0 3 9 27 81 243 729 0.5 0.25 1 2 3 4 5 6 7 8 9'
      - series: 'g{dev="y"}'
        values: '0.1+0.1x40'
      - series: 'g{dev="z"}'
        values: '3 _ _ _ 4 _x30 5'
      - series: 'h_bucket{dev="x",le="0.1"}'
        values: '0+1x40'
      - series: 'h_bucket{dev="x",le="0.5"}'
        values: '0+3x40'
      - series: 'h_bucket{dev="x",le="1"}'
        values: '0+4x20 80+7x20'
      - series: 'h_bucket{dev="x",le="+Inf"}'
        values: '0+5x20 100+9x20'
      - series: 'h_bucket{dev="y",le="0.25"}'
        values: '5x40'
      - series: 'h_bucket{dev="y",le="+Inf"}'
        values: '5x40'
      - series: 'h_bucket{dev="w",le="0.5"}'
        values: '0+2x40'
      - series: 'h_bucket{dev="w",le="1"}'
        values: '0+1x40'
      - series: 'h_bucket{dev="w",le="+Inf"}'
        values: '0+3x40'
      - series: 'h_bucket{dev="v",le="1"}'
        values: '0+3x40'
      - series: 'd{dev="x"}'
        values: '1+1x40'
      - series: 'up{job="a"}'
        values: '1x20 0x20'
      - series: 'info{job="a",version="v1"}'
        values: '1x40'
      - series: 'info{job="b",version="v2"}'
        values: '1x40'
      - series: 'ts{dev="x"}'
        values: '1709214300+86399x40'
      - series: 'ts{dev="y"}'
        values: '-1 NaN 1e300 4102444799 951782400 1 _x35'
"#;

/// Every supported function, aggregation and operator, with and without modifiers.
const EXPRS: &[&str] = &[
    // Selectors and the four matchers.
    "c",
    r#"c{job="a"}"#,
    r#"c{job!="a"}"#,
    r#"c{port=~"8."}"#,
    r#"c{port!~"80|9"}"#,
    r#"{__name__=~"c|g",job!="b"}"#,
    "g",
    // Range functions.
    "rate(c[1m])",
    "rate(c[2m])",
    "rate(c[5m])",
    "rate(c[37s])",
    "irate(c[1m])",
    "irate(c[37s])",
    "irate(g[1m])",
    "idelta(g[1m])",
    "idelta(c[2m])",
    "increase(c[1m])",
    "increase(c[3m])",
    "increase(c[10m])",
    "delta(g[2m])",
    "delta(c[1m])",
    "rate(g[1m])",
    "avg_over_time(g[1m])",
    "avg_over_time(g[3m])",
    "avg_over_time(c[10m])",
    "max_over_time(g[2m])",
    "max_over_time(g[10m])",
    "min_over_time(g[2m])",
    "min_over_time(g[10m])",
    "count_over_time(g[2m])",
    "count_over_time(c[10m])",
    // Histograms.
    "histogram_quantile(0.5, rate(h_bucket[2m]))",
    "histogram_quantile(0.9, rate(h_bucket[2m]))",
    "histogram_quantile(0.99, rate(h_bucket[1m]))",
    "histogram_quantile(0, rate(h_bucket[2m]))",
    "histogram_quantile(1, rate(h_bucket[2m]))",
    "histogram_quantile(-1, rate(h_bucket[2m]))",
    "histogram_quantile(2, rate(h_bucket[2m]))",
    "histogram_quantile(0.75, h_bucket)",
    "histogram_quantile(0.9, sum by (le) (rate(h_bucket[2m])))",
    "histogram_quantile(0.9, sum without (dev) (rate(h_bucket[2m])))",
    // Aggregations.
    "sum(c)",
    "sum by (job) (c)",
    "sum without (port) (c)",
    "sum(rate(c[1m]))",
    "max by (port) (rate(c[1m]))",
    "min(g)",
    "max(g)",
    "avg(g)",
    "avg by (job) (c)",
    "avg(c)",
    "count(c)",
    "count by (job) (c)",
    "count without (job, port) (c)",
    "sum(g)",
    // absent.
    r#"absent(c{job="zzz"})"#,
    "absent(c)",
    r#"absent(nope{a="b",c=~"d",e!="f"})"#,
    r#"absent(nope{a="b",a="c"})"#,
    "absent(sum(nope))",
    r#"absent(up{job="a"} == 1)"#,
    // Arithmetic.
    "c * 2",
    "2 - c",
    "c / 0",
    "-c / 0",
    "c % 7",
    "-c",
    "-(g)",
    "c + c",
    "g / g",
    "rate(c[1m]) / on(job, port) rate(c[2m])",
    "rate(c[1m]) - ignoring(port) sum without (port) (rate(c[1m]))",
    "sum by (job) (c) / on(job) count by (job) (c)",
    "1 + 2 * 3 - 4 / 8",
    "(1 + 2) % 2",
    "7 % -3",
    // Comparisons.
    "c > 50",
    "50 < c",
    "c > bool 50",
    "50 >= bool c",
    "g == 2",
    "g != bool 2",
    "c >= c",
    "c > bool c",
    "c < on(job, port) c",
    "1 < bool 2",
    "2 == bool 2",
    "g <= 0.3",
    "g > 5",
    // Set operations.
    r#"c and c{job="a"}"#,
    "c or g",
    r#"c{job="b"} or c{job="a"}"#,
    r#"c unless c{port="80"}"#,
    "c and on() g",
    r#"c and on(job) c{port="81"}"#,
    r#"c unless ignoring(port) c{port="81"}"#,
    r#"sum by (job) (rate(c[1m])) > 1 or sum by (job) (c) > 100"#,
    // Many-to-one and one-to-many matching, and their errors.
    "c * on(job) group_left(version) info",
    "c * on(job) group_left info",
    "info * on(job) group_right(version) c",
    "info * on(job) group_right c",
    "c / ignoring(port) group_left sum without (port) (c)",
    "c > on(job) group_left(version) info",
    "c > bool on(job) group_left(version) info",
    "c + on(job) group_left c",
    "c + on(job) group_right c",
    "c + on(job) info",
    "sum by (job) (c) * on(job) group_right(version) info",
    // Time, scalars and vectors.
    "time()",
    "time() - c",
    "vector(1)",
    "vector(time())",
    r#"scalar(g{dev="y"})"#,
    "scalar(c)",
    "c > bool scalar(up)",
    // Changes, derivatives, predictions.
    "changes(g[2m])",
    "changes(g[10m])",
    "changes(c[10m])",
    "resets(c[10m])",
    "deriv(g[2m])",
    "deriv(c[5m])",
    "deriv(d[1m])",
    "predict_linear(c[5m], 3600)",
    "predict_linear(g[2m], 60)",
    "predict_linear(d[3m], -30)",
    // Power and atan2.
    "g ^ 2",
    "2 ^ g",
    "c ^ 0.5",
    "g ^ g",
    "-2 ^ 0.5",
    "g atan2 c",
    // Aggregations with a parameter, and the rest.
    "topk(2, c)",
    "topk by (job) (1, c)",
    "bottomk(1, c)",
    "bottomk by (port) (1, rate(c[1m]))",
    "topk(0, c)",
    "quantile(0.5, g)",
    "quantile(0.9, c)",
    "quantile(2, c)",
    "quantile(-1, c)",
    "quantile by (job) (0.25, c)",
    "stddev(c)",
    "stdvar(g)",
    "stddev by (job) (c)",
    r#"count_values("value", g)"#,
    r#"count_values by (job) ("v", c)"#,
    r#"count_values without (port) ("v", c)"#,
    "group(c)",
    "group by (job) (c)",
    // More functions of a range.
    "last_over_time(g[1m])",
    "last_over_time(c[30s])",
    "quantile_over_time(0.5, g[2m])",
    "quantile_over_time(0.9, c[5m])",
    "stddev_over_time(g[2m])",
    "stdvar_over_time(c[5m])",
    "sum_over_time(g[2m])",
    "present_over_time(g[1m])",
    "absent_over_time(nope[1m])",
    "absent_over_time(g[1m])",
    // Functions of each value.
    "round(g)",
    "round(g, 0.5)",
    "round(c / 3, 10)",
    "abs(g)",
    "floor(g)",
    "ceil(g)",
    "clamp(g, 0, 5)",
    "clamp(g, 5, 0)",
    "clamp_min(g, 1)",
    "clamp_max(g, 2)",
    "sqrt(g)",
    "ln(c)",
    "exp(g)",
    "sgn(g)",
    // Dates.
    "day_of_week()",
    "hour()",
    "minute(ts)",
    "hour(ts)",
    "day_of_week(ts)",
    "day_of_month(ts)",
    "day_of_year(ts)",
    "days_in_month(ts)",
    "month(ts)",
    "year(ts)",
    // Labels.
    r#"label_replace(c, "p", "$1", "port", "(.)0")"#,
    r#"label_replace(c, "port", "", "port", "80")"#,
    r#"label_replace(c, "x", "${1}y$1y", "job", "(.*)")"#,
    r#"label_replace(c, "job", "x", "port", ".*")"#,
    r#"label_join(c, "jp", "-", "job", "port")"#,
    r#"label_join(c, "job", "", "nope")"#,
    // Offsets and subqueries.
    "c offset 1m",
    "rate(c[1m] offset 2m)",
    "c - c offset 5m",
    "sum_over_time(g[1m] offset 30s)",
    "max_over_time(rate(c[1m])[5m:1m])",
    "max_over_time(g[2m:])",
    "avg_over_time(c[3m:30s] offset 1m)",
    "rate(c[5m:15s])",
    "min_over_time(sum by (job) (c)[5m:45s])",
    "changes(up[10m:1m])",
    // Sample times.
    "timestamp(g)",
    "timestamp(g offset 1m)",
    "timestamp((c))",
    "timestamp(rate(c[1m]))",
    "time() - timestamp(g)",
];

const TIMES: &[&str] = &[
    "0s", "30s", "1m", "2m7s", "3m", "4m16s", "5m", "6m15s", "7m33s", "9m", "10m",
];

/// Rules compared by their alerts: recording rules feeding alerting rules, `for`,
/// `keep_firing_for`, templates (with `if`/`else if`/`else` and `with`, Go's truth of strings,
/// numbers, booleans and missing labels, trimming around them), and the same alert name in two
/// groups.
const RULES: &str = r#"
groups:
  - name: rec
    rules:
      - record: job:c:rate1m
        expr: sum by (job) (rate(c[1m]))
        labels:
          source: rec
      - alert: Busy
        expr: job:c:rate1m > 0.2
        for: 1m
        labels:
          severity: "{{ if true }}x{{ end }}"
  - name: alerts
    rules:
      - alert: High
        expr: c > 60
        for: 2m
        keep_firing_for: 1m
        labels:
          severity: warning
          port: 'p{{ $labels.port }}'
        annotations:
          summary: '{{ $labels.job }}/{{ $labels.port }} is {{ $value }}'
          human: '{{ $value | humanize }} {{ humanizePercentage $value }} {{ $value | humanizeDuration }}'
          printf: '{{ printf "%.3f|%5.1f|%g|%e|%v" $value $value $value $value $value }}'
          missing: '{{ $labels.nope }} {{ index $labels "job" | toUpper }} {{ title "a b" }}'
          if: '{{ if $labels.nope }}nope{{ else if $labels.port }}port {{ $labels.port }}{{ else if $labels.job }}job {{ $labels.job }}{{ else }}none{{ end }}'
          with: '{{ with $labels.port }}port {{ . }}{{ end }}{{ with $labels.nope }} never {{ . }}{{ else }} no nope{{ end }}{{ with $labels }} job {{ .job }}{{ .nope }}{{ end }}'
          truth: '{{ if $value }}v{{ end }}{{ if 0 }}0{{ end }}{{ if 0.0 }}0.0{{ end }}{{ if "" }}e{{ end }}{{ if false }}f{{ end }}{{ if $labels }}L{{ end }}{{ if $value | humanize }}h{{ end }}'
          nested: "{{ with $labels.port }}{{ with $labels.job }}{{ . }}{{ else }}{{ . }}{{ end }}:{{ . }}{{ end }}"
          trimmed: "a {{- with $labels.job }} {{ . }} {{- end }} b {{- if false }} x {{- else -}} \n y {{ end -}} z"
          cmp: '{{ if gt $value 60.0 }}gt{{ end }} {{ if lt $value 100.5 }}lt{{ end }} {{ if eq $labels.job "a" }}A{{ end }} {{ if ne $labels.port "80" }}not80{{ end }} {{ if le 1 2 }}le{{ end }} {{ if ge "b" "a" }}ge{{ end }} {{ eq $labels.job "x" "a" "b" }} {{ ge $value $value }} {{ eq true false }}'
          query: '{{ with query "sum(c)" }}{{ . | first | value | humanize }}{{ end }} {{ query "up" | first | label "job" }} {{ printf "sum(c{job=''%s''})" $labels.job | query | first | value }} {{ with query "nope" }}never{{ else }}empty{{ end }}'
          time: '{{ 1709214300.5 | humanizeTimestamp }} {{ $value | humanizeTimestamp }} {{ humanizeTimestamp "0.001" }} {{ -1.25 | humanizeTimestamp }}'
      - alert: GaugeOdd
        expr: g > 1 or g < -1
        annotations:
          v: '{{ $value }} {{ $value | humanize1024 }}'
          sign: '{{ if $value }}{{ with $labels.dev }}{{ . | toUpper }}{{ end }} {{ with $value }}{{ . | humanize }}{{ end }}{{ else }}zero{{ end }}'
      - alert: Overflow
        expr: increase(c[1m]) > 20
        keep_firing_for: 30s
      - alert: Sparse
        expr: sum by (job) (c) > 100 or up == 0
        labels:
          kind: '{{ with $labels.__name__ }}{{ . }}{{ else }}sum{{ end }}'
        annotations:
          which: '{{ if $labels.port }}port{{ else if $labels.job }}job {{ $labels.job }}{{ else }}none{{ end }}'
          zero: '{{ if $value }}nonzero {{ $value }}{{ else }}zero{{ end }}'
"#;

fn rule_tests(times: &[&str]) -> String {
    let mut t = String::new();
    for time in times {
        for name in ["Busy", "High", "GaugeOdd", "Overflow", "Sparse"] {
            t.push_str(&format!(
                "      - eval_time: {time}\n        alertname: {name}\n        exp_alerts: []\n"
            ));
        }
    }
    t
}

/// Runs a tool and returns its reports keyed by their first line (`expr: ..., time: ...` or
/// `alertname: ..., time: ...`), with what it said it got.
fn reports(cmd: &mut Command) -> (BTreeMap<String, String>, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut map = BTreeMap::new();
    let mut key: Option<String> = None;
    let mut body = String::new();
    let mut flush = |key: &mut Option<String>, body: &mut String| {
        if let Some(k) = key.take() {
            map.insert(k, std::mem::take(body));
        }
    };
    for line in err.lines() {
        let t = line.trim_start();
        if t.starts_with("expr: ") || t.starts_with("alertname: ") || t.starts_with("rule: ") {
            flush(&mut key, &mut body);
            // `expr: "c", time: 1m,` / `alertname: X, time: 1m, `
            let k = t.split(", err:").next().unwrap_or(t);
            key = Some(k.trim_end_matches([',', ' ']).to_string());
            if let Some(e) = t.split_once(", err: ") {
                body.push_str(&format!("error: {}\n", e.1));
            }
        } else if key.is_some() && !t.starts_with("exp:") && !t.is_empty() && t != "FAILED:" {
            body.push_str(t);
            body.push('\n');
        }
    }
    flush(&mut key, &mut body);
    (map, err)
}

fn have_promtool() -> bool {
    let ok = Command::new("promtool").arg("--version").output().is_ok();
    if !ok {
        assert!(std::env::var("CI").is_err(), "promtool missing on CI");
        eprintln!("SKIPPED: promtool not installed (cargo xtask setup installs it)");
    }
    ok
}

/// `{labels} value, {labels} value` as promtool prints it.
fn parse_got(line: &str) -> Option<Vec<(String, f64)>> {
    let rest = line.trim().strip_prefix("got: ")?;
    if rest == "nil" {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let close = rest.find("} ")?;
        let labels = rest[..=close].to_string();
        let after = &rest[close + 2..];
        let end = after.find(", {").unwrap_or(after.len());
        out.push((labels, after[..end].parse().ok()?));
        rest = after[end..].trim_start_matches(", ");
    }
    Some(out)
}

/// Prometheus sums in the order its storage created the series, which promtool's loader
/// randomizes (run it twice: the last bits of `sum`/`avg` over three or more series change).
/// Those results are equal up to summation order. Go computes `^`, `ln` and `exp` in its own
/// code, nodewatch with the C library: those may differ in the last bit. Everything else must
/// be bit-equal.
fn order_dependent(key: &str) -> bool {
    [
        "sum",
        "avg(",
        "avg by",
        "job:c:rate1m",
        "stddev(",
        "stddev by",
        "stdvar(",
        "^",
        "ln(",
        "exp(",
    ]
    .iter()
    .any(|a| key.contains(a))
}

fn close_enough(p: &str, o: &str) -> bool {
    let (Some(a), Some(b)) = (parse_got(p), parse_got(o)) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(&b).all(|((la, va), (lb, vb))| {
            la == lb
                && (va == vb
                    || (va.is_nan() && vb.is_nan())
                    || (va - vb).abs() <= 1e-12 * va.abs().max(vb.abs()))
        })
}

/// Which two series an ambiguous-matching error names depends on the storage's series order,
/// which promtool randomizes: the pair is left out of the comparison.
fn unordered_pairs(m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| {
            let v = match (v.find("operation: ["), v.find("];")) {
                (Some(a), Some(b)) if a < b => format!("{}[..]{}", &v[..a + 11], &v[b + 1..]),
                _ => v,
            };
            (k, v)
        })
        .collect()
}

/// Compares the two tools on one test file: (reports, of which errors, of which equal only up
/// to summation order).
fn compare(dir: &TempDir, test_file: &str) -> (usize, usize, usize) {
    let path = dir.0.join(test_file);
    let (prom, prom_raw) = reports(Command::new("promtool").args(["test", "rules"]).arg(&path));
    let (ours, ours_raw) = reports(Command::new(BIN).arg("test-rules").arg(&path));
    assert!(!prom.is_empty(), "promtool reported nothing:\n{prom_raw}");
    let (prom, ours) = (unordered_pairs(prom), unordered_pairs(ours));
    let mut differ = Vec::new();
    let mut reordered = 0;
    let keys: std::collections::BTreeSet<&String> = prom.keys().chain(ours.keys()).collect();
    for key in keys {
        let (p, o) = (prom.get(key), ours.get(key));
        if p == o {
            continue;
        }
        if let (Some(p), Some(o)) = (p, o)
            && order_dependent(key)
            && close_enough(p, o)
        {
            reordered += 1;
            continue;
        }
        differ.push(format!(
            "{key}\n  prometheus: {}\n  nodewatch:  {}",
            p.map_or("(nothing: empty result)".into(), |s| s
                .replace('\n', "\n              ")),
            o.map_or("(nothing: empty result)".into(), |s| s
                .replace('\n', "\n              "))
        ));
    }
    assert!(
        differ.is_empty(),
        "{} of {} results differ from Prometheus:\n{}\n\n--- promtool stderr ---\n{prom_raw}\n--- nodewatch stderr ---\n{ours_raw}",
        differ.len(),
        prom.len(),
        differ.join("\n")
    );
    let errors = prom.values().filter(|v| v.starts_with("error:")).count();
    (prom.len(), errors, reordered)
}

#[test]
fn expressions_evaluate_exactly_as_prometheus_does() {
    if !have_promtool() {
        return;
    }
    let dir = TempDir::new("vs-prom-expr");
    let mut tests = String::new();
    for e in EXPRS {
        for t in TIMES {
            tests.push_str(&format!(
                "      - expr: '{}'\n        eval_time: {t}\n        exp_samples: []\n",
                e.replace('\'', "''")
            ));
        }
    }
    dir.write(
        "expr_test.yaml",
        &format!(
            "tests:\n  - interval: 15s\n    input_series:{INPUT}    promql_expr_test:\n{tests}"
        ),
    );
    let (n, errors, reordered) = compare(&dir, "expr_test.yaml");
    eprintln!(
        "{} expressions x {} instants: {n} non-empty results equal to Prometheus's: {} bit for bit, {reordered} sums up to summation order; {errors} evaluation errors, the same",
        EXPRS.len(),
        TIMES.len(),
        n - reordered
    );
    assert!(
        n > EXPRS.len() * TIMES.len() * 3 / 4,
        "too many empty results: {n}"
    );
}

#[test]
fn errors_match_prometheus() {
    if !have_promtool() {
        return;
    }
    // Ambiguous matching and duplicate label sets: both refuse, with the same message.
    let dir = TempDir::new("vs-prom-err");
    let mut tests = String::new();
    for e in [
        "c + on(job) c",
        "c * ignoring(port, job) c",
        "{__name__=~\"d|g\"} * 2",
        "-{__name__=~\"d|g\"}",
        "rate({__name__=~\"d|g\"}[1m])",
    ] {
        tests.push_str(&format!(
            "      - expr: '{e}'\n        eval_time: 5m\n        exp_samples: []\n"
        ));
    }
    dir.write(
        "err_test.yaml",
        &format!(
            "tests:\n  - interval: 15s\n    input_series:{INPUT}    promql_expr_test:\n{tests}"
        ),
    );
    let (n, errors, _) = compare(&dir, "err_test.yaml");
    assert_eq!((n, errors), (5, 5));
}

#[test]
fn alerts_and_recording_rules_match_prometheus() {
    if !have_promtool() {
        return;
    }
    let dir = TempDir::new("vs-prom-alerts");
    dir.write("rules.yaml", RULES);
    let times: Vec<String> = (0..=40).map(|i| format!("{}s", i * 15)).collect();
    let times: Vec<&str> = times.iter().map(String::as_str).collect();
    dir.write(
        "alert_test.yaml",
        &format!(
            "rule_files: [rules.yaml]\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    external_labels: {{ node: n1 }}\n    input_series:{INPUT}    alert_rule_test:\n{}    promql_expr_test:\n      - expr: 'job:c:rate1m'\n        eval_time: 5m\n        exp_samples: []\n      - expr: 'ALERTS'\n        eval_time: 7m\n        exp_samples: []\n",
            rule_tests(&times)
        ),
    );
    let (n, _, _) = compare(&dir, "alert_test.yaml");
    eprintln!("{n} alert/recording checks with firing alerts, all equal to Prometheus's");
    assert!(n > 40, "too few firing alerts to compare: {n}");
}

#[test]
fn template_outside_the_subset_is_refused_with_its_place() {
    let dir = TempDir::new("vs-prom-tmpl");
    let path = dir.write(
        "rules.yaml",
        &RULES.replace("{{ if true }}x{{ end }}", "{{ range $labels }}x{{ end }}"),
    );
    let out = Command::new(BIN)
        .arg("check-rules")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "rules.yaml:13:25: alert \"Busy\": label \"severity\": unsupported template action `range`"
        ),
        "{err}"
    );
}

/// What nodewatch accepts, promtool accepts too: every expression of the comparison as a rule,
/// and the template functions nodewatch supports.
#[test]
fn everything_nodewatch_accepts_passes_promtool_check_rules() {
    if !have_promtool() {
        return;
    }
    let dir = TempDir::new("vs-prom-check");
    let mut text = String::from("groups:\n  - name: all\n    rules:\n");
    for (i, e) in EXPRS.iter().enumerate() {
        text.push_str(&format!(
            "      - record: r{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let a = dir.write("exprs.yaml", &text);
    let b = dir.write("templates.yaml", RULES);
    for f in [&a, &b] {
        let ours = Command::new(BIN)
            .arg("check-rules")
            .arg(f)
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let prom = Command::new("promtool")
            .args(["check", "rules"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            prom.status.success(),
            "promtool refuses what nodewatch accepts:\n{}{}",
            String::from_utf8_lossy(&prom.stdout),
            String::from_utf8_lossy(&prom.stderr)
        );
    }
}

/// PromQL that Prometheus evaluates but nodewatch does not: refused at load, naming the
/// construct (promtool accepts all of these).
#[test]
fn outside_the_subset_is_refused_but_valid_for_prometheus() {
    if !have_promtool() {
        return;
    }
    let dir = TempDir::new("vs-prom-subset");
    for (expr, construct) in [
        (
            "histogram_count(c)",
            "unsupported function `histogram_count`",
        ),
        ("max_over_time(c[5m:1m] @ 100)", "unsupported `@` modifier"),
        ("c @ 100", "unsupported `@` modifier"),
    ] {
        let f = dir.write(
            "r.yaml",
            &format!(
                "groups:\n  - name: g\n    rules:\n      - record: r\n        expr: '{expr}'\n"
            ),
        );
        let prom = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            prom.status.success(),
            "{expr}: {}",
            String::from_utf8_lossy(&prom.stdout)
        );
        let ours = Command::new(BIN)
            .arg("check-rules")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&ours.stderr);
        assert_eq!(ours.status.code(), Some(1), "{expr}");
        assert!(
            err.contains(":5:") && err.contains(construct),
            "{expr}: {err}"
        );
    }
}

/// What promtool reads and a strict YAML reader might not: a test without `eval_time` (read as
/// 0) and a quoted annotation continued at its key's indent (Go's YAML accepts it). Both tools
/// give the same verdict, passing and failing.
#[test]
fn test_files_as_go_reads_them_get_promtools_verdict() {
    if !have_promtool() {
        return;
    }
    let dir = TempDir::new("vs-prom-go-yaml");
    dir.write(
        "r.yaml",
        "groups:\n  - name: g\n    rules:\n      - alert: Up\n        expr: up == 1\n        annotations:\n          description: \"first line\n          continued at the key's indent\"\n          summary: 'it''s\n          quoted'\n",
    );
    for (name, value, pass) in [("good", "1", true), ("bad", "2", false)] {
        let f = dir.write(
            &format!("{name}_test.yaml"),
            &format!(
                "rule_files: [r.yaml]\ntests:\n  - input_series:\n      - series: 'up{{job=\"a\"}}'\n        values: '1'\n    alert_rule_test:\n      - alertname: Up\n        exp_alerts:\n          - exp_labels: {{job: a}}\n            exp_annotations:\n              description: first line continued at the key's indent\n              summary: it's quoted\n    promql_expr_test:\n      - expr: up\n        exp_samples:\n          - labels: 'up{{job=\"a\"}}'\n            value: {value}\n"
            ),
        );
        for cmd in [
            Command::new("promtool").args(["test", "rules"]).arg(&f),
            Command::new(BIN).arg("test-rules").arg(&f),
        ] {
            let out = cmd.output().unwrap();
            assert_eq!(
                out.status.success(),
                pass,
                "{cmd:?} on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
