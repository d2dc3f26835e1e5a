//! Parsing of alert templates into a tree: text, actions (pipelines), `if`/`else if`/`else` and
//! `with`/`else`, each closed by `end`, with `{{-`/`-}}` trimming and `{{/* comments */}}`.
//! The structure is what Prometheus 2.42's Go (1.19) `text/template` accepts: `else if`
//! only inside `if`, no `else with`.

use super::tmplfuncs::{FUNCS, Func};

/// A template that nodewatch cannot run: the construct, and where in the text it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Text(String),
    Action(Vec<Command>),
    /// `{{ if }}`: `then` when the pipeline's value is true, else `otherwise` (an
    /// `else if` is an `If` alone in `otherwise`).
    If {
        cond: Vec<Command>,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `{{ with }}`: `then` with `.` set to the pipeline's value when it is true, else
    /// `otherwise` with `.` unchanged.
    With {
        value: Vec<Command>,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// One command of a pipeline: a function and its arguments, or a single value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Command(pub(super) Vec<Operand>);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Func(Func),
    /// `$labels`, `$value`, ... or `.Labels`, `.Value` (outside `with`), then field names.
    Var(Var, Vec<String>),
    /// `.` or `.field` inside a `with`: the value `with` bound.
    Dot(Option<String>),
    Str(String),
    Num(f64),
    /// An integer constant: Go keeps it an `int`, which comparisons tell from a float.
    Int(i64),
    Bool(bool),
    Pipe(Vec<Command>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Var {
    Labels,
    ExternalLabels,
    ExternalUrl,
    Value,
}

/// Actions of Go templates that nodewatch does not run.
const UNSUPPORTED_ACTIONS: &[&str] = &["range", "define", "template", "block", "break", "continue"];

/// Most `if`/`with` blocks, or parentheses, one inside another: a bound on the parser's and
/// the expansion's recursion, far beyond what a rule needs.
const MAX_NESTING: usize = 100;

/// Whitespace as Go's template lexer sees it (trim markers and trimming).
const SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// One `{{ }}` of the text, comments left out.
struct Action<'s> {
    body: &'s str,
    /// Offset of `body` in the template.
    at: usize,
}

enum Token<'s> {
    Text(String),
    Action(Action<'s>),
}

/// What ended a list of nodes.
enum Close {
    Eof,
    End(usize),
    Else(usize),
    ElseIf(Vec<Command>, usize),
}

/// Parses `raw` into its nodes.
pub(super) fn parse(raw: &str) -> Result<Vec<Node>, TemplateError> {
    let mut tree = Tree {
        tokens: lex(raw)?.into_iter(),
        open: 0,
    };
    let (nodes, close) = tree.list(0)?;
    match close {
        Close::Eof => Ok(nodes),
        Close::End(at) => Err(err(at, "`{{ end }}` without an `if` or `with` to close")),
        Close::Else(at) | Close::ElseIf(_, at) => {
            Err(err(at, "`{{ else }}` outside an `if` or `with`"))
        }
    }
}

fn err(offset: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        offset,
        message: message.into(),
    }
}

/// Splits the text into text and actions, trimming around `{{-` and `-}}`.
fn lex(raw: &str) -> Result<Vec<Token<'_>>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = raw;
    let mut trim_next = false;
    while !rest.is_empty() {
        let at = raw.len() - rest.len();
        let Some(open) = rest.find("{{") else {
            push_text(&mut tokens, rest, trim_next, false);
            break;
        };
        let inner_start = open + 2;
        let inner = &rest[inner_start..];
        let trim_left = inner.starts_with('-') && inner[1..].starts_with(SPACE);
        push_text(&mut tokens, &rest[..open], trim_next, trim_left);
        let body_start = inner_start + if trim_left { 2 } else { 0 };
        let Some(close) = rest[body_start..].find("}}") else {
            return Err(err(at + open, "unclosed action `{{`"));
        };
        let mut body = &rest[body_start..body_start + close];
        trim_next = body.ends_with('-') && body[..body.len() - 1].ends_with(SPACE);
        if trim_next {
            body = &body[..body.len() - 2];
        }
        let trimmed = body.trim();
        if !(trimmed.starts_with("/*") && trimmed.ends_with("*/")) {
            tokens.push(Token::Action(Action {
                body,
                at: at + body_start,
            }));
        }
        rest = &rest[body_start + close + 2..];
    }
    Ok(tokens)
}

fn push_text(tokens: &mut Vec<Token<'_>>, text: &str, trim_start: bool, trim_end: bool) {
    let mut t = text;
    if trim_start {
        t = t.trim_start_matches(SPACE);
    }
    if trim_end {
        t = t.trim_end_matches(SPACE);
    }
    if !t.is_empty() {
        tokens.push(Token::Text(t.to_string()));
    }
}

struct Tree<'s> {
    tokens: std::vec::IntoIter<Token<'s>>,
    /// The `if`s and `with`s being parsed, one inside another.
    open: usize,
}

impl Tree<'_> {
    /// Nodes up to the `end`, `else` or end of text that closes them; `depth` counts the
    /// `with`s around them (where `.` is a value).
    fn list(&mut self, depth: usize) -> Result<(Vec<Node>, Close), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(token) = self.tokens.next() {
            let a = match token {
                Token::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Token::Action(a) => a,
            };
            let mut p = Parser {
                src: a.body,
                pos: 0,
                base: a.at,
                depth,
                parens: 0,
            };
            p.skip_space();
            let kw_at = a.at + p.pos;
            let mut ahead = p;
            let keyword = ahead.word();
            match keyword {
                "if" | "with" => {
                    p = ahead;
                    let pipe =
                        p.whole_pipeline(kw_at, &format!("missing value for `{keyword}`"))?;
                    if self.open == MAX_NESTING {
                        return Err(err(
                            kw_at,
                            format!("`if` and `with` nested more than {MAX_NESTING} deep"),
                        ));
                    }
                    self.open += 1;
                    nodes.push(if keyword == "if" {
                        self.if_rest(pipe, kw_at, depth)?
                    } else {
                        self.with_rest(pipe, kw_at, depth)?
                    });
                    self.open -= 1;
                }
                "else" => {
                    p = ahead;
                    p.skip_space();
                    let mut next = p;
                    return match next.word() {
                        "if" => {
                            let pipe = next.whole_pipeline(kw_at, "missing value for `else if`")?;
                            Ok((nodes, Close::ElseIf(pipe, kw_at)))
                        }
                        "with" => Err(err(
                            kw_at,
                            "`{{ else with }}` is not supported (Prometheus's Go templates refuse it): write `{{ else }}{{ with … }}…{{ end }}`",
                        )),
                        _ => {
                            p.nothing_after("else")?;
                            Ok((nodes, Close::Else(kw_at)))
                        }
                    };
                }
                "end" => {
                    p = ahead;
                    p.nothing_after("end")?;
                    return Ok((nodes, Close::End(kw_at)));
                }
                _ => {
                    let pipe = p.whole_pipeline(kw_at, "empty action `{{ }}`")?;
                    nodes.push(Node::Action(pipe));
                }
            }
        }
        Ok((nodes, Close::Eof))
    }

    /// The rest of an `if` (or `else if`) whose condition is parsed: `opened` is where the
    /// first `if` of the chain is written, for a missing `end` (one `end` closes the chain).
    fn if_rest(
        &mut self,
        cond: Vec<Command>,
        opened: usize,
        depth: usize,
    ) -> Result<Node, TemplateError> {
        let (then, close) = self.list(depth)?;
        let otherwise = match close {
            Close::End(_) => Vec::new(),
            Close::Eof => return Err(unclosed("if", opened)),
            Close::Else(_) => self.last_else(depth, "if", opened)?,
            Close::ElseIf(pipe, _) => vec![self.if_rest(pipe, opened, depth)?],
        };
        Ok(Node::If {
            cond,
            then,
            otherwise,
        })
    }

    fn with_rest(
        &mut self,
        value: Vec<Command>,
        opened: usize,
        depth: usize,
    ) -> Result<Node, TemplateError> {
        let (then, close) = self.list(depth + 1)?;
        let otherwise = match close {
            Close::End(_) => Vec::new(),
            Close::Eof => return Err(unclosed("with", opened)),
            Close::Else(_) => self.last_else(depth, "with", opened)?,
            Close::ElseIf(_, at) => {
                return Err(err(
                    at,
                    "`{{ else if }}` inside `with` is not supported (Prometheus's Go templates refuse it): write `{{ else }}{{ if … }}…{{ end }}`",
                ));
            }
        };
        Ok(Node::With {
            value,
            then,
            otherwise,
        })
    }

    /// The nodes after the last `else` of an `if` or `with`, up to its `end`.
    fn last_else(
        &mut self,
        depth: usize,
        what: &str,
        opened: usize,
    ) -> Result<Vec<Node>, TemplateError> {
        let (nodes, close) = self.list(depth)?;
        match close {
            Close::End(_) => Ok(nodes),
            Close::Eof => Err(unclosed(what, opened)),
            Close::Else(at) | Close::ElseIf(_, at) => Err(err(
                at,
                format!("a second `{{{{ else }}}}` in one `{what}`: expected `{{{{ end }}}}`"),
            )),
        }
    }
}

fn unclosed(what: &str, at: usize) -> TemplateError {
    err(
        at,
        format!("`{{{{ {what} }}}}` is never closed: missing `{{{{ end }}}}`"),
    )
}

#[derive(Clone, Copy)]
struct Parser<'s> {
    src: &'s str,
    pos: usize,
    base: usize,
    /// How many `with`s are around: inside one, `.` is the value it bound.
    depth: usize,
    /// Parentheses open at this point.
    parens: usize,
}

impl<'s> Parser<'s> {
    fn err(&self, message: String) -> TemplateError {
        err(self.base + self.pos, message)
    }

    fn skip_space(&mut self) {
        while self.src[self.pos..].starts_with(SPACE) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn word(&mut self) -> &'s str {
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

    /// A pipeline that is the rest of the action; `empty` is the message when there is none,
    /// placed at `at`.
    fn whole_pipeline(&mut self, at: usize, empty: &str) -> Result<Vec<Command>, TemplateError> {
        let pipe = self.pipeline()?;
        self.skip_space();
        if self.pos < self.src.len() {
            return Err(self.err(format!("unexpected `{}` in action", &self.src[self.pos..])));
        }
        if pipe.is_empty() {
            return Err(err(at, empty));
        }
        Ok(pipe)
    }

    fn nothing_after(&mut self, keyword: &str) -> Result<(), TemplateError> {
        self.skip_space();
        if self.pos < self.src.len() {
            return Err(self.err(format!(
                "unexpected `{}` after `{keyword}`",
                self.src[self.pos..].trim_end()
            )));
        }
        Ok(())
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
                if self.parens == MAX_NESTING {
                    return Err(
                        self.err(format!("parentheses nested more than {MAX_NESTING} deep"))
                    );
                }
                self.pos += 1;
                self.parens += 1;
                let p = self.pipeline()?;
                self.parens -= 1;
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
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Operand::Int(i));
                }
                text.parse()
                    .map(Operand::Num)
                    .map_err(|_| err(self.base + start, format!("bad number `{text}`")))
            }
            _ => {
                let w = self.word().to_string();
                let at = |message: String| err(self.base + start, message);
                if w.is_empty() {
                    let c = self.peek().unwrap_or(' ');
                    return Err(at(format!("unexpected `{c}`")));
                }
                if w.starts_with('$') || w.starts_with('.') {
                    return var(&w, self.depth).map_err(at);
                }
                if let Some((_, f)) = FUNCS.iter().find(|(n, _)| *n == w) {
                    if !first {
                        return Err(at(format!(
                            "function `{w}` used as an argument: wrap it in ( )"
                        )));
                    }
                    return Ok(Operand::Func(*f));
                }
                match w.as_str() {
                    "true" => return Ok(Operand::Bool(true)),
                    "false" => return Ok(Operand::Bool(false)),
                    "if" | "else" | "end" | "with" => {
                        return Err(at(format!(
                            "unexpected `{w}` inside an action: `{w}` must start it"
                        )));
                    }
                    _ => {}
                }
                let what = if UNSUPPORTED_ACTIONS.contains(&w.as_str()) {
                    format!("action `{w}`")
                } else if matches!(
                    w.as_str(),
                    "sortByLabel" | "strvalue" | "args" | "safeHtml" | "match" | "reReplaceAll"
                ) {
                    format!("function `{w}` (queries from templates)")
                } else {
                    format!("function `{w}`")
                };
                Err(at(format!(
                    "unsupported template {what}: nodewatch templates support if, else, with, end, $labels, $value, $externalLabels, $externalURL and the functions {}",
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

/// A variable or a field of `.`; `depth` is the number of `with`s around it.
fn var(w: &str, depth: usize) -> Result<Operand, String> {
    let mut parts = w.split('.');
    let head = parts.next().unwrap_or_default();
    let mut fields: Vec<String> = parts.map(str::to_string).collect();
    let v = if head.is_empty() {
        if depth > 0 {
            // Inside `with`, `.` is the value it bound: `.` or `.key` of a map.
            return match fields.as_slice() {
                [f] if f.is_empty() => Ok(Operand::Dot(None)),
                [f] => Ok(Operand::Dot(Some(f.clone()))),
                _ => Err(format!("unsupported field access `{w}`")),
            };
        }
        // `.Labels.port`: the first field names the variable.
        if fields.is_empty() || fields[0].is_empty() {
            return Err(
                "`.` on its own is supported only inside `with`; use $labels or $value".into(),
            );
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
