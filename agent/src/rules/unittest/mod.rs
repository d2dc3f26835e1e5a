//! Rule unit tests in the `promtool test rules` format, run the way promtool 2.42 runs them:
//! input series in expanding notation loaded every `interval` from time 0, all groups evaluated
//! every `evaluation_interval`, firing alerts compared at each `eval_time`, and expressions
//! evaluated afterwards. Reports read like promtool's.

pub mod notation;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use self::notation::{parse_metric, parse_values};
use super::{
    engine::Engine,
    file::{self, GroupDef, Kind},
    promql::{
        duration,
        eval::{Evaluator, Sample},
        subset,
    },
    template::gofmt,
};
use crate::{
    alerts::State,
    store::{
        history::History,
        labels::{Labels, go_quote},
    },
    yaml,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    /// promtool reads a missing `eval_time` as 0.
    #[serde(default = "zero")]
    eval_time: String,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    /// promtool reads a missing `eval_time` as 0.
    #[serde(default = "zero")]
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// Runs every test file, printing as promtool does; true when all passed.
pub fn run_files(files: &[PathBuf]) -> bool {
    let mut ok = true;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    for f in files {
        let _ = writeln!(stdout.lock(), "Unit Testing:  {}", f.display());
        match run_file(f) {
            Ok(()) => {
                let _ = writeln!(stdout.lock(), "  SUCCESS");
            }
            Err(errs) => {
                ok = false;
                let _ = writeln!(stderr.lock(), "  FAILED:");
                for e in errs {
                    let _ = writeln!(stderr.lock(), "{e}");
                    let _ = writeln!(stdout.lock());
                }
            }
        }
        let _ = writeln!(stdout.lock());
    }
    ok
}

/// Runs one test file; the errors are promtool's messages.
pub fn run_file(path: &Path) -> Result<(), Vec<String>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{name}: {e}")])?;
    let base = path.parent().unwrap_or(Path::new("."));
    run_text(&name, &text, Rules::Files(base), usize::MAX)
}

/// Where a test file's rules come from.
pub enum Rules<'a> {
    /// Its `rule_files`, relative to this folder (what `test-rules` does).
    Files(&'a Path),
    /// These groups, whatever `rule_files` says (the fuzz target: no file access).
    Given(&'a [GroupDef]),
}

/// Runs the tests of one test file's text (`name` only names it in messages); a test group
/// stops with an error after `max_evaluations` rule evaluations.
pub fn run_text(
    name: &str,
    text: &str,
    rules: Rules<'_>,
    max_evaluations: usize,
) -> Result<(), Vec<String>> {
    let tf: TestFile = yaml::parse(name, text).map_err(|e| vec![e.to_string()])?;
    let groups = match rules {
        Rules::Given(g) => Ok(g.to_vec()),
        Rules::Files(base) => load_rules(&tf, base)?,
    };
    let eval_interval = match &tf.evaluation_interval {
        Some(d) => duration::parse(d).map_err(|e| vec![format!("evaluation_interval: {e}")])?,
        None => 60_000,
    };
    let mut order = BTreeMap::new();
    for (i, g) in tf.group_eval_order.iter().enumerate() {
        if order.insert(g.clone(), i).is_some() {
            return Err(vec![format!(
                "group name repeated in evaluation order: {g}"
            )]);
        }
    }
    let mut errs = Vec::new();
    for tg in &tf.tests {
        let run = Run {
            eval_interval,
            order: &order,
            groups: &groups,
            max_evaluations,
        };
        errs.extend(try_group(tg, &run).unwrap_or_else(|e| e));
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// Loads the rule files a test file names; a file that does not load is reported by every
/// test group, as promtool does.
#[allow(clippy::type_complexity)]
fn load_rules(
    tf: &TestFile,
    base: &Path,
) -> Result<Result<Vec<GroupDef>, Vec<String>>, Vec<String>> {
    let mut rule_files = Vec::new();
    for rf in &tf.rule_files {
        let full = if Path::new(rf).is_absolute() {
            PathBuf::from(rf)
        } else {
            base.join(rf)
        };
        let matched: Vec<PathBuf> = glob::glob(&full.display().to_string())
            .map_err(|e| vec![e.to_string()])?
            .filter_map(Result::ok)
            .collect();
        if matched.is_empty() {
            eprintln!("  WARNING: no file match pattern {}", full.display());
        }
        rule_files.extend(matched);
    }
    let mut groups = Vec::new();
    for f in &rule_files {
        match file::load(f) {
            Ok(g) => groups.extend(g),
            Err(e) => return Ok(Err(e.iter().map(ToString::to_string).collect())),
        }
    }
    Ok(Ok(groups))
}

/// What every test group of a file shares.
struct Run<'a> {
    eval_interval: i64,
    order: &'a BTreeMap<String, usize>,
    groups: &'a Result<Vec<GroupDef>, Vec<String>>,
    max_evaluations: usize,
}

fn zero() -> String {
    "0s".into()
}

fn dur(text: &str, what: &str) -> Result<i64, Vec<String>> {
    duration::parse(text).map_err(|e| vec![format!("{what}: {e}")])
}

fn try_group(tg: &TestGroup, run: &Run<'_>) -> Result<Vec<String>, Vec<String>> {
    let eval_interval = run.eval_interval;
    // promtool 2.42 does not default `interval`: without it every sample lands at time 0.
    let interval = match &tg.interval {
        Some(i) => dur(i, "interval")?,
        None => 0,
    };
    let mut groups = run.groups.clone()?;
    groups.sort_by_key(|g| run.order.get(&g.name).copied().unwrap_or(0));

    let mut history = History::new(i64::MAX, usize::MAX);
    for s in &tg.input_series {
        let labels = parse_metric(&s.series).map_err(|e| vec![e])?;
        let values = parse_values(&s.values).map_err(|e| vec![format!("{}: {e}", s.series)])?;
        for (i, v) in values.into_iter().enumerate() {
            if let Some(v) = v {
                history.append(&labels, i as i64 * interval, v);
            }
        }
    }
    let mut engine = Engine::new(groups);
    engine.external_labels = Labels::from_pairs(tg.external_labels.clone());
    engine.external_url = tg.external_url.clone().unwrap_or_default();

    let mut alert_times: BTreeMap<i64, Vec<&AlertTest>> = BTreeMap::new();
    for a in &tg.alert_rule_test {
        let t = dur(&a.eval_time, "eval_time")?;
        if a.alertname.is_empty() {
            let in_group = tg
                .name
                .as_ref()
                .map(|n| format!(" (in TestGroup {n})"))
                .unwrap_or_default();
            return Err(vec![format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}{in_group}",
                duration::format(t)
            )]);
        }
        alert_times.entry(t).or_default().push(a);
    }
    let mut max_t = alert_times.keys().next_back().copied().unwrap_or(0);
    for e in &tg.promql_expr_test {
        max_t = max_t.max(dur(&e.eval_time, "eval_time")?);
    }

    let mut errs = Vec::new();
    let mut times = alert_times.into_iter().peekable();
    let mut ts = 0;
    let mut last_ts = 0;
    let mut evaluations = 0usize;
    while ts <= max_t {
        last_ts = ts;
        evaluations += 1;
        if evaluations > run.max_evaluations {
            return Err(vec![format!(
                "more than {} evaluations up to eval_time {}",
                run.max_evaluations,
                duration::format(max_t)
            )]);
        }
        let failures = engine.evaluate(&mut history, ts, false, eval_interval);
        if !failures.is_empty() {
            errs.extend(failures.into_iter().map(|f| {
                format!(
                    "    rule: {}, time: {}, err: {}",
                    f.rule,
                    go_duration(ts),
                    f.error
                )
            }));
            return Ok(errs);
        }
        while let Some((t, _)) = times.peek() {
            if !(ts <= *t && *t < ts + eval_interval.max(1)) {
                break;
            }
            let (t, tests) = times.next().expect("peeked");
            for test in tests {
                if let Some(e) = check_alerts(&engine, test, t, tg.name.as_deref()) {
                    errs.push(e);
                }
            }
        }
        if eval_interval == 0 {
            break;
        }
        ts += eval_interval;
    }

    // promtool loads input samples lazily, up to each evaluation: expressions see nothing
    // after the last one.
    history.truncate_after(last_ts);
    for test in &tg.promql_expr_test {
        let t = dur(&test.eval_time, "eval_time")?;
        let head = format!(
            "    expr: {}, time: {}",
            go_quote(&test.expr),
            duration::format(t)
        );
        let got = match query(&history, &test.expr, t, eval_interval) {
            Ok(v) => v,
            Err(e) => {
                errs.push(format!("{head}, err: {e}"));
                continue;
            }
        };
        let mut exp = Vec::new();
        for s in &test.exp_samples {
            match parse_metric(&s.labels) {
                Ok(l) => exp.push(Sample {
                    labels: l,
                    value: s.value,
                }),
                Err(e) => {
                    errs.push(format!("{head}, err: labels {}: {e}", go_quote(&s.labels)));
                    exp.clear();
                    break;
                }
            }
        }
        let mut got = got;
        exp.sort_by(|a, b| a.labels.cmp(&b.labels));
        got.sort_by(|a, b| a.labels.cmp(&b.labels));
        let same = exp.len() == got.len()
            && exp
                .iter()
                .zip(&got)
                .all(|(a, b)| a.labels == b.labels && a.value == b.value);
        if !same {
            errs.push(format!(
                "{head},\n        exp: {}\n        got: {}",
                samples_string(&exp),
                samples_string(&got)
            ));
        }
    }
    Ok(errs)
}

/// Evaluates an expression of a `promql_expr_test`, which must be in the supported subset.
fn query(history: &History, expr: &str, t: i64, step_ms: i64) -> Result<Vec<Sample>, String> {
    let parsed = promql_parser::parser::parse(expr).map_err(|e| format!("parse error: {e}"))?;
    subset::check(&parsed).map_err(|u| u.message)?;
    Evaluator {
        history,
        ts: t,
        step_ms,
    }
    .eval(&parsed)
    .map(|v| v.into_vector())
    .map_err(|e| e.0)
}

type LabelsAndAnnotations = (Vec<(String, String)>, Vec<(String, String)>);

fn check_alerts(engine: &Engine, test: &AlertTest, t: i64, group: Option<&str>) -> Option<String> {
    let mut got: Vec<LabelsAndAnnotations> = engine
        .rules()
        .filter(|r| r.def.kind == Kind::Alerting && r.def.name == test.alertname)
        .flat_map(|r| r.active.values())
        .filter(|a| a.state == State::Firing)
        .map(|a| {
            let labels = a
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (labels, a.annotations.clone())
        })
        .collect();
    let mut exp: Vec<LabelsAndAnnotations> = test
        .exp_alerts
        .iter()
        .map(|a| {
            let mut labels = a.exp_labels.clone();
            labels.insert("alertname".into(), test.alertname.clone());
            (
                labels.into_iter().collect(),
                a.exp_annotations.clone().into_iter().collect(),
            )
        })
        .collect();
    got.sort();
    exp.sort();
    if got == exp {
        return None;
    }
    let name = group
        .map(|n| format!("    name: {n},\n"))
        .unwrap_or_default();
    let ind = "            ";
    Some(format!(
        "{name}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
        test.alertname,
        duration::format(t),
        indent(&alerts_string(&exp), ind),
        indent(&alerts_string(&got), ind)
    ))
}

fn pairs_string(p: &[(String, String)]) -> String {
    let inner: Vec<String> = p
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

fn alerts_string(la: &[LabelsAndAnnotations]) -> String {
    if la.is_empty() {
        return "[]".into();
    }
    let one = |(l, a): &LabelsAndAnnotations| {
        format!(
            "\nLabels:{}\nAnnotations:{}",
            pairs_string(l),
            pairs_string(a)
        )
    };
    let mut s = format!("[\n0:{}", indent(&one(&la[0]), "  "));
    for (i, l) in la[1..].iter().enumerate() {
        s.push_str(&format!(",\n{}:{}", i + 1, indent(&one(l), "  ")));
    }
    s.push_str("\n]");
    s
}

/// promtool's `indentLines`: every line but the first gets the indent.
fn indent(text: &str, ind: &str) -> String {
    text.split('\n')
        .collect::<Vec<_>>()
        .join(&format!("\n{ind}"))
}

fn samples_string(v: &[Sample]) -> String {
    if v.is_empty() {
        return "nil".into();
    }
    v.iter()
        .map(|s| format!("{} {}", s.labels, gofmt::format_e(s.value, None, true)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `time.Duration.String()` for milliseconds: `1m0s`, `1.5s`, `500ms`, `0s`.
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{neg}{ms}ms");
    }
    let (h, m, s, frac) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    let mut secs = s.to_string();
    if frac > 0 {
        secs.push_str(format!(".{frac:03}").trim_end_matches('0'));
    }
    if h > 0 {
        format!("{neg}{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{neg}{m}m{secs}s")
    } else {
        format!("{neg}{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(500), "500ms");
    }
}
