//! One scrape's body turned into samples for the rules: the Prometheus text format or
//! OpenMetrics (read by `openmetrics-parser`), each series named as Prometheus names it
//! (`_total`, `_bucket{le}`, `_sum`, `_count`, `{quantile}`) with the target's `job` and
//! `instance` added. `_created` series and timestamps are left out: every sample is taken at
//! the tick that reads it.

use openmetrics_parser::{
    HistogramValue, MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue,
    PrometheusType, PrometheusValue, RenderableMetricValue, SummaryValue,
};

use super::Failure;
use crate::store::{Labels, labels::METRIC_NAME};

/// The target labels every sample of a target carries.
pub struct Target<'a> {
    pub job: &'a str,
    pub instance: &'a str,
}

impl Target<'_> {
    /// The label set of a series: its own labels, then `job` and `instance`; a series'
    /// own `job` or `instance` is kept as `exported_job` / `exported_instance`, as Prometheus
    /// does (`honor_labels: false`).
    fn labels<'n>(&self, name: &str, own: impl Iterator<Item = (&'n str, &'n str)>) -> Labels {
        let mut l = Labels::with_capacity(6);
        for (k, v) in own {
            match k {
                "job" | "instance" => l.set(format!("exported_{k}"), v.to_string()),
                _ => l.set(k.to_string(), v.to_string()),
            }
        }
        l.set(METRIC_NAME.into(), name.to_string());
        l.set("job".into(), self.job.to_string());
        l.set("instance".into(), self.instance.to_string());
        l
    }
}

/// How many samples the text holds: its lines that are neither comments nor blank, less the
/// `_created` ones. Counted before parsing, so a body far over the limit costs a pass over
/// its bytes and nothing more.
pub fn count_samples(text: &str) -> usize {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            if l.is_empty() || l.starts_with('#') {
                return false;
            }
            !sample_name(l).ends_with("_created")
        })
        .count()
}

/// Whether the body is OpenMetrics: its last line is `# EOF`, which the Prometheus text
/// format never has and OpenMetrics always does.
fn is_openmetrics(text: &str) -> bool {
    text.trim_end().lines().next_back() == Some("# EOF")
}

/// The sample name of a sample line.
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ', '\t']).next().unwrap_or("")
}

/// Suffixes a family's samples may add to its name.
const SUFFIXES: &[&str] = &[
    "_bucket", "_sum", "_count", "_total", "_created", "_info", "_gsum", "_gcount",
];

/// The text with a `# TYPE <name> untyped` line before each sample that starts a family of
/// its own without one. Both formats let a family go undescribed, but the parser takes
/// samples after a family's descriptor as that family's and refuses another name. Borrowed
/// when nothing is missing (as with node_exporter, prometheus_client and most exporters).
fn describe_bare_samples(text: &str) -> std::borrow::Cow<'_, str> {
    let belongs = |family: &str, name: &str| {
        name == family
            || name
                .strip_prefix(family)
                .is_some_and(|rest| SUFFIXES.contains(&rest))
    };
    let mut family: Option<&str> = None;
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let l = line.trim_start();
        if let Some(rest) = l
            .strip_prefix("# TYPE ")
            .or_else(|| l.strip_prefix("# HELP "))
        {
            family = rest.split_whitespace().next();
            continue;
        }
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let name = sample_name(l);
        if family.is_some_and(|f| belongs(f, name)) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
        o.push_str(&text[done..start]);
        o.push_str("# TYPE ");
        o.push_str(name);
        o.push_str(" untyped\n");
        done = start;
        family = Some(name);
    }
    match out {
        None => std::borrow::Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[done..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// Parses a whole body. A body with more than `limit` samples fails without being parsed.
pub fn parse(
    body: &[u8],
    target: &Target<'_>,
    limit: usize,
) -> Result<Vec<(Labels, f64)>, Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Failure::Parse(format!("the body is not UTF-8: {e}")))?;
    let found = count_samples(text);
    if found > limit {
        return Err(Failure::SampleLimit { found, limit });
    }
    if found == 0 {
        // The grammar wants a family; a target with nothing to say has said it.
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(found);
    let text = &*describe_bare_samples(text);
    let om = is_openmetrics(text);
    match pieces(text, om) {
        None => parse_one(text, om, target, &mut out)?,
        Some(pieces) => {
            for p in &pieces {
                parse_one(p, om, target, &mut out)?;
            }
        }
    }
    if out.len() > limit {
        return Err(Failure::SampleLimit {
            found: out.len(),
            limit,
        });
    }
    Ok(out)
}

/// Parses one exposition (all of a body, or one of its [`pieces`]).
fn parse_one(
    text: &str,
    om: bool,
    target: &Target<'_>,
    out: &mut Vec<(Labels, f64)>,
) -> Result<(), Failure> {
    if om {
        let exp = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .map_err(|e| Failure::Parse(one_line(&e.to_string())))?;
        convert(&exp, target, out, om_value);
    } else {
        let exp = openmetrics_parser::prometheus::parse_prometheus(text)
            .map_err(|e| Failure::Parse(one_line(&e.to_string())))?;
        convert(&exp, target, out, prom_value);
    }
    Ok(())
}

/// Most samples of one family the parser is given at once.
const PIECE: usize = 500;

/// The text cut into expositions of their own where a family of single-value samples (gauge,
/// untyped, and Prometheus-text counters) has more than [`PIECE`] samples, each piece after
/// the first starting with the family's `# HELP`/`# TYPE` lines again (and every piece of an
/// OpenMetrics body ending in `# EOF`): the parser checks each new sample against every one
/// of its family before it, so one family of 10 000 samples took 1.1 s where 100 families of
/// 100 took 0.04 s. `None` when no family is that large (the common case: no copy).
fn pieces(text: &str, om: bool) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut descriptors = String::new();
    let mut family: Option<&str> = None;
    let mut splittable = true;
    let mut in_family = 0;
    let mut cut = false;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start();
        if l.trim_end() == "# EOF" {
            continue;
        }
        let descriptor = l
            .strip_prefix("# TYPE ")
            .or_else(|| l.strip_prefix("# HELP "));
        if let Some(rest) = descriptor {
            let mut words = rest.split_whitespace();
            let name = words.next();
            if name != family {
                descriptors.clear();
                family = name;
                in_family = 0;
                splittable = true;
            }
            if l.starts_with("# TYPE ") {
                let t = words.next().unwrap_or("");
                splittable =
                    matches!(t, "gauge" | "untyped" | "unknown") || (!om && t == "counter");
            }
            descriptors.push_str(line);
        } else if !l.starts_with('#') && !l.trim().is_empty() {
            if in_family >= PIECE && splittable {
                if om {
                    cur.push_str("# EOF\n");
                }
                out.push(std::mem::take(&mut cur));
                cur.push_str(&descriptors);
                in_family = 0;
                cut = true;
            }
            in_family += 1;
        }
        cur.push_str(line);
    }
    if !cut {
        return None;
    }
    if om {
        cur.push_str("# EOF\n");
    }
    out.push(cur);
    Some(out)
}

/// pest's messages span lines (a caret under the place); the log and the failure reason
/// take one.
fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.trim_matches(['|', '^', '-', ' ']).len() > 1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one family's sample adds: `(name suffix, extra label, value)` triples.
type Emit<'a> = &'a mut dyn FnMut(&str, Option<(&str, String)>, f64);

fn convert<T: Clone, V: RenderableMetricValue + Clone>(
    exp: &MetricsExposition<T, V>,
    target: &Target<'_>,
    out: &mut Vec<(Labels, f64)>,
    value: fn(&str, &T, &V, Emit<'_>),
) {
    for family in exp.families.values() {
        emit_family(family, target, out, value);
    }
}

fn emit_family<T: Clone, V: RenderableMetricValue + Clone>(
    family: &MetricFamily<T, V>,
    target: &Target<'_>,
    out: &mut Vec<(Labels, f64)>,
    value: fn(&str, &T, &V, Emit<'_>),
) {
    let names = family.get_label_names();
    let base = &family.family_name;
    for sample in family.iter_samples() {
        let Ok(set) = sample.get_labelset() else {
            continue;
        };
        let own: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        debug_assert_eq!(own.len(), names.len());
        let mut push = |suffix: &str, extra: Option<(&str, String)>, v: f64| {
            let mut l = target.labels(&format!("{base}{suffix}"), own.iter().copied());
            if let Some((k, val)) = extra {
                l.set(k.to_string(), val);
            }
            out.push((l, v));
        };
        value(base, &family.family_type, &sample.value, &mut push);
    }
}

/// A bound or quantile as a label value, written as Prometheus writes it (`0.5`, `1.0`,
/// `+Inf`).
fn float_label(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        dtoa::Buffer::new().format(v).to_string()
    }
}

fn histogram(h: &HistogramValue, bucket: &str, sum: &str, count: &str, emit: Emit<'_>) {
    for b in &h.buckets {
        emit(
            bucket,
            Some(("le", float_label(b.upper_bound))),
            b.count.as_f64(),
        );
    }
    if let Some(s) = &h.sum {
        emit(sum, None, s.as_f64());
    }
    if let Some(c) = h.count {
        emit(count, None, c as f64);
    }
}

fn summary(s: &SummaryValue, emit: Emit<'_>) {
    for q in &s.quantiles {
        emit(
            "",
            Some(("quantile", float_label(q.quantile))),
            q.value.as_f64(),
        );
    }
    if let Some(v) = &s.sum {
        emit("_sum", None, v.as_f64());
    }
    if let Some(c) = s.count {
        emit("_count", None, c as f64);
    }
}

/// Prometheus text: a family is named as its samples (a counter `x_total` is family
/// `x_total`).
fn prom_value(_: &str, _: &PrometheusType, v: &PrometheusValue, emit: Emit<'_>) {
    match v {
        PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => emit("", None, n.as_f64()),
        PrometheusValue::Counter(c) => emit("", None, c.value.as_f64()),
        PrometheusValue::Histogram(h) => histogram(h, "_bucket", "_sum", "_count", emit),
        PrometheusValue::Summary(s) => summary(s, emit),
    }
}

/// OpenMetrics: a counter family `x` has the sample `x_total`, an info family `x` the
/// sample `x_info`; a stateset's state is already a label of its sample.
fn om_value(_: &str, _: &OpenMetricsType, v: &OpenMetricsValue, emit: Emit<'_>) {
    match v {
        OpenMetricsValue::Unknown(n)
        | OpenMetricsValue::Gauge(n)
        | OpenMetricsValue::StateSet(n) => emit("", None, n.as_f64()),
        OpenMetricsValue::Counter(c) => emit("_total", None, c.value.as_f64()),
        OpenMetricsValue::Histogram(h) => histogram(h, "_bucket", "_sum", "_count", emit),
        OpenMetricsValue::GaugeHistogram(h) => histogram(h, "_bucket", "_gsum", "_gcount", emit),
        OpenMetricsValue::Info => emit("_info", None, 1.0),
        OpenMetricsValue::Summary(s) => summary(s, emit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target {
        job: "vllm",
        instance: "127.0.0.1:8000",
    };

    fn sorted(text: &str) -> Vec<String> {
        let mut v: Vec<String> = parse(text.as_bytes(), &T, 100)
            .unwrap()
            .into_iter()
            .map(|(l, v)| format!("{l} {v}"))
            .collect();
        v.sort();
        v
    }

    /// vLLM's names (with colons), as Python's prometheus_client writes them.
    #[test]
    fn prometheus_text_with_colons() {
        let text = "# HELP vllm:num_requests_waiting Waiting.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 7.0\n# HELP vllm:prompt_tokens_total Tokens.\n# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name=\"m\"} 12.0\n# HELP vllm:time_to_first_token_seconds TTFT.\n# TYPE vllm:time_to_first_token_seconds histogram\nvllm:time_to_first_token_seconds_bucket{le=\"0.1\",model_name=\"m\"} 1.0\nvllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 3.0\nvllm:time_to_first_token_seconds_count{model_name=\"m\"} 3.0\nvllm:time_to_first_token_seconds_sum{model_name=\"m\"} 0.9\nup_like{job=\"other\",instance=\"x\"} 1\n";
        assert_eq!(
            sorted(text),
            [
                r#"{__name__="up_like", exported_instance="x", exported_job="other", instance="127.0.0.1:8000", job="vllm"} 1"#,
                r#"{__name__="vllm:num_requests_waiting", instance="127.0.0.1:8000", job="vllm", model_name="m"} 7"#,
                r#"{__name__="vllm:prompt_tokens_total", instance="127.0.0.1:8000", job="vllm", model_name="m"} 12"#,
                r#"{__name__="vllm:time_to_first_token_seconds_bucket", instance="127.0.0.1:8000", job="vllm", le="+Inf", model_name="m"} 3"#,
                r#"{__name__="vllm:time_to_first_token_seconds_bucket", instance="127.0.0.1:8000", job="vllm", le="0.1", model_name="m"} 1"#,
                r#"{__name__="vllm:time_to_first_token_seconds_count", instance="127.0.0.1:8000", job="vllm", model_name="m"} 3"#,
                r#"{__name__="vllm:time_to_first_token_seconds_sum", instance="127.0.0.1:8000", job="vllm", model_name="m"} 0.9"#,
            ]
        );
    }

    #[test]
    fn openmetrics_counters_info_and_created() {
        let text = "# TYPE tgi_request_count counter\ntgi_request_count_total 5\ntgi_request_count_created 1.7e9\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# TYPE q summary\nq{quantile=\"0.99\"} 0.2\nq_sum 1\nq_count 4\n# EOF\n";
        assert_eq!(count_samples(text), 5);
        assert_eq!(
            sorted(text),
            [
                r#"{__name__="build_info", instance="127.0.0.1:8000", job="vllm", version="1"} 1"#,
                r#"{__name__="q", instance="127.0.0.1:8000", job="vllm", quantile="0.99"} 0.2"#,
                r#"{__name__="q_count", instance="127.0.0.1:8000", job="vllm"} 4"#,
                r#"{__name__="q_sum", instance="127.0.0.1:8000", job="vllm"} 1"#,
                r#"{__name__="tgi_request_count_total", instance="127.0.0.1:8000", job="vllm"} 5"#,
            ]
        );
    }

    /// What Python's prometheus_client 0.26 (vLLM's) answered to the agent's `Accept`:
    /// OpenMetrics with names unescaped, `_created` series, `# EOF`.
    #[test]
    fn prometheus_client_openmetrics() {
        let got = sorted(include_str!("prometheus_client_0.26.om"));
        assert_eq!(got.len(), 8, "{got:#?}");
        for want in [
            r#"{__name__="vllm:num_requests_waiting", instance="127.0.0.1:8000", job="vllm", model_name="meta-llama/Llama-3.1-8B-Instruct"} 12"#,
            r#"{__name__="vllm:prompt_tokens_total", instance="127.0.0.1:8000", job="vllm", model_name="meta-llama/Llama-3.1-8B-Instruct"} 100"#,
            r#"{__name__="vllm:time_to_first_token_seconds_bucket", instance="127.0.0.1:8000", job="vllm", le="5.0", model_name="meta-llama/Llama-3.1-8B-Instruct"} 2"#,
        ] {
            assert!(got.iter().any(|g| g == want), "{want}: {got:#?}");
        }
    }

    /// A family of many samples is parsed in pieces, with the same result.
    #[test]
    fn large_families_are_parsed_in_pieces() {
        for om in [false, true] {
            let mut text = String::from("# HELP big Many.\n# TYPE big gauge\n");
            for i in 0..1234 {
                text.push_str(&format!("big{{i=\"{i}\"}} {i}\n"));
            }
            text.push_str("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n");
            if om {
                text.push_str("# EOF\n");
            }
            let p = pieces(&text, om).unwrap();
            assert_eq!(p.len(), 3);
            assert!(p[1].starts_with("# HELP big Many.\n# TYPE big gauge\nbig{i=\"500\"} 500\n"));
            assert_eq!(p.iter().all(|p| p.ends_with("# EOF\n")), om);
            let got = parse(text.as_bytes(), &T, 2000).unwrap();
            assert_eq!(got.len(), 1234 + 3);
            assert!(
                got.iter()
                    .any(|(l, v)| l.get("i") == Some("1233") && *v == 1233.0)
            );
        }
        assert!(pieces("# TYPE a gauge\na 1\n", false).is_none());
    }

    #[test]
    fn undescribed_families_are_their_own() {
        assert_eq!(
            describe_bare_samples("# TYPE a counter\na_total 1\n"),
            "# TYPE a counter\na_total 1\n"
        );
        assert_eq!(
            describe_bare_samples(
                "a 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\nb{x=\"1\"} 2\n"
            ),
            "# TYPE a untyped\na 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n# TYPE b untyped\nb{x=\"1\"} 2\n"
        );
        assert_eq!(
            sorted("a 1\nb 2\n"),
            [
                r#"{__name__="a", instance="127.0.0.1:8000", job="vllm"} 1"#,
                r#"{__name__="b", instance="127.0.0.1:8000", job="vllm"} 2"#,
            ]
        );
    }

    #[test]
    fn over_the_limit_and_broken_bodies_fail() {
        let text: String = (0..101).map(|i| format!("x{{i=\"{i}\"}} 1\n")).collect();
        match parse(text.as_bytes(), &T, 100) {
            Err(Failure::SampleLimit { found, limit }) => assert_eq!((found, limit), (101, 100)),
            other => panic!("{other:?}"),
        }
        match parse(b"x{a=\"1\" 1\n", &T, 100) {
            Err(Failure::Parse(msg)) => assert!(
                !msg.contains('\n') && msg.contains("expected labels"),
                "{msg}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(b"\xff\n", &T, 100), Err(Failure::Parse(_))));
        assert!(parse(b"", &T, 100).unwrap().is_empty());
    }
}
