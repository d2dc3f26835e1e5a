//! The validators every config section shares: durations with a minimum, names, URLs, port
//! lists; and [`located`], which gives a validation error the place of the value it is about.

use std::{collections::BTreeSet, fmt, time::Duration};

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::Spanned;

/// Marks a message from our own validation with the location of the value it is about, so
/// the parser can report it (serde's custom errors carry no location).
const LOC_MARK: char = '\u{1}';

/// A deserialization error about the value `at`, with its location.
pub fn located<T, E: de::Error>(at: &Spanned<T>, msg: impl fmt::Display) -> E {
    let l = &at.referenced;
    E::custom(format!(
        "{LOC_MARK}{}:{}{LOC_MARK}{msg}",
        l.line(),
        l.column()
    ))
}

/// Splits a message made by [`located`] into its location and text.
pub(super) fn take_location(msg: &str) -> Option<(u64, u64, &str)> {
    let rest = msg.strip_prefix(LOC_MARK)?;
    let (loc, text) = rest.split_once(LOC_MARK)?;
    let (line, col) = loc.split_once(':')?;
    Some((line.parse().ok()?, col.parse().ok()?, text))
}

/// A duration written the human way (`500ms`, `1s`, `2m`).
pub fn parse_duration<E: de::Error>(text: &Spanned<String>) -> Result<Duration, E> {
    humantime::parse_duration(text.value.trim()).map_err(|e| {
        located(
            text,
            format!(
                "invalid duration `{}` ({e}): write a number with a unit, such as 500ms, 1s or 2m",
                text.value
            ),
        )
    })
}

/// A duration of at least `min`; `what` names it in the message (`interval`, or empty).
pub fn duration_at_least<E: de::Error>(
    text: &Spanned<String>,
    min: Duration,
    what: &str,
) -> Result<Duration, E> {
    let d = parse_duration(text)?;
    if d < min {
        let what = if what.is_empty() {
            String::new()
        } else {
            format!("{what} ")
        };
        return Err(located(
            text,
            format!(
                "{what}{} is too short: the minimum is {}",
                humantime::format_duration(d),
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(d)
}

/// A duration written the human way (`0s`, `500ms`, `30s`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        Ok(Self(parse_duration(&text)?))
    }
}

/// A name that becomes a label value, a URL path or a folder name: 1-64 ASCII letters,
/// digits and the punctuation in `punct`; `what` names the thing named (`heartbeat`).
pub fn name<E: de::Error>(at: &Spanned<String>, what: &str, punct: &[char]) -> Result<(), E> {
    let v = &at.value;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || punct.contains(&c));
    if ok {
        return Ok(());
    }
    let listed: Vec<String> = punct.iter().map(|c| format!("`{c}`")).collect();
    let punct = match listed.split_last() {
        None => String::new(),
        Some((last, [])) => format!(" or {last}"),
        Some((last, rest)) => format!(", {} or {last}", rest.join(", ")),
    };
    Err(located(
        at,
        format!("{what} name `{v}` must be 1-64 letters, digits{punct}"),
    ))
}

/// An `http://` or `https://` URL with a host; `form` shows the expected shape (in the
/// message).
pub fn http_url<E: de::Error>(at: &Spanned<String>, form: &str) -> Result<http::Uri, E> {
    let uri: http::Uri = at
        .value
        .parse()
        .map_err(|e| located(at, format!("invalid URL `{}`: {e}", at.value)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(located(at, format!("URL `{}` must be {form}", at.value)));
    }
    Ok(uri)
}

/// A list of distinct TCP ports, 1–65535, at most `MAX` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports<const MAX: usize>(pub Vec<u16>);

impl<'de, const MAX: usize> Deserialize<'de> for Ports<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ports = Vec::<Spanned<u16>>::deserialize(d)?;
        if ports.len() > MAX {
            return Err(located(
                &ports[MAX],
                format!("{} ports listed; at most {MAX} can be watched", ports.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &ports {
            if p.value == 0 {
                return Err(located(p, "port 0 is not a port; use 1-65535"));
            }
            if !seen.insert(p.value) {
                return Err(located(p, format!("port {} is listed twice", p.value)));
            }
        }
        Ok(Self(ports.into_iter().map(|p| p.value).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls_share_one_rule() {
        let s = |v: &str| serde_saphyr::from_str::<Spanned<String>>(v).unwrap();
        let e = name::<de::value::Error>(&s("a b"), "heartbeat", &['_', '-', '.'])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("heartbeat name `a b` must be 1-64 letters, digits, `_`, `-` or `.`"),
            "{e}"
        );
        let e = name::<de::value::Error>(&s("a.b"), "notifier", &['_', '-'])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("`_` or `-`"), "{e}");
        assert!(name::<de::value::Error>(&s(&"x".repeat(65)), "n", &[]).is_err());
        assert!(http_url::<de::value::Error>(&s("ftp://x"), "http://host").is_err());
        assert!(http_url::<de::value::Error>(&s("http://x:1/p"), "http://host").is_ok());
        assert!(http_url::<de::value::Error>(&s("https://x/p"), "http://host").is_ok());
    }
}
