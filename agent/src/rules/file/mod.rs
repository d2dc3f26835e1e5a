//! Rule files in the Prometheus format: parsed, then validated as a whole — every problem is
//! collected and named with its file, line and column — into [`GroupDef`]s.

use std::collections::{BTreeMap, HashSet};

use promql_parser::parser::Expr;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    promql::{
        duration,
        subset::{self, Needle},
    },
    template::Template,
};
use crate::{
    store::labels::{METRIC_NAME, is_label_name, is_metric_name},
    yaml::{self, Error as RuleError},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    limit: Option<Spanned<u64>>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    record: Option<Spanned<String>>,
    #[serde(default)]
    alert: Option<Spanned<String>>,
    #[serde(default)]
    expr: Option<Spanned<String>>,
    #[serde(default, rename = "for")]
    for_: Option<Spanned<String>>,
    #[serde(default)]
    keep_firing_for: Option<Spanned<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, Spanned<String>>>,
}

/// Whether a rule records a series or raises alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Recording,
    Alerting,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    pub kind: Kind,
    /// The recorded metric name or the alert name.
    pub name: String,
    pub expr: Expr,
    /// The expression as written.
    pub expr_text: String,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    /// Labels added to the result; templates for alerts, plain text for recording rules.
    pub labels: Vec<(String, Template)>,
    pub annotations: Vec<(String, Template)>,
    /// The metric (if one) and range of each range selector in `expr`.
    pub ranges: Vec<(Option<String>, i64)>,
}

/// A validated group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDef {
    /// The file it came from, as named to the loader.
    pub file: String,
    pub name: String,
    /// Its own evaluation interval, if set.
    pub interval_ms: Option<i64>,
    /// Most alerts or series a rule may produce; 0 means no limit.
    pub limit: usize,
    pub rules: Vec<RuleDef>,
}

/// Where in a file a value starts, to place errors about it.
#[derive(Debug, Clone, Copy)]
struct At {
    line: u64,
    column: u64,
}

impl<T> From<&Spanned<T>> for At {
    fn from(s: &Spanned<T>) -> Self {
        Self {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset where each line starts: placing an error is a lookup, not a rescan.
    lines: Vec<usize>,
    errors: Vec<RuleError>,
}

impl Checker<'_> {
    fn err(&mut self, at: At, message: impl Into<String>) {
        self.errors.push(RuleError::Invalid {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            message: message.into(),
        });
    }

    /// Byte offset of a line and (character) column.
    fn offset(&self, at: At) -> usize {
        let Some(&start) = self.lines.get(at.line.saturating_sub(1) as usize) else {
            return self.text.len();
        };
        let line = self.text[start..]
            .split_inclusive('\n')
            .next()
            .unwrap_or("");
        start
            + line
                .char_indices()
                .nth(at.column.saturating_sub(1) as usize)
                .map_or(line.len(), |(b, _)| b)
    }

    fn at_offset(&self, off: usize) -> At {
        let off = off.min(self.text.len());
        let i = self.lines.partition_point(|&s| s <= off).max(1) - 1;
        At {
            line: i as u64 + 1,
            column: self.text[self.lines[i]..off].chars().count() as u64 + 1,
        }
    }

    /// Where `needle` is written at or after `from`, else `from`.
    fn find(&self, from: At, needle: &Needle) -> At {
        let start = self.offset(from);
        subset::find(self.text, start, needle).map_or(from, |o| self.at_offset(o))
    }

    fn duration(&mut self, what: &str, d: &Option<Spanned<String>>) -> i64 {
        let Some(d) = d else { return 0 };
        match duration::parse(d.value.trim()) {
            Ok(ms) => ms,
            Err(e) => {
                self.err(At::from(d), format!("{what}: {e}"));
                0
            }
        }
    }

    fn group(&mut self, g: RawGroup, seen: &mut HashSet<String>) -> Option<GroupDef> {
        let at = At::from(&g.name);
        let name = g.name.value.clone();
        if name.is_empty() {
            self.err(at, "group name must not be empty");
        } else if !seen.insert(name.clone()) {
            self.err(
                at,
                format!("group name {name:?} is repeated in the same file"),
            );
        }
        let interval_ms = g
            .interval
            .as_ref()
            .map(|_| self.duration("interval", &g.interval));
        let before = self.errors.len();
        let rules: Vec<RuleDef> = g
            .rules
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&name, i, r, at))
            .collect();
        (self.errors.len() == before).then(|| GroupDef {
            file: self.file.to_string(),
            name,
            interval_ms,
            limit: g.limit.map_or(0, |l| l.value as usize),
            rules,
        })
    }

    fn rule(&mut self, group: &str, index: usize, r: RawRule, group_at: At) -> Option<RuleDef> {
        let before = self.errors.len();
        let at = r
            .alert
            .as_ref()
            .or(r.record.as_ref())
            .or(r.expr.as_ref())
            .map_or(group_at, At::from);
        let kind = match (&r.record, &r.alert) {
            (Some(_), Some(a)) => {
                self.err(At::from(a), "only one of 'record' and 'alert' must be set");
                Kind::Alerting
            }
            (Some(_), None) => Kind::Recording,
            (None, Some(_)) => Kind::Alerting,
            (None, None) => {
                self.err(
                    at,
                    format!(
                        "group {group:?}, rule {}: one of 'record' or 'alert' must be set",
                        index + 1
                    ),
                );
                Kind::Alerting
            }
        };
        let name = r
            .alert
            .as_ref()
            .or(r.record.as_ref())
            .map(|n| n.value.clone())
            .unwrap_or_default();
        let what = match kind {
            Kind::Alerting => format!("alert {name:?}"),
            Kind::Recording => format!("record {name:?}"),
        };
        if let (Kind::Alerting, Some(a)) = (kind, &r.alert)
            && a.value.trim().is_empty()
        {
            self.err(At::from(a), "alert name must not be empty");
        }
        if let (Kind::Recording, Some(rec)) = (kind, &r.record)
            && !is_metric_name(&rec.value)
        {
            self.err(
                At::from(rec),
                format!("invalid recording rule name: {:?}", rec.value),
            );
        }
        let for_ms = self.duration(&format!("{what}: for"), &r.for_);
        let keep_firing_for_ms =
            self.duration(&format!("{what}: keep_firing_for"), &r.keep_firing_for);
        if kind == Kind::Recording {
            if let Some(f) = &r.for_ {
                self.err(
                    At::from(f),
                    format!("{what}: invalid field 'for' in recording rule"),
                );
            }
            if let Some(f) = &r.keep_firing_for {
                self.err(
                    At::from(f),
                    format!("{what}: invalid field 'keep_firing_for' in recording rule"),
                );
            }
            if let Some(a) = r.annotations.as_ref().and_then(|a| a.values().next()) {
                self.err(
                    At::from(a),
                    format!("{what}: invalid field 'annotations' in recording rule"),
                );
            }
        }
        let (expr, info) = match &r.expr {
            None => {
                self.err(at, format!("{what}: field 'expr' must be set in rule"));
                (None, subset::Info::default())
            }
            Some(e) if e.value.trim().is_empty() => {
                self.err(
                    At::from(e),
                    format!("{what}: field 'expr' must be set in rule"),
                );
                (None, subset::Info::default())
            }
            Some(e) => self.expr(&what, e),
        };
        let labels = self.templates(&what, "label", r.labels, kind == Kind::Alerting);
        let annotations = self.templates(&what, "annotation", r.annotations, true);
        if self.errors.len() != before {
            return None;
        }
        Some(RuleDef {
            kind,
            name,
            expr: expr?,
            expr_text: r.expr.map(|e| e.value).unwrap_or_default(),
            for_ms,
            keep_firing_for_ms,
            labels,
            annotations,
            ranges: info.ranges,
        })
    }

    fn expr(&mut self, what: &str, e: &Spanned<String>) -> (Option<Expr>, subset::Info) {
        let at = At::from(e);
        let parsed = match promql_parser::parser::parse(&e.value) {
            Ok(p) => p,
            Err(msg) => {
                self.err(at, format!("{what}: could not parse expression: {msg}"));
                return (None, subset::Info::default());
            }
        };
        if let Err((off, msg)) = subset::check_ranges(&e.value) {
            let needle = Needle {
                text: e.value[off..].chars().take_while(|c| *c != ']').collect(),
                word: false,
            };
            let loc = self.find(at, &needle);
            self.err(loc, format!("{what}: {msg}"));
            return (None, subset::Info::default());
        }
        match subset::check(&parsed) {
            Ok(info) => (Some(parsed), info),
            Err(u) => {
                let loc = u.needle.as_ref().map_or(at, |n| self.find(at, n));
                self.err(loc, format!("{what}: {}", u.message));
                (None, subset::Info::default())
            }
        }
    }

    fn templates(
        &mut self,
        what: &str,
        kind: &str,
        map: Option<BTreeMap<String, Spanned<String>>>,
        templated: bool,
    ) -> Vec<(String, Template)> {
        let mut out = Vec::new();
        for (k, v) in map.unwrap_or_default() {
            let at = At::from(&v);
            let reserved = kind == "label" && k == METRIC_NAME;
            if !is_label_name(&k) || reserved {
                self.err(at, format!("{what}: invalid {kind} name: {k:?}"));
                continue;
            }
            if !templated {
                out.push((k, Template::literal(&v.value)));
                continue;
            }
            match Template::parse(&v.value) {
                Ok(t) => out.push((k, t)),
                Err(e) => {
                    // Place the error on the construct when the value is written on one line.
                    let start = self.offset(at);
                    let snippet: String = v.value[e.offset..].chars().take(12).collect();
                    let needle = Needle {
                        text: snippet.lines().next().unwrap_or("").to_string(),
                        word: false,
                    };
                    let loc = if needle.text.is_empty() {
                        at
                    } else {
                        subset::find(self.text, start, &needle).map_or(at, |o| self.at_offset(o))
                    };
                    self.err(loc, format!("{what}: {kind} {k:?}: {}", e.message));
                }
            }
        }
        out
    }
}

/// Parses and validates the text of one rule file; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    let blank = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if blank {
        return Ok(Vec::new());
    }
    let raw: RawFile = yaml::parse(file, text).map_err(|e| vec![e])?;
    let mut c = Checker {
        file,
        text,
        lines: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        errors: Vec::new(),
    };
    let mut seen = HashSet::new();
    let groups: Vec<GroupDef> = raw
        .groups
        .into_iter()
        .filter_map(|g| c.group(g, &mut seen))
        .collect();
    if c.errors.is_empty() {
        Ok(groups)
    } else {
        c.errors.sort_by_key(|e| match e {
            RuleError::Invalid { line, column, .. } => (*line, *column),
            RuleError::Read { .. } | RuleError::WorldWritable { .. } => (0, 0),
        });
        Err(c.errors)
    }
}

/// Reads, parses and validates one rule file.
pub fn load(path: &std::path::Path) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![RuleError::Read {
            file: file.clone(),
            message: e.to_string(),
        }]
    })?;
    parse(&file, &text)
}
