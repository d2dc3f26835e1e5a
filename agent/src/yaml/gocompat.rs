//! What Go's YAML (gopkg.in/yaml, which Prometheus reads rule files with) accepts and the YAML
//! spec does not: a quoted scalar continued on lines indented no deeper than its key.
//! Indenting those lines changes nothing in the value (folding drops leading whitespace), so
//! a file the parser refuses for that alone is read again with them indented.

/// The message of the parser for such a scalar.
pub const QUOTED_INDENT: &str = "invalid indentation in multiline quoted scalar";

/// `text` with every continuation line of a multi-line quoted scalar indented as deep as the
/// opening quote; block scalars (`|`, `>`) are left alone.
pub fn indent_quoted_continuations(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    // Open quote and the indentation continuation lines need.
    let mut open: Option<(char, usize)> = None;
    // Indentation of the line that started a block scalar.
    let mut block: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let blank = line.trim().is_empty();
        if let Some(b) = block {
            if blank || indent > b {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        let mut line = line.to_string();
        let mut from = 0;
        if let Some((_, need)) = open
            && !blank
            && indent < need
        {
            line.insert_str(0, &" ".repeat(need - indent));
            from = need;
        }
        let (still_open, starts_block) = scan(&line[from..], open.map(|o| o.0));
        open = match (open, still_open) {
            (Some(o), Some(_)) => Some(o),
            (_, Some((q, at))) => Some((q, from + at)),
            (_, None) => None,
        };
        if starts_block {
            block = Some(indent);
        }
        out.push_str(&line);
    }
    out
}

/// Scans one line from inside quote `q` (or outside): the quote open at its end and the
/// column it opened at, and whether the line starts a block scalar.
fn scan(line: &str, mut q: Option<char>) -> (Option<(char, usize)>, bool) {
    let mut opened_at = 0;
    let chars: Vec<char> = line.trim_end_matches(['\n', '\r']).chars().collect();
    let mut prev = ' ';
    let mut i = 0;
    let mut last_value_start = None;
    while i < chars.len() {
        let c = chars[i];
        match q {
            Some('"') if c == '\\' => i += 1,
            Some('"') if c == '"' => q = None,
            Some('\'') if c == '\'' => {
                if chars.get(i + 1) == Some(&'\'') {
                    i += 1;
                } else {
                    q = None;
                }
            }
            Some(_) => {}
            None if c == '#' && prev.is_whitespace() => break,
            None if (c == '"' || c == '\'')
                && (prev.is_whitespace() || matches!(prev, '[' | '{' | ','))
                && starts_value(&chars[..i]) =>
            {
                q = Some(c);
                opened_at = i;
            }
            None if !c.is_whitespace() && prev.is_whitespace() => last_value_start = Some(i),
            None => {}
        }
        prev = c;
        i += 1;
    }
    let block = q.is_none()
        && last_value_start.is_some_and(|s| {
            let word: String = chars[s..].iter().collect();
            let word = word.split(" #").next().unwrap_or("").trim();
            (word.starts_with('|') || word.starts_with('>'))
                && word[1..]
                    .chars()
                    .all(|c| matches!(c, '-' | '+') || c.is_ascii_digit())
        });
    (q.map(|q| (q, opened_at)), block)
}

/// Whether a quote after `before` starts a scalar: at the start of the line's content, after
/// `key:`, `-`, or inside a flow collection.
fn starts_value(before: &[char]) -> bool {
    let t: String = before.iter().collect();
    let t = t.trim_end();
    t.is_empty() || t.ends_with(':') || t.ends_with('-') || t.ends_with(['[', '{', ','])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_are_indented_and_nothing_else_moves() {
        let text = "a:\n  b: \"one\n  two\"\n  c: 'x''s\n  y'\n  d: |\n    \"not\n  e: plain # \"c\n  f: \"q\"\n";
        assert_eq!(
            indent_quoted_continuations(text),
            "a:\n  b: \"one\n     two\"\n  c: 'x''s\n     y'\n  d: |\n    \"not\n  e: plain # \"c\n  f: \"q\"\n"
        );
    }
}
