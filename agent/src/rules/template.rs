//! Alert label and annotation templates: the part of Go's `text/template` that Prometheus rule
//! files use — `{{ $labels.port }}`, `{{ $value }}`, pipelines into `humanize*`, `printf`,
//! `toUpper`, `toLower`, `title`, `index`, and `{{/* comments */}}` with `{{-`/`-}}` trimming.
//! Anything else (`if`, `range`, variables of one's own, queries) is refused at load, naming
//! the construct.

use super::tmplfuncs::{FUNCS, Func, Val, call, lookup, print};
use crate::store::labels::Labels;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    raw: String,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

/// One command of a pipeline: a function and its arguments, or a single value.
#[derive(Debug, Clone, PartialEq)]
struct Command(Vec<Operand>);

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Func(Func),
    /// `$labels`, `$value`, ... or `.Labels`, `.Value`, then field names.
    Var(Var, Vec<String>),
    Str(String),
    Num(f64),
    Pipe(Vec<Command>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    Labels,
    ExternalLabels,
    ExternalUrl,
    Value,
}

/// A template that nodewatch cannot run: the construct, and where in the text it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// What a template sees.
pub struct Data<'a> {
    pub labels: &'a Labels,
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
    pub value: f64,
}

impl Template {
    /// Parses `raw`.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        let mut nodes = Vec::new();
        let mut rest = raw;
        let mut trim_next = false;
        while !rest.is_empty() {
            let at = raw.len() - rest.len();
            let Some(open) = rest.find("{{") else {
                push_text(&mut nodes, rest, trim_next, false);
                break;
            };
            let inner_start = open + 2;
            let trim_left = rest[inner_start..].starts_with("- ");
            push_text(&mut nodes, &rest[..open], trim_next, trim_left);
            let body_start = inner_start + if trim_left { 2 } else { 0 };
            let Some(close) = rest[body_start..].find("}}") else {
                return Err(TemplateError {
                    offset: at + open,
                    message: "unclosed action `{{`".into(),
                });
            };
            let mut body = &rest[body_start..body_start + close];
            trim_next = body.ends_with(" -");
            if trim_next {
                body = &body[..body.len() - 2];
            }
            let body_at = at + body_start;
            let trimmed = body.trim();
            if !(trimmed.starts_with("/*") && trimmed.ends_with("*/")) {
                let mut p = Parser {
                    src: body,
                    pos: 0,
                    base: body_at,
                };
                let pipe = p.pipeline()?;
                p.skip_space();
                if p.pos < body.len() {
                    return Err(p.err(format!("unexpected `{}` in action", &body[p.pos..])));
                }
                if pipe.is_empty() {
                    return Err(p.err("empty action `{{ }}`".into()));
                }
                nodes.push(Node::Action(pipe));
            }
            rest = &rest[body_start + close + 2..];
        }
        Ok(Self {
            raw: raw.to_string(),
            nodes,
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
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(pipe) => match run(pipe, data) {
                    Ok(v) => out.push_str(&print(&v)),
                    Err(e) => return format!("<error expanding template: {e}>"),
                },
            }
        }
        out
    }
}

fn push_text(nodes: &mut Vec<Node>, text: &str, trim_start: bool, trim_end: bool) {
    let mut t = text;
    if trim_start {
        t = t.trim_start();
    }
    if trim_end {
        t = t.trim_end();
    }
    if !t.is_empty() {
        nodes.push(Node::Text(t.to_string()));
    }
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    base: usize,
}

impl Parser<'_> {
    fn err(&self, message: String) -> TemplateError {
        TemplateError {
            offset: self.base + self.pos,
            message,
        }
    }

    fn skip_space(&mut self) {
        while self.src[self.pos..].starts_with([' ', '\t', '\n', '\r']) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' || c == '$' || c == '.' {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        &self.src[start..self.pos]
    }

    fn pipeline(&mut self) -> Result<Vec<Command>, TemplateError> {
        let mut cmds = Vec::new();
        loop {
            let mut ops = Vec::new();
            loop {
                self.skip_space();
                match self.peek() {
                    None | Some('|') | Some(')') => break,
                    _ => ops.push(self.operand(ops.is_empty())?),
                }
            }
            if ops.is_empty() {
                if self.peek() == Some('|') {
                    return Err(self.err("missing command before `|`".into()));
                }
                return Ok(cmds);
            }
            cmds.push(Command(ops));
            if self.peek() == Some('|') {
                self.pos += 1;
            } else {
                return Ok(cmds);
            }
        }
    }

    fn operand(&mut self, first: bool) -> Result<Operand, TemplateError> {
        let start = self.pos;
        match self.peek() {
            Some('"') | Some('`') => self.string(),
            Some('(') => {
                self.pos += 1;
                let p = self.pipeline()?;
                if self.peek() != Some(')') {
                    return Err(self.err("unclosed `(`".into()));
                }
                self.pos += 1;
                Ok(Operand::Pipe(p))
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                self.pos += 1;
                let w = self.word();
                let text = format!("{c}{w}");
                text.parse().map(Operand::Num).map_err(|_| TemplateError {
                    offset: self.base + start,
                    message: format!("bad number `{text}`"),
                })
            }
            _ => {
                let w = self.word().to_string();
                let at = |message: String| TemplateError {
                    offset: self.base + start,
                    message,
                };
                if w.is_empty() {
                    let c = self.peek().unwrap_or(' ');
                    return Err(at(format!("unexpected `{c}`")));
                }
                if w.starts_with('$') || w.starts_with('.') {
                    return var(&w).map_err(at);
                }
                if let Some((_, f)) = FUNCS.iter().find(|(n, _)| *n == w) {
                    if !first {
                        return Err(at(format!(
                            "function `{w}` used as an argument: wrap it in ( )"
                        )));
                    }
                    return Ok(Operand::Func(*f));
                }
                let what = match w.as_str() {
                    "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
                    | "break" | "continue" => format!("action `{w}`"),
                    "query" | "first" | "label" | "value" | "sortByLabel" => {
                        format!("function `{w}` (queries from templates)")
                    }
                    _ => format!("function `{w}`"),
                };
                Err(at(format!(
                    "unsupported template {what}: nodewatch templates support $labels, $value, $externalLabels, $externalURL and the functions {}",
                    FUNCS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }

    fn string(&mut self) -> Result<Operand, TemplateError> {
        let start = self.pos;
        let quote = self.peek().unwrap_or('"');
        self.pos += 1;
        let mut s = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.err("unterminated string".into()));
            };
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(Operand::Str(s));
            }
            if c == '\\' && quote == '"' {
                let Some(e) = self.peek() else { continue };
                self.pos += e.len_utf8();
                s.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            } else {
                s.push(c);
            }
        }
    }
}

fn var(w: &str) -> Result<Operand, String> {
    let mut parts = w.split('.');
    let head = parts.next().unwrap_or_default();
    let mut fields: Vec<String> = parts.map(str::to_string).collect();
    let v = if head.is_empty() {
        // `.Labels.port`: the first field names the variable.
        if fields.is_empty() || fields[0].is_empty() {
            return Err("`.` on its own is not supported; use $labels or $value".into());
        }
        match fields.remove(0).as_str() {
            "Labels" => Var::Labels,
            "ExternalLabels" => Var::ExternalLabels,
            "ExternalURL" => Var::ExternalUrl,
            "Value" => Var::Value,
            other => return Err(format!("unknown field `.{other}`")),
        }
    } else {
        match head {
            "$labels" => Var::Labels,
            "$externalLabels" => Var::ExternalLabels,
            "$externalURL" => Var::ExternalUrl,
            "$value" => Var::Value,
            other => {
                return Err(format!(
                    "unsupported template variable `{other}`: use $labels, $value, $externalLabels or $externalURL"
                ));
            }
        }
    };
    let is_map = matches!(v, Var::Labels | Var::ExternalLabels);
    if fields.iter().any(String::is_empty) || fields.len() > usize::from(is_map) {
        return Err(format!("unsupported field access `{w}`"));
    }
    Ok(Operand::Var(v, fields))
}

fn run<'a>(pipe: &[Command], data: &'a Data<'a>) -> Result<Val<'a>, String> {
    let mut last: Option<Val<'a>> = None;
    for Command(ops) in pipe {
        let mut args = Vec::new();
        for op in &ops[1..] {
            args.push(operand(op, data)?);
        }
        if let Some(v) = last.take() {
            args.push(v);
        }
        last = Some(match &ops[0] {
            Operand::Func(f) => call(*f, args)?,
            other if args.is_empty() => operand(other, data)?,
            _ => return Err("can't give argument to non-function".into()),
        });
    }
    Ok(last.unwrap_or(Val::Missing))
}

fn operand<'a>(op: &Operand, data: &'a Data<'a>) -> Result<Val<'a>, String> {
    Ok(match op {
        Operand::Func(f) => call(*f, Vec::new())?,
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(n) => Val::Float(*n),
        Operand::Pipe(p) => run(p, data)?,
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
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (t, what, at) in [
            ("a {{ if $value }}x{{ end }}", "action `if`", 5),
            ("{{ $x := 1 }}", "variable `$x`", 3),
            ("{{ query \"up\" }}", "function `query`", 3),
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
