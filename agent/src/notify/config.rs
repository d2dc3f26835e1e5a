//! `notifiers:` in the configuration.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};
use serde_saphyr::Spanned;

pub use crate::alerts::NODE_LABEL;
use crate::{
    httpc::HttpConfig,
    yaml::{self, duration_at_least, located},
};

/// What a notifier entry looks like in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifier {
    /// The `notifier` label and the webhook payload's `receiver`. Letters, digits, `_`, `-`.
    name: Spanned<String>,
    /// `alertmanager` (Alertmanager's `/api/v2/alerts`) or `webhook` (the Alertmanager
    /// webhook payload, version 4).
    kind: Spanned<String>,
    /// The receiver: Alertmanager's base URL (`http://am:9093`) or the webhook's URL.
    url: Option<Spanned<String>>,
    /// Several Alertmanagers of one HA cluster: each gets every alert.
    urls: Option<Vec<Spanned<String>>>,
    /// Webhook only: sign each request the Standard Webhooks way with the key in this file
    /// (`whsec_<base64>`, or the raw text).
    secret_file: Option<PathBuf>,
    /// Time one delivery attempt may take. Default `10s`.
    timeout: Option<Spanned<String>>,
    /// Alertmanager only: how often firing alerts are sent again. Default `1m`.
    resend_interval: Option<Spanned<String>>,
    /// Most notifications kept for one receiver while it is unreachable; beyond that the
    /// oldest are dropped (and counted). Default 10000.
    queue_max: Option<usize>,
    /// How the receiver is reached: basic auth, authorization, TLS (CA, client certificate),
    /// proxy, redirects, with Prometheus's keys. Default: none of them.
    #[serde(default)]
    http_config: HttpConfig,
}

/// The kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alertmanager,
    Webhook,
}

/// One validated notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    pub name: String,
    pub kind: Kind,
    pub urls: Vec<http::Uri>,
    pub secret_file: Option<PathBuf>,
    pub timeout: Duration,
    pub resend_interval: Duration,
    pub queue_max: usize,
    pub http_config: HttpConfig,
}

/// The `notifiers:` list: names are unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NotifiersConfig(pub Vec<NotifierConfig>);

impl<'de> Deserialize<'de> for NotifiersConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<RawNotifier>::deserialize(d)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in raw {
            if !seen.insert(r.name.value.clone()) {
                return Err(located(
                    &r.name,
                    format!("notifier `{}` is listed twice", r.name.value),
                ));
            }
            out.push(validate(r)?);
        }
        Ok(Self(out))
    }
}

fn validate<E: de::Error>(r: RawNotifier) -> Result<NotifierConfig, E> {
    let name = &r.name;
    // The name is also a folder of the spool: no dots.
    yaml::name(name, "notifier", &['_', '-'])?;
    let kind = match r.kind.value.as_str() {
        "alertmanager" => Kind::Alertmanager,
        "webhook" => Kind::Webhook,
        other => {
            return Err(located(
                &r.kind,
                format!("unknown notifier kind `{other}`: use alertmanager or webhook"),
            ));
        }
    };
    let mut spans: Vec<&Spanned<String>> = r.url.iter().collect();
    spans.extend(r.urls.iter().flatten());
    if spans.is_empty() {
        return Err(located(
            name,
            format!("notifier `{}` needs `url` or `urls`", name.value),
        ));
    }
    if kind == Kind::Webhook && spans.len() > 1 {
        return Err(located(
            name,
            "a webhook has one `url`; list several webhooks instead",
        ));
    }
    let mut urls = Vec::new();
    for u in spans {
        urls.push(yaml::http_url(u, "http(s)://host[:port][/path]")?);
    }
    if kind == Kind::Alertmanager && r.secret_file.is_some() {
        return Err(located(name, "secret_file applies to webhooks only"));
    }
    if kind == Kind::Webhook
        && let Some(ri) = &r.resend_interval
    {
        return Err(located(ri, "resend_interval applies to alertmanager only"));
    }
    let duration = |f: &Option<Spanned<String>>, default: Duration| -> Result<Duration, E> {
        match f {
            None => Ok(default),
            Some(t) => duration_at_least(t, Duration::from_millis(100), ""),
        }
    };
    Ok(NotifierConfig {
        name: name.value.clone(),
        kind,
        urls,
        secret_file: r.secret_file,
        timeout: duration(&r.timeout, Duration::from_secs(10))?,
        resend_interval: duration(&r.resend_interval, Duration::from_secs(60))?,
        queue_max: r.queue_max.unwrap_or(10_000).max(1),
        http_config: r.http_config,
    })
}

/// `external_labels:` added to every alert sent, as Prometheus's `global.external_labels` are,
/// so that Alertmanager keeps the same alert of two nodes apart. `None` (the key absent):
/// `{node: <hostname>}`; an empty map: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalLabels(pub Option<BTreeMap<String, String>>);

impl ExternalLabels {
    /// The labels in force: the configured ones, or `{node: <hostname>}`.
    pub fn resolved(&self) -> BTreeMap<String, String> {
        match &self.0 {
            Some(m) => m.clone(),
            None => BTreeMap::from([(NODE_LABEL.to_string(), hostname())]),
        }
    }
}

impl<'de> Deserialize<'de> for ExternalLabels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Option::<BTreeMap<String, Spanned<String>>>::deserialize(d)?.unwrap_or_default();
        for (k, v) in &raw {
            let name_ok = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with("__");
            if !name_ok {
                return Err(located(
                    v,
                    format!(
                        "`{k}` is not a label name: letters, digits and `_`, not starting with a digit or `__`"
                    ),
                ));
            }
            if v.value.is_empty() {
                return Err(located(v, format!("external label `{k}` is empty")));
            }
        }
        Ok(Self(Some(
            raw.into_iter().map(|(k, v)| (k, v.value)).collect(),
        )))
    }
}

/// This host's name (`uname -n`), or `localhost` when it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates what fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}
