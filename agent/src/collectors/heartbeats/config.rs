//! `heartbeats:` in the configuration: one entry per local service to watch.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::Spanned;

use crate::{
    httpc,
    yaml::{self, duration_at_least, located},
};

/// What a heartbeat entry looks like in the file. Exactly one of `url`, `tcp` and `push_ttl`
/// says what kind of check it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    /// The target's name: the `target` label, and the path of a push heartbeat
    /// (`POST /api/v1/heartbeat/{name}`). Letters, digits, `_`, `-` and `.`; unique.
    name: Spanned<String>,
    /// HTTP check: `GET` this `http://` or `https://` URL; up when the status is expected and the body
    /// matches.
    url: Option<Spanned<String>>,
    /// TCP check: connect to this `host:port`.
    tcp: Option<Spanned<String>>,
    /// Push heartbeat: down when no `POST /api/v1/heartbeat/{name}` came within this time.
    push_ttl: Option<Spanned<String>>,
    /// How often an HTTP or TCP check runs. Default `1s`; at least `100ms`.
    interval: Option<Spanned<String>>,
    /// How long one HTTP or TCP check may take before it counts as down (`timeout`).
    /// Default `500ms`; at most `interval`.
    timeout: Option<Spanned<String>>,
    /// HTTP: the statuses that count as up. Default: any 2xx.
    expect_status: Option<Vec<Spanned<u16>>>,
    /// HTTP: the body must contain this text.
    body_contains: Option<String>,
    /// HTTP: the body must match this regular expression (Rust `regex` syntax).
    body_regex: Option<Spanned<String>>,
    /// HTTP and TCP: how many times a failed check is tried again, `retry_interval` apart,
    /// before the failure counts (a check and its retries are one result). Default 3; 0-10.
    retries: Option<Spanned<u32>>,
    /// HTTP and TCP: the time between the starts of a failed check and its retries, and how
    /// long each retry may take. Default `100ms`; at least `10ms`, at most `interval`.
    retry_interval: Option<Spanned<String>>,
    /// Consecutive failed checks (each with its retries) before the target is reported down.
    /// Default 1.
    down_after: Option<Spanned<u32>>,
    /// Consecutive successful checks before a down target is reported up again. Default 1.
    up_after: Option<Spanned<u32>>,
    /// HTTP: how the target is reached (basic auth, authorization, TLS with a private CA or a
    /// client certificate, proxy, redirects), with Prometheus's keys. Default: none of them.
    #[serde(default)]
    http_config: httpc::HttpConfig,
}

/// One validated heartbeat target.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub name: String,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Retries of a failed check before it counts; 0 for push targets.
    pub retries: u32,
    pub retry_interval: Duration,
    pub down_after: u32,
    pub up_after: u32,
}

/// The kind of check.
#[derive(Debug, Clone)]
pub enum Check {
    Http {
        uri: http::Uri,
        /// The client of this target's `http_config`.
        client: std::sync::Arc<httpc::Client>,
        /// Empty: any 2xx.
        expect_status: Vec<u16>,
        body_contains: Option<String>,
        body_regex: Option<regex::Regex>,
    },
    Tcp {
        addr: String,
    },
    Push {
        ttl: Duration,
    },
}

impl PartialEq for HeartbeatConfig {
    fn eq(&self, other: &Self) -> bool {
        // Regexes do not compare; their source text does.
        format!("{self:?}") == format!("{other:?}")
    }
}

/// Most heartbeat targets: each is a task and a few series (`target` label values).
pub const MAX_HEARTBEATS: usize = 256;

/// Most retries of one failed check.
pub const MAX_RETRIES: u32 = 10;

/// The `heartbeats:` list: names are unique, at most [`MAX_HEARTBEATS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeartbeatsConfig(pub Vec<HeartbeatConfig>);

impl<'de> Deserialize<'de> for HeartbeatsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<RawHeartbeat>::deserialize(d)?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        if let Some(r) = raw.get(MAX_HEARTBEATS) {
            return Err(located(
                &r.name,
                format!(
                    "{} heartbeats listed; at most {MAX_HEARTBEATS} are allowed",
                    raw.len()
                ),
            ));
        }
        for r in raw {
            if !seen.insert(r.name.value.clone()) {
                return Err(located(
                    &r.name,
                    format!("heartbeat `{}` is listed twice", r.name.value),
                ));
            }
            out.push(validate(r)?);
        }
        Ok(Self(out))
    }
}

fn duration<E: de::Error>(
    field: &Option<Spanned<String>>,
    default: Duration,
    min: Duration,
) -> Result<Duration, E> {
    match field {
        None => Ok(default),
        Some(text) => duration_at_least(text, min, ""),
    }
}

fn validate<E: de::Error>(r: RawHeartbeat) -> Result<HeartbeatConfig, E> {
    let name = &r.name;
    yaml::name(name, "heartbeat", &['_', '-', '.'])?;
    let kinds = [r.url.is_some(), r.tcp.is_some(), r.push_ttl.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(located(
            name,
            format!(
                "heartbeat `{}` needs exactly one of `url` (HTTP), `tcp` (connect) or `push_ttl` (push)",
                name.value
            ),
        ));
    }
    let http_only = r.expect_status.is_some()
        || r.body_contains.is_some()
        || r.body_regex.is_some()
        || r.http_config != httpc::HttpConfig::default();
    if http_only && r.url.is_none() {
        return Err(located(
            name,
            format!(
                "heartbeat `{}`: expect_status, body_contains, body_regex and http_config apply to `url` checks only",
                name.value
            ),
        ));
    }
    let min = Duration::from_millis(100);
    let interval = duration(&r.interval, Duration::from_secs(1), min)?;
    let timeout = duration(
        &r.timeout,
        Duration::from_millis(500),
        Duration::from_millis(1),
    )?;
    if let Some(t) = &r.timeout
        && timeout > interval
    {
        return Err(located(
            t,
            format!(
                "timeout {} is longer than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    let push = r.push_ttl.is_some();
    if push && (r.retries.is_some() || r.retry_interval.is_some()) {
        return Err(located(
            name,
            format!(
                "heartbeat `{}`: retries and retry_interval apply to `url` and `tcp` checks only",
                name.value
            ),
        ));
    }
    let retries = match &r.retries {
        None if push => 0,
        None => 3,
        Some(v) if v.value > MAX_RETRIES => {
            return Err(located(
                v,
                format!("retries {} is too many: at most {MAX_RETRIES}", v.value),
            ));
        }
        Some(v) => v.value,
    };
    let retry_interval = duration(
        &r.retry_interval,
        Duration::from_millis(100),
        Duration::from_millis(10),
    )?;
    if let Some(ri) = &r.retry_interval
        && retry_interval > interval
    {
        return Err(located(
            ri,
            format!(
                "retry_interval {} is longer than the interval {}",
                humantime::format_duration(retry_interval),
                humantime::format_duration(interval)
            ),
        ));
    }
    let damping = |f: &Option<Spanned<u32>>, key: &str| -> Result<u32, E> {
        match f {
            None => Ok(1),
            Some(v) if v.value == 0 => Err(located(v, format!("{key} must be at least 1"))),
            Some(v) => Ok(v.value),
        }
    };
    let check = if let Some(url) = &r.url {
        let uri = yaml::http_url(url, "http(s)://host[:port]/path")?;
        let client = httpc::Client::new(&r.http_config)
            .map_err(|e| located(url, format!("http_config: {e}")))?;
        let mut expect_status = Vec::new();
        for s in r.expect_status.iter().flatten() {
            if !(100..=599).contains(&s.value) {
                return Err(located(s, format!("{} is not an HTTP status", s.value)));
            }
            expect_status.push(s.value);
        }
        let body_regex = r
            .body_regex
            .as_ref()
            .map(|re| {
                regex::Regex::new(&re.value)
                    .map_err(|e| located(re, format!("invalid body_regex: {e}")))
            })
            .transpose()?;
        Check::Http {
            uri,
            client: std::sync::Arc::new(client),
            expect_status,
            body_contains: r.body_contains.clone(),
            body_regex,
        }
    } else if let Some(addr) = &r.tcp {
        let ok = addr.value.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(located(
                addr,
                format!("tcp `{}` must be host:port", addr.value),
            ));
        }
        Check::Tcp {
            addr: addr.value.clone(),
        }
    } else {
        Check::Push {
            ttl: duration(&r.push_ttl, Duration::ZERO, min)?,
        }
    };
    Ok(HeartbeatConfig {
        name: name.value.clone(),
        check,
        interval,
        timeout,
        retries,
        retry_interval,
        down_after: damping(&r.down_after, "down_after")?,
        up_after: damping(&r.up_after, "up_after")?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::MAX_HEARTBEATS;
    use crate::config::Config;

    #[test]
    fn retries_default_and_are_validated() {
        let one = |entry: &str| {
            Config::parse("c.yaml", &format!("heartbeats:\n  - {entry}\n"))
                .map(|c| c.heartbeats.0[0].clone())
                .map_err(|e| e.to_string())
        };
        let t = one("{ name: a, tcp: \"x:1\" }").unwrap();
        assert_eq!(
            (t.retries, t.retry_interval),
            (3, Duration::from_millis(100))
        );
        let t = one("{ name: a, tcp: \"x:1\", retries: 0, retry_interval: 50ms }").unwrap();
        assert_eq!(
            (t.retries, t.retry_interval),
            (0, Duration::from_millis(50))
        );
        assert_eq!(one("{ name: a, push_ttl: 1s }").unwrap().retries, 0);
        for (entry, want) in [
            (
                "{ name: a, tcp: \"x:1\", retries: 11 }",
                "c.yaml:2:37: heartbeats: retries 11 is too many: at most 10",
            ),
            (
                "{ name: a, tcp: \"x:1\", retry_interval: 5ms }",
                "c.yaml:2:44: heartbeats: 5ms is too short: the minimum is 10ms",
            ),
            (
                "{ name: a, tcp: \"x:1\", interval: 200ms, retry_interval: 300ms }",
                "c.yaml:2:61: heartbeats: retry_interval 300ms is longer than the interval 200ms",
            ),
            (
                "{ name: a, push_ttl: 1s, retries: 2 }",
                "c.yaml:2:13: heartbeats: heartbeat `a`: retries and retry_interval apply to `url` and `tcp` checks only",
            ),
        ] {
            let e = one(entry).unwrap_err();
            assert!(e.starts_with(want), "{entry}: {e}");
        }
    }

    #[test]
    fn heartbeat_targets_are_capped() {
        let list = |n: usize| {
            let mut t = String::from("heartbeats:\n");
            for i in 0..n {
                t.push_str(&format!("  - {{ name: t{i}, push_ttl: 10s }}\n"));
            }
            t
        };
        assert!(Config::parse("c.yaml", &list(MAX_HEARTBEATS)).is_ok());
        let err = Config::parse("c.yaml", &list(MAX_HEARTBEATS + 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("c.yaml:{}:", MAX_HEARTBEATS + 2))
                && err.contains("at most 256"),
            "{err}"
        );
    }
}
