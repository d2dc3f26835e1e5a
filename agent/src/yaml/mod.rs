//! YAML with locations, at the bottom of the agent: every file the agent reads (the config,
//! rule files, rule tests) is parsed here, so every problem is reported the same way,
//! `file:line:col: key: message`, and the validators each section shares (durations with a
//! minimum, names, URLs, port lists) exist once.
//!
//! A file is read section by section ([`Document::section`]): a mistake in one section does not
//! hide the mistakes in another, and [`Document::finish`] reports them all, in file order.

mod gocompat;
mod validate;

use std::{cell::RefCell, collections::BTreeSet, fmt, marker::PhantomData, path::Path};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
};
pub use serde_saphyr::Spanned;

use self::validate::take_location;
pub use self::validate::{
    HumanDuration, Ports, duration_at_least, http_url, located, name, parse_duration,
};

/// A problem with a file the agent reads, located in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error(
        "{file}: writable by every user (mode {mode:04o}); the agent runs privileged and refuses it: chmod o-w {file}"
    )]
    WorldWritable { file: String, mode: u32 },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
}

/// Every problem of a file, in file order; shown one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl From<Error> for Errors {
    fn from(e: Error) -> Self {
        Self(vec![e])
    }
}

impl Error {
    fn place(&self) -> (u64, u64) {
        match self {
            Error::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        }
    }
}

/// Reads a file the agent trusts; one that any user may change is refused: whoever writes
/// the agent's config or rules decides what a privileged process reads and where it sends
/// alerts.
pub fn read_trusted(path: &Path) -> Result<String, Error> {
    refuse_world_writable(path)?;
    std::fs::read_to_string(path).map_err(|e| Error::Read {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Refuses a file any user may write. (A missing file is left to the read that follows, for
/// its usual message.)
pub fn refuse_world_writable(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(Error::WorldWritable {
            file: path.display().to_string(),
            mode: m.permissions().mode() & 0o7777,
        }),
        _ => Ok(()),
    }
}

/// One YAML file, read section by section; the problems of every section are collected.
pub struct Document<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<Error>,
    /// Sections found not to be mappings: nothing below them is read again.
    broken: Vec<String>,
}

impl<'a> Document<'a> {
    /// Checks what no section can fix (characters YAML does not allow, broken syntax); `file`
    /// only names the source in errors.
    pub fn new(file: &'a str, text: &'a str) -> Result<Self, Error> {
        if let Some((line, column)) = control_char(text) {
            return Err(Error::Invalid {
                file: file.to_string(),
                line,
                column,
                message: "control character in the file: YAML allows only printable text".into(),
            });
        }
        let doc = Self {
            file,
            text,
            errors: Vec::new(),
            broken: Vec::new(),
        };
        // Syntax errors stop every section at the same place: report them once.
        doc.read::<IgnoredAny>(&[])?;
        Ok(doc)
    }

    /// Whether the text holds nothing but comments (all defaults).
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        })
    }

    /// Checks the keys of the mapping at `path` against `known`, as serde's
    /// `deny_unknown_fields` does (same wording), reporting every unknown or repeated key.
    /// False when the value there is not a mapping (reported) or absent: skip its sections.
    pub fn keys(&mut self, path: &[&str], known: &'static [&'static str]) -> bool {
        if self.is_broken(path) {
            return false;
        }
        match self.read::<KeyList>(path) {
            Ok(None) => false,
            Ok(Some(KeyList(keys))) => {
                let mut seen = BTreeSet::new();
                for key in keys {
                    // Worded by the parser's own error type, as for the keys inside a section.
                    type E = serde_saphyr::Error;
                    let message = if !known.contains(&key.value.as_str()) {
                        <E as de::Error>::unknown_field(&key.value, known)
                    } else if !seen.insert(key.value.clone()) {
                        <E as de::Error>::duplicate_field(known_name(known, &key.value))
                    } else {
                        continue;
                    };
                    let message = strip_location(&message.to_string());
                    let mut full: Vec<&str> = path.to_vec();
                    full.push(&key.value);
                    self.errors.push(Error::Invalid {
                        file: self.file.to_string(),
                        line: key.referenced.line(),
                        column: key.referenced.column(),
                        message: format!("{}: {message}", full.join(".")),
                    });
                }
                true
            }
            Err(e) => {
                self.errors.push(e);
                self.broken.push(path.join("."));
                false
            }
        }
    }

    /// The value at `path` (mapping keys from the top) as `T`, or `None` when it is absent
    /// or invalid (the problem is recorded).
    pub fn section<T: DeserializeOwned>(&mut self, path: &[&str]) -> Option<T> {
        if self.is_broken(path) {
            return None;
        }
        match self.read::<T>(path) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    /// Records a problem that spans sections, placed at the key `path` (dotted, as written in
    /// the file) or at the top of the file when it is not written there.
    pub fn invalid(&mut self, path: &str, message: impl fmt::Display) {
        let (line, column) = locate(self.text, path).unwrap_or((1, 1));
        self.errors.push(Error::Invalid {
            file: self.file.to_string(),
            line,
            column,
            message: format!("{path}: {message}"),
        });
    }

    /// Every problem found, in file order; none means the file is valid.
    pub fn finish(self) -> Result<(), Errors> {
        let mut errors = self.errors;
        errors.sort_by_key(Error::place);
        errors.dedup();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Errors(errors))
        }
    }

    fn is_broken(&self, path: &[&str]) -> bool {
        (0..path.len()).any(|n| self.broken.contains(&path[..n].join(".")))
    }

    /// Deserializes the value at `path`; serde's path inside it names the key in errors.
    fn read<T: DeserializeOwned>(&self, path: &[&str]) -> Result<Option<T>, Error> {
        let options = serde_saphyr::Options {
            with_snippet: false,
            ..Default::default()
        };
        let inner = RefCell::new(None);
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(self.text, options, |de| {
                Descend::<T> {
                    path,
                    inner: &inner,
                    _t: PhantomData,
                }
                .deserialize(de)
            });
        parsed.map_err(|e| {
            let inner = inner.into_inner();
            let mut keys: Vec<String> = path.iter().map(|k| k.to_string()).collect();
            if let Some(p) = inner.as_deref().filter(|p| *p != ".") {
                // `Spanned` leaves add a `.value` segment that is not in the file.
                let p = p.strip_suffix(".value").unwrap_or(p);
                if p.starts_with('[') && !keys.is_empty() {
                    let last = keys.pop().unwrap_or_default();
                    keys.push(format!("{last}{p}"));
                } else {
                    keys.push(p.to_string());
                }
            }
            self.error(&e, &keys.join("."))
        })
    }

    /// An error of the parser as `file:line:col: key: message`.
    fn error(&self, e: &serde_saphyr::Error, key: &str) -> Error {
        let full = strip_location(&e.to_string());
        let (line, column, mut message) = match take_location(&full) {
            Some((line, column, text)) => (line, column, text.to_string()),
            None => {
                // For serde's field errors the parser only knows where the enclosing mapping
                // starts; find the key they are about in the text instead.
                let about_key = ["unknown field", "duplicate field"]
                    .iter()
                    .any(|m| full.starts_with(m));
                let key_at = || (!key.is_empty()).then(|| locate(self.text, key)).flatten();
                let parser_at = || {
                    e.location()
                        .filter(|l| l.line() > 0)
                        .map(|l| (l.line(), l.column()))
                };
                let at = if about_key {
                    key_at().or_else(parser_at)
                } else {
                    parser_at().or_else(key_at)
                };
                let (line, column) = at.unwrap_or((1, 1));
                (line, column, full.clone())
            }
        };
        if !key.is_empty() {
            message = format!("{key}: {message}");
        }
        Error::Invalid {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }
}

/// Parses a whole YAML document as `T` (rule files, rule tests); the first problem is
/// reported as `file:line:col: key: message`.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Error> {
    let read = |text: &str| -> Result<T, Error> {
        let doc = Document::new(file, text)?;
        doc.read::<T>(&[])
            .map(|v| v.expect("the root of a document is always present"))
    };
    match read(text) {
        Err(e) if e.to_string().contains(gocompat::QUOTED_INDENT) => {
            read(&gocompat::indent_quoted_continuations(text)).map_err(|_| e)
        }
        other => other,
    }
}

/// The spelling of `key` in `known`, for serde's `duplicate_field` (which takes a `'static`).
fn known_name(known: &'static [&'static str], key: &str) -> &'static str {
    known.iter().find(|k| **k == key).copied().unwrap_or("")
}

/// Finds the value at `path` and deserializes it as `T`, passing over the rest of the document.
struct Descend<'p, T> {
    path: &'p [&'p str],
    /// serde's path inside the value, when deserializing it failed.
    inner: &'p RefCell<Option<String>>,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Descend<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.path.split_first() {
            None => match serde_path_to_error::deserialize(d) {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    *self.inner.borrow_mut() = Some(e.path().to_string());
                    Err(e.into_inner())
                }
            },
            Some((key, rest)) => d.deserialize_map(Step::<T> {
                key,
                rest,
                inner: self.inner,
                _t: PhantomData,
            }),
        }
    }
}

struct Step<'p, T> {
    key: &'p str,
    rest: &'p [&'p str],
    inner: &'p RefCell<Option<String>>,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Step<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    // An empty document or `key:` with nothing after it: nothing below is set.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key && found.is_none() {
                found = map.next_value_seed(Descend::<T> {
                    path: self.rest,
                    inner: self.inner,
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The keys of a mapping, located.
struct KeyList(Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyList, E> {
                Ok(KeyList(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(KeyList(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Line and column (1-based) of the first character YAML does not allow.
fn control_char(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        line.chars()
            .position(|c| c.is_control() && c != '\t' && c != '\r')
            .map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

/// Where the last key of a serde path (`probes.tcp_retransmits.ports[1]`) is written: each
/// key is searched for after the previous one, as `key:` in block or flow style.
fn locate(text: &str, path: &str) -> Option<(u64, u64)> {
    let mut pos = 0;
    for key in path.split('.').map(|k| k.split('[').next().unwrap_or(k)) {
        if key.is_empty() {
            continue;
        }
        pos += text[pos..].match_indices(key).find_map(|(i, _)| {
            let at = pos + i;
            let before = text[..at].chars().next_back();
            let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
            let starts = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
            (starts && after.starts_with(':')).then_some(i)
        })?;
    }
    let line = text[..pos].matches('\n').count() as u64 + 1;
    let column = text[..pos]
        .rsplit('\n')
        .next()
        .unwrap_or("")
        .chars()
        .count() as u64
        + 1;
    Some((line, column))
}

/// serde-saphyr appends " at line L, column C"; the location is reported in front instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(", column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct S {
        a: u16,
    }

    #[test]
    fn sections_are_read_on_their_own_and_every_error_is_kept() {
        let text = "one: { a: x }\ntwo: { a: 2 }\nthree:\n  a: 1\n  b: 2\nfour: 1\n";
        let mut doc = Document::new("f.yaml", text).unwrap();
        assert!(doc.keys(&[], &["one", "two", "three"]));
        assert_eq!(doc.section::<S>(&["one"]), None);
        assert_eq!(doc.section::<S>(&["two"]), Some(S { a: 2 }));
        assert_eq!(doc.section::<S>(&["three"]), None);
        assert_eq!(doc.section::<S>(&["absent"]), None);
        let errors: Vec<String> = doc
            .finish()
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("f.yaml:1:11: one.a: "), "{errors:#?}");
        assert!(
            errors[1].starts_with("f.yaml:5:3: three.b: unknown field `b`, expected one of a"),
            "{errors:#?}"
        );
        assert_eq!(
            errors[2],
            "f.yaml:6:1: four: unknown field `four`, expected one of one, two, three"
        );
    }

    #[test]
    fn a_section_that_is_not_a_mapping_is_reported_once() {
        let mut doc = Document::new("f.yaml", "top: [1, 2]\n").unwrap();
        assert!(!doc.keys(&["top"], &["a"]));
        assert_eq!(doc.section::<S>(&["top", "a"]), None);
        assert_eq!(doc.finish().unwrap_err().0.len(), 1);
    }
}
