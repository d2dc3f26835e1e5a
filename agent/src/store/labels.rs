//! Label sets as Prometheus has them: sorted by name, no empty values, `__name__` included.

use std::fmt;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A set of labels sorted by name. Ordering is Prometheus's `labels.Compare`: pairwise by name,
/// then value, then length.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// An empty label set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a set from pairs in any order; empty values are dropped, a later duplicate wins.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut l = Self::new();
        for (k, v) in pairs {
            l.set(k.into(), v.into());
        }
        l
    }

    /// An empty label set with room for `n` labels.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// The metric name, if any.
    pub fn name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Sets `name` to `value`; an empty value removes the label, as in Prometheus.
    pub fn set(&mut self, name: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = value,
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    /// A copy without the metric name.
    pub fn without_name(&self) -> Self {
        let mut l = self.clone();
        l.remove(METRIC_NAME);
        l
    }

    /// Keeps only the labels named in `names`.
    pub fn keep(&mut self, names: &[String]) {
        self.0.retain(|(k, _)| names.iter().any(|n| n == k));
    }

    /// Removes every label named in `names`.
    pub fn drop_all(&mut self, names: &[String]) {
        self.0.retain(|(k, _)| !names.iter().any(|n| n == k));
    }

    /// The name/value pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The matching key of vector matching: with `on`, only the listed labels; otherwise all
    /// labels but the listed ones and the metric name.
    pub fn signature(&self, on: bool, names: &[String]) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, _)| {
                let listed = names.iter().any(|n| n == k);
                if on {
                    listed
                } else {
                    !listed && k != METRIC_NAME
                }
            })
            .cloned()
            .collect()
    }
}

/// Prometheus's `labels.String()`: `{__name__="up", job="x"}`.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={}", go_quote(v))?;
        }
        f.write_str("}")
    }
}

/// Go's `strconv.Quote` for the strings labels hold.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_empty_values_dropped() {
        let l = Labels::from_pairs([("b", "2"), ("__name__", "x"), ("a", "1"), ("c", "")]);
        assert_eq!(l.to_string(), r#"{__name__="x", a="1", b="2"}"#);
        assert_eq!(l.name(), Some("x"));
        assert_eq!(l.without_name().to_string(), r#"{a="1", b="2"}"#);
    }

    #[test]
    fn order_is_prometheus_compare() {
        let a = Labels::from_pairs([("a", "1")]);
        let b = Labels::from_pairs([("a", "1"), ("b", "1")]);
        let c = Labels::from_pairs([("a", "2")]);
        assert!(a < b && b < c);
    }

    #[test]
    fn names() {
        assert!(is_label_name("port") && is_label_name("_x1"));
        assert!(!is_label_name("1x") && !is_label_name("a:b") && !is_label_name(""));
        assert!(is_metric_name("job:rate:5m") && !is_metric_name("a-b"));
        assert_eq!(go_quote("a\"b\\\n"), r#""a\"b\\\n""#);
    }
}
