//! Alert label and annotation templates: the part of Go's `text/template` that Prometheus rule
//! files use — `{{ $labels.port }}`, `{{ $value }}`, pipelines into `humanize*`, `printf`,
//! `toUpper`, `toLower`, `title`, `index`, `humanizeTimestamp`, the comparisons `eq`/`ne`/`lt`/
//! `le`/`gt`/`ge`, `{{ if }}`/`{{ else if }}`/`{{ else }}`,
//! `{{ with }}` (which sets `.`), `{{ end }}`, and `{{/* comments */}}` with `{{-`/`-}}`
//! trimming, and `query` with `first`/`value`/`label`. Parsing is in [`tmplparse`]; anything
//! else (`range`, variables of one's own, `sortByLabel`, ...) is refused at load, naming the
//! construct.

pub mod gofmt;
pub mod tmplfuncs;
pub mod tmplparse;

use self::{
    tmplfuncs::{Func, Val, call, lookup, print},
    tmplparse::{Command, Node, Operand, Var},
};
use crate::store::labels::Labels;
pub use tmplparse::TemplateError;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    raw: String,
    nodes: Vec<Node>,
}

/// What a template sees.
pub struct Data<'a> {
    pub labels: &'a Labels,
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
    pub value: f64,
    /// Runs a PromQL query at the rule's evaluation time, for `query`.
    pub query: Option<&'a Query<'a>>,
}

/// What `query` calls: the samples of an instant query, or why it failed.
pub type Query<'a> = dyn Fn(&str) -> Result<Vec<(Labels, f64)>, String> + 'a;

impl Template {
    /// Parses `raw`.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        Ok(Self {
            raw: raw.to_string(),
            nodes: tmplparse::parse(raw)?,
        })
    }

    /// A template that is plain text (labels of recording rules are not templated).
    pub fn literal(raw: &str) -> Self {
        Self {
            raw: raw.to_string(),
            nodes: vec![Node::Text(raw.to_string())],
        }
    }

    /// The text as written.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Expands the template; a failing function gives Prometheus's
    /// `<error expanding template: ...>` in place of the whole text.
    pub fn expand(&self, data: &Data<'_>) -> String {
        let mut out = String::new();
        // Outside `with`, `.` is resolved when parsing (`.Labels`, `.Value`): never read.
        match exec(&self.nodes, data, &Val::Missing, &mut out) {
            Ok(()) => out,
            Err(e) => format!("<error expanding template: {e}>"),
        }
    }
}

fn exec<'a>(
    nodes: &[Node],
    data: &'a Data<'a>,
    dot: &Val<'a>,
    out: &mut String,
) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Action(pipe) => out.push_str(&print(&run(pipe, data, dot)?)),
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                let branch = if truth(&run(cond, data, dot)?) {
                    then
                } else {
                    otherwise
                };
                exec(branch, data, dot, out)?;
            }
            Node::With {
                value,
                then,
                otherwise,
            } => {
                let v = run(value, data, dot)?;
                if truth(&v) {
                    exec(then, data, &v, out)?;
                } else {
                    exec(otherwise, data, dot, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Go's truth of a value: false for the empty string, zero, `false`, an empty map and a
/// missing value; true otherwise (NaN included).
fn truth(v: &Val<'_>) -> bool {
    match v {
        Val::Str(s) => !s.is_empty(),
        Val::Float(f) => *f != 0.0,
        Val::Int(i) => *i != 0,
        Val::Bool(b) => *b,
        Val::Map(m) => m.iter().next().is_some(),
        Val::Samples(v) => !v.is_empty(),
        Val::Sample(..) => true,
        Val::Missing => false,
    }
}

fn run<'a>(pipe: &[Command], data: &'a Data<'a>, dot: &Val<'a>) -> Result<Val<'a>, String> {
    let mut last: Option<Val<'a>> = None;
    for Command(ops) in pipe {
        let mut args = Vec::new();
        for op in &ops[1..] {
            args.push(operand(op, data, dot)?);
        }
        if let Some(v) = last.take() {
            args.push(v);
        }
        last = Some(match &ops[0] {
            Operand::Func(Func::Query) => {
                let [Val::Str(q)] = args.as_slice() else {
                    return Err("error calling query: query needs one string".into());
                };
                let run = data.query.ok_or("error calling query: no evaluator")?;
                Val::Samples(run(q).map_err(|e| format!("error calling query: {e}"))?)
            }
            Operand::Func(f) => call(*f, args)?,
            other if args.is_empty() => operand(other, data, dot)?,
            _ => return Err("can't give argument to non-function".into()),
        });
    }
    Ok(last.unwrap_or(Val::Missing))
}

fn operand<'a>(op: &Operand, data: &'a Data<'a>, dot: &Val<'a>) -> Result<Val<'a>, String> {
    Ok(match op {
        Operand::Func(f) => call(*f, Vec::new())?,
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(n) => Val::Float(*n),
        Operand::Int(i) => Val::Int(*i),
        Operand::Bool(b) => Val::Bool(*b),
        Operand::Pipe(p) => run(p, data, dot)?,
        Operand::Dot(None) => dot.clone(),
        Operand::Dot(Some(field)) => match dot {
            Val::Map(m) => lookup(m, field),
            other => {
                return Err(format!(
                    "can't evaluate field {field} in type {}",
                    other.type_name()
                ));
            }
        },
        Operand::Var(v, fields) => {
            let base = match v {
                Var::Labels => Val::Map(data.labels),
                Var::ExternalLabels => Val::Map(data.external_labels),
                Var::ExternalUrl => Val::Str(data.external_url.to_string()),
                Var::Value => Val::Float(data.value),
            };
            match (base, fields.first()) {
                (Val::Map(m), Some(k)) => lookup(m, k),
                (b, _) => b,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(t: &str, value: f64) -> String {
        let labels = Labels::from_pairs([("port", "8000"), ("__name__", "x")]);
        let ext = Labels::new();
        Template::parse(t).unwrap().expand(&Data {
            labels: &labels,
            external_labels: &ext,
            external_url: "http://n",
            value,
            query: None,
        })
    }

    #[test]
    fn labels_value_and_pipelines() {
        assert_eq!(
            expand("port {{ $labels.port }}: {{ $value }}/s", 12.5),
            "port 8000: 12.5/s"
        );
        assert_eq!(expand("{{ .Labels.port }} {{ .Value }}", 1e6), "8000 1e+06");
        assert_eq!(expand("[{{ $labels.nope }}]", 1.0), "[]");
        assert_eq!(expand("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(expand("{{ humanize $value }}", 0.0123), "12.3m");
        assert_eq!(
            expand("{{ $value | humanizePercentage }}", 0.9512),
            "95.12%"
        );
        assert_eq!(
            expand("{{ $value | humanizeDuration }}", 3725.0),
            "1h 2m 5s"
        );
        assert_eq!(expand("{{ humanizeDuration 0.25 }}", 0.0), "250ms");
        assert_eq!(expand("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(expand("{{ printf \"%.2f\" $value }}", 2.0 / 3.0), "0.67");
        assert_eq!(expand("{{ $value | printf \"%.1f%%\" }}", 50.0), "50.0%");
        assert_eq!(
            expand("{{ index $labels \"port\" | toUpper }}", 0.0),
            "8000"
        );
        assert_eq!(expand("{{ \"abc def\" | title }}", 0.0), "Abc Def");
        assert_eq!(expand("a {{- /* note */ -}} b", 0.0), "ab");
        assert_eq!(expand("a  {{- $value }} b", 3.0), "a3 b");
        assert_eq!(expand("no actions", 0.0), "no actions");
        assert_eq!(expand("{{ $externalURL }}", 0.0), "http://n");
    }

    #[test]
    fn runtime_errors_read_like_prometheus() {
        assert!(expand("{{ humanize \"x\" }}", 0.0).starts_with("<error expanding template: "));
        // Go keeps `60` an int: comparing it with the float $value is an error.
        assert_eq!(
            expand("{{ gt $value 60 }}", 61.0),
            "<error expanding template: error calling gt: incompatible types for comparison>"
        );
        assert!(expand("{{ lt true false }}", 0.0).contains("invalid type for comparison"));
        assert_eq!(
            expand("{{ gt $value 60.0 }} {{ gt $value $value }}", f64::NAN),
            "true true"
        );
        assert_eq!(
            expand("{{ humanizeTimestamp 0 }}", 0.0),
            "1970-01-01 00:00:00 +0000 UTC"
        );
    }

    /// Expands `t` for a series with these labels (and no others).
    fn expand_for(t: &str, pairs: &[(&str, &str)], value: f64) -> String {
        let labels = Labels::from_pairs(pairs.iter().copied());
        let ext = Labels::new();
        Template::parse(t)
            .unwrap_or_else(|e| panic!("{t}: {e:?}"))
            .expand(&Data {
                labels: &labels,
                external_labels: &ext,
                external_url: "",
                value,
                query: None,
            })
    }

    #[test]
    fn if_else_if_else_with_go_truth() {
        let t = "{{ if $labels.port }}P{{ else }}N{{ end }}";
        assert_eq!(expand(t, 0.0), "P");
        assert_eq!(expand_for(t, &[], 0.0), "N", "a missing label is false");
        let t = "{{ if $value }}nonzero{{ else }}zero{{ end }}";
        assert_eq!(expand(t, 0.0), "zero");
        assert_eq!(expand(t, -2.0), "nonzero");
        assert_eq!(expand(t, f64::NAN), "nonzero", "NaN != 0, as in Go");
        let chain = "{{ if false }}a{{ else if 0 }}b{{ else if \"\" }}c{{ else if 0.0 }}d{{ else if $labels.port }}e{{ else }}f{{ end }}";
        assert_eq!(expand(chain, 0.0), "e");
        assert_eq!(expand_for(chain, &[], 0.0), "f");
        assert_eq!(expand("{{ if true }}t{{ end }}", 0.0), "t");
        assert_eq!(expand("{{ if false }}t{{ end }}", 0.0), "");
        assert_eq!(expand("{{ if $labels }}labels{{ end }}", 0.0), "labels");
        assert_eq!(expand_for("{{ if $labels }}x{{ end }}", &[], 0.0), "");
        // A pipeline as the condition: its last value counts.
        assert_eq!(expand("{{ if $value | humanize }}h{{ end }}", 0.0), "h");
        // Nested.
        let t = "{{ if $labels.port }}{{ if $value }}busy{{ else }}idle{{ end }} port{{ end }}";
        assert_eq!(expand(t, 1.0), "busy port");
        assert_eq!(expand(t, 0.0), "idle port");
        assert_eq!(expand("{{ true }} {{ false }}", 0.0), "true false");
    }

    #[test]
    fn with_binds_dot_and_else_keeps_it() {
        let t = "on port {{ $labels.port }}{{ with $labels.container }} in container {{ . }}{{ end }}{{ with $labels.pod }} (pod {{ . }}){{ end }}";
        assert_eq!(expand_for(t, &[("port", "80")], 0.0), "on port 80");
        assert_eq!(
            expand_for(t, &[("port", "80"), ("container", "abc123def456")], 0.0),
            "on port 80 in container abc123def456"
        );
        assert_eq!(
            expand_for(
                t,
                &[
                    ("port", "80"),
                    ("container", "abc123def456"),
                    ("pod", "ns/web")
                ],
                0.0
            ),
            "on port 80 in container abc123def456 (pod ns/web)"
        );
        let t = "{{ with $labels.nope }}got {{ . }}{{ else }}none{{ end }}";
        assert_eq!(expand(t, 0.0), "none");
        assert_eq!(
            expand("{{ with $value }}{{ . | humanize }}{{ end }}", 2e3),
            "2k"
        );
        assert_eq!(expand("{{ with $value }}x{{ end }}", 0.0), "");
        assert_eq!(
            expand("{{ with $labels }}{{ .port }}/{{ .nope }}{{ end }}", 0.0),
            "8000/"
        );
        assert_eq!(
            expand("{{ with $labels }}{{ . }}{{ end }}", 0.0),
            "map[__name__:x port:8000]"
        );
        // Nested `with`: the inner `.` is the inner value; `$labels` is still there.
        let t =
            "{{ with $labels.port }}{{ with $labels.__name__ }}{{ . }}{{ end }}:{{ . }}{{ end }}";
        assert_eq!(expand(t, 0.0), "x:8000");
        // In `else`, `.` is the outer one.
        let t =
            "{{ with $labels.port }}{{ with $labels.nope }}in{{ else }}{{ . }}{{ end }}{{ end }}";
        assert_eq!(expand(t, 0.0), "8000");
        assert_eq!(
            expand(
                "{{ with $labels.port | printf \"p%s\" }}{{ . }}{{ end }}",
                0.0
            ),
            "p8000"
        );
        // A field of a value that is not a map is Go's run-time error.
        assert_eq!(
            expand("{{ with $value }}{{ .x }}{{ end }}", 1.0),
            "<error expanding template: can't evaluate field x in type float64>"
        );
        assert_eq!(
            expand("{{ if $value }}{{ humanize \"x\" }}{{ end }}", 0.0),
            "",
            "a branch not taken is not run"
        );
    }

    #[test]
    fn trimming_around_control_actions() {
        assert_eq!(expand("x {{- if true -}} y {{- end -}} z", 0.0), "xyz");
        let t = "a\n{{- with $labels.port }}\n  port {{ . }}\n{{- end }}\nb";
        assert_eq!(expand(t, 0.0), "a\n  port 8000\nb");
        assert_eq!(expand_for(t, &[], 0.0), "a\nb");
        assert_eq!(
            expand("{{ if false }}no{{- else -}}\n\t yes \n{{- end }}", 0.0),
            "yes"
        );
        // `{{-3}}` is the number -3, not a trim marker.
        assert_eq!(expand("a {{-3}}", 0.0), "a -3");
    }

    #[test]
    fn unbalanced_and_unknown_actions_are_refused_with_their_place() {
        let deep_if = "{{ if true }}".repeat(101);
        let deep_parens = format!("{{{{ {}1 }}}}", "(".repeat(101));
        for (t, what, at) in [
            ("x {{ end }}", "`{{ end }}` without an `if` or `with`", 5),
            ("{{ else }}", "`{{ else }}` outside an `if` or `with`", 3),
            ("ab{{ if true }}x", "`{{ if }}` is never closed", 5),
            (
                "{{ if true }}{{ with $value }}x{{ end }}",
                "`{{ if }}` is never closed",
                3,
            ),
            (
                "{{ if true }}a{{ else if true }}b",
                "`{{ if }}` is never closed",
                3,
            ),
            (
                "{{ with $value }}x{{ else }}",
                "`{{ with }}` is never closed",
                3,
            ),
            (
                "{{ if true }}a{{ else }}b{{ else }}c{{ end }}",
                "a second `{{ else }}` in one `if`",
                28,
            ),
            (
                "{{ if true }}a{{ else }}b{{ else if true }}c{{ end }}",
                "a second `{{ else }}`",
                28,
            ),
            ("{{ if }}x{{ end }}", "missing value for `if`", 3),
            ("{{ with }}x{{ end }}", "missing value for `with`", 3),
            (
                "{{ if true }}{{ else if }}{{ end }}",
                "missing value for `else if`",
                16,
            ),
            (
                "{{ with $value }}a{{ else if true }}b{{ end }}",
                "`{{ else if }}` inside `with` is not supported",
                21,
            ),
            (
                "{{ with $value }}a{{ else with $value }}b{{ end }}",
                "`{{ else with }}` is not supported",
                21,
            ),
            (
                "{{ if true }}{{ else foo }}{{ end }}",
                "unexpected `foo` after `else`",
                21,
            ),
            (
                "{{ if true }}{{ end foo }}",
                "unexpected `foo` after `end`",
                20,
            ),
            (
                "{{ range $labels }}x{{ end }}",
                "unsupported template action `range`",
                3,
            ),
            ("{{ if true }}{{ break }}{{ end }}", "action `break`", 16),
            ("{{ define \"x\" }}{{ end }}", "action `define`", 3),
            ("{{ $value | if }}", "unexpected `if` inside an action", 12),
            (
                deep_if.as_str(),
                "`if` and `with` nested more than 100 deep",
                1303,
            ),
            (
                deep_parens.as_str(),
                "parentheses nested more than 100 deep",
                103,
            ),
            (
                "{{ . }}",
                "`.` on its own is supported only inside `with`",
                3,
            ),
            (
                "{{ with $labels }}{{ .a.b }}{{ end }}",
                "unsupported field access `.a.b`",
                21,
            ),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.message.contains(what), "{t}: {e:?}");
            assert_eq!(e.offset, at, "{t}: {e:?}");
        }
        let deep = format!(
            "{}x{}",
            "{{ with $value }}{{ if . }}".repeat(50),
            "{{ end }}".repeat(100)
        );
        assert_eq!(expand(&deep, 1.0), "x", "100 deep is allowed");
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (t, what, at) in [
            ("a {{ range $labels }}x{{ end }}", "action `range`", 5),
            ("{{ $x := 1 }}", "variable `$x`", 3),
            (
                "{{ sortByLabel \"job\" $value }}",
                "function `sortByLabel`",
                3,
            ),
            ("{{ $labels.a.b }}", "field access", 3),
            ("{{ .Foo }}", "unknown field `.Foo`", 3),
            ("{{ $value ", "unclosed action", 0),
            ("{{ }}", "empty action", 3),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.message.contains(what), "{t}: {e:?}");
            assert_eq!(e.offset, at, "{t}: {e:?}");
        }
    }
}
