//! `scrape:` in the configuration: local targets (a model server, node_exporter,
//! dcgm-exporter) whose `/metrics` the rules read, each entry one target.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::Spanned;

use crate::{
    httpc,
    yaml::{self, duration_at_least, located},
};

/// What a scrape entry looks like in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    /// The `job` label of every series of this target (as Prometheus's `job_name`). Letters,
    /// digits, `_`, `-` and `.`.
    job: Spanned<String>,
    /// The `http(s)://host[:port]/path` of the target's metrics. Its `host:port` is the
    /// `instance` label (port 80 or 443 when none is given); a job and instance pair is
    /// listed once.
    url: Spanned<String>,
    /// How often the target is scraped. Default: the agent's `interval`; at least `100ms`.
    interval: Option<Spanned<String>>,
    /// How long one scrape may take; a slower one fails (`up` 0). Default `500ms` (or the
    /// interval, when that is shorter); at most the interval.
    timeout: Option<Spanned<String>>,
    /// Most samples one scrape may give; a scrape with more fails as a whole (`up` 0, none
    /// of its samples kept), as in Prometheus. Default 20000; 1-1000000.
    sample_limit: Option<Spanned<u64>>,
    /// Most bytes of a response body; a larger body fails the scrape. Default `16MiB`; a
    /// number of bytes with a unit `B`, `KiB`, `MiB` (or `KB`, `MB`, read as powers of two, as
    /// Prometheus reads them), at most `256MiB`.
    body_size_limit: Option<Spanned<String>>,
    /// How the target is reached (basic auth, authorization, TLS with a private CA or a
    /// client certificate, proxy, redirects), with Prometheus's keys. Default: none of them.
    #[serde(default)]
    http_config: httpc::HttpConfig,
}

/// One validated scrape target.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub job: String,
    pub url: http::Uri,
    /// The client of this target's `http_config`.
    pub client: std::sync::Arc<httpc::Client>,
    /// `host:port` of the URL, the port filled in as Prometheus fills it.
    pub instance: String,
    /// `None`: the agent's interval.
    pub interval: Option<Duration>,
    /// `None`: 500 ms, or the interval when shorter.
    pub timeout: Option<Duration>,
    pub sample_limit: usize,
    pub body_size_limit: usize,
}

impl PartialEq for ScrapeTarget {
    fn eq(&self, other: &Self) -> bool {
        // A client does not compare; the `http_config` it was made from does (in its Debug).
        format!("{self:?}") == format!("{other:?}")
    }
}

/// The default timeout of a scrape.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The default `sample_limit`.
pub const DEFAULT_SAMPLE_LIMIT: usize = 20_000;
/// The largest `sample_limit`.
pub const MAX_SAMPLE_LIMIT: u64 = 1_000_000;
/// The default `body_size_limit`.
pub const DEFAULT_BODY_SIZE_LIMIT: usize = 16 << 20;
/// The largest `body_size_limit`.
pub const MAX_BODY_SIZE_LIMIT: usize = 256 << 20;
/// Most scrape targets: each is a task and its series.
pub const MAX_TARGETS: usize = 64;

impl ScrapeTarget {
    /// How often it is scraped, given the agent's interval.
    pub fn interval(&self, agent: Duration) -> Duration {
        self.interval.unwrap_or(agent)
    }

    /// How long one scrape may take, given the agent's interval.
    pub fn timeout(&self, agent: Duration) -> Duration {
        self.timeout
            .unwrap_or_else(|| DEFAULT_TIMEOUT.min(self.interval(agent)))
    }
}

/// The `scrape:` list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapeConfig(pub Vec<ScrapeTarget>);

impl ScrapeConfig {
    /// The targets whose explicit timeout is longer than the agent's interval they take as
    /// theirs: `(job, instance, timeout)`.
    pub fn timeouts_over(&self, agent: Duration) -> Vec<(String, String, Duration)> {
        self.0
            .iter()
            .filter(|t| t.interval.is_none() && t.timeout.is_some_and(|d| d > agent))
            .map(|t| (t.job.clone(), t.instance.clone(), t.timeout(agent)))
            .collect()
    }
}

impl<'de> Deserialize<'de> for ScrapeConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<RawTarget>::deserialize(d)?;
        if let Some(r) = raw.get(MAX_TARGETS) {
            return Err(located(
                &r.job,
                format!(
                    "{} scrape targets listed; at most {MAX_TARGETS} are allowed",
                    raw.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let t = validate(&r)?;
            if !seen.insert((t.job.clone(), t.instance.clone())) {
                return Err(located(
                    &r.url,
                    format!("job `{}` already scrapes instance `{}`", t.job, t.instance),
                ));
            }
            out.push(t);
        }
        Ok(Self(out))
    }
}

/// A size such as `16MiB`, `512KB` or `1000` (bytes); `KB`/`MB`/`GB` are powers of two, as
/// Prometheus reads them.
fn parse_size<E: de::Error>(at: &Spanned<String>) -> Result<usize, E> {
    let text = at.value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KB" | "KiB" => 10,
        "MB" | "MiB" => 20,
        "GB" | "GiB" => 30,
        _ => {
            return Err(located(
                at,
                format!(
                    "invalid size `{}`: write a number of bytes with a unit, such as 512KiB or 16MiB",
                    at.value
                ),
            ));
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1usize << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            located(
                at,
                format!("invalid size `{}`: a positive number of bytes", at.value),
            )
        })
}

fn validate<E: de::Error>(r: &RawTarget) -> Result<ScrapeTarget, E> {
    yaml::name(&r.job, "job", &['_', '-', '.'])?;
    let url = yaml::http_url(&r.url, "http(s)://host[:port]/path")?;
    let client = httpc::Client::new(&r.http_config)
        .map_err(|e| located(&r.url, format!("http_config: {e}")))?;
    let host = url.host().unwrap_or_default();
    let default_port = if url.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let instance = format!("{host}:{}", url.port_u16().unwrap_or(default_port));
    let min = Duration::from_millis(100);
    let interval = r
        .interval
        .as_ref()
        .map(|i| duration_at_least(i, min, "interval"))
        .transpose()?;
    let timeout = r
        .timeout
        .as_ref()
        .map(|t| duration_at_least(t, Duration::from_millis(1), "timeout"))
        .transpose()?;
    if let (Some(t), Some(i), Some(at)) = (timeout, interval, &r.timeout)
        && t > i
    {
        return Err(located(
            at,
            format!(
                "timeout {} is longer than the interval {}",
                humantime::format_duration(t),
                humantime::format_duration(i)
            ),
        ));
    }
    let sample_limit = match &r.sample_limit {
        None => DEFAULT_SAMPLE_LIMIT,
        Some(v) if v.value == 0 || v.value > MAX_SAMPLE_LIMIT => {
            return Err(located(
                v,
                format!(
                    "sample_limit {} is out of range 1-{MAX_SAMPLE_LIMIT}",
                    v.value
                ),
            ));
        }
        Some(v) => v.value as usize,
    };
    let body_size_limit = match &r.body_size_limit {
        None => DEFAULT_BODY_SIZE_LIMIT,
        Some(s) => {
            let n = parse_size(s)?;
            if n > MAX_BODY_SIZE_LIMIT {
                return Err(located(
                    s,
                    format!("body_size_limit {} is more than 256MiB", s.value),
                ));
            }
            n
        }
    };
    Ok(ScrapeTarget {
        job: r.job.value.clone(),
        url,
        client: std::sync::Arc::new(client),
        instance,
        interval,
        timeout,
        sample_limit,
        body_size_limit,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    fn one(entry: &str) -> Result<super::ScrapeTarget, String> {
        Config::parse("c.yaml", &format!("scrape:\n  - {entry}\n"))
            .map(|c| c.scrape.0[0].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_agent() {
        let t = one("{ job: vllm, url: \"http://127.0.0.1:8000/metrics\" }").unwrap();
        assert_eq!(t.instance, "127.0.0.1:8000");
        assert_eq!(t.interval(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            t.timeout(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            t.timeout(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        assert_eq!((t.sample_limit, t.body_size_limit), (20_000, 16 << 20));
        let t = one("{ job: n, url: \"http://localhost/m\", interval: 5s, timeout: 2s, sample_limit: 10, body_size_limit: 512KiB }").unwrap();
        assert_eq!(t.instance, "localhost:80");
        assert_eq!(t.timeout(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!((t.sample_limit, t.body_size_limit), (10, 512 << 10));
        let t = one("{ job: n, url: \"https://localhost/m\", http_config: { basic_auth: { username: u, password: p } } }").unwrap();
        assert_eq!(t.instance, "localhost:443");
    }

    #[test]
    fn mistakes_are_located() {
        for (entry, want) in [
            ("{ job: a, url: \"ftp://x:1/m\" }", "c.yaml:2:20: scrape: "),
            (
                "{ job: a, url: \"http://x:1/m\", interval: 1s, timeout: 2s }",
                "c.yaml:2:59: scrape: timeout 2s is longer than the interval 1s",
            ),
            (
                "{ job: a, url: \"http://x:1/m\", sample_limit: 0 }",
                "c.yaml:2:50: scrape: sample_limit 0 is out of range",
            ),
            (
                "{ job: a, url: \"http://x:1/m\", body_size_limit: 1 parsec }",
                "c.yaml:2:53: scrape: invalid size `1 parsec`",
            ),
            (
                "{ job: a, url: \"https://x:1/m\", http_config: { tls_config: { ca_file: /nonexistent/ca.pem } } }",
                "ca_file /nonexistent/ca.pem: No such file",
            ),
            (
                "{ job: a, url: \"http://x:1/m\", timeout: 3s }",
                "c.yaml:1:1: scrape: job `a` (x:1): timeout 3s is longer than the agent's interval 1s",
            ),
        ] {
            let e = one(entry).unwrap_err();
            assert!(
                e.starts_with(want) || (!want.starts_with("c.yaml") && e.contains(want)),
                "{entry}: {e}"
            );
        }
        let e = Config::parse(
            "c.yaml",
            "scrape:\n  - { job: a, url: \"http://x:1/m\" }\n  - { job: a, url: \"http://x:1/n\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.yaml:3:20: scrape: job `a` already scrapes instance `x:1`"),
            "{e}"
        );
    }
}
