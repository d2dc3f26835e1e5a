//! What goes over the wire: Alertmanager's `/api/v2/alerts` format, the Alertmanager
//! webhook payload (version 4), and Standard Webhooks signatures.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// One alert as receivers see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339: when a resolved alert ended, or until when a firing one is valid.
    pub ends_at: String,
    pub generator_url: String,
    pub fingerprint: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// For Alertmanager only: the agent's own fleet alerts (the drain budget's), which
    /// webhooks are not told about.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alertmanager_only: bool,
}

/// Alertmanager's `endsAt` for an alert that has not ended (Go's zero time).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A stable identity of a label set (FNV-1a over the sorted pairs), as 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The body of `POST /api/v2/alerts`: a list with this one alert.
pub fn alertmanager(a: &OutAlert) -> serde_json::Value {
    serde_json::json!([{
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": a.starts_at,
        "endsAt": a.ends_at,
        "generatorURL": a.generator_url,
    }])
}

/// The Alertmanager webhook payload, version 4, for one alert sent to `receiver`.
pub fn webhook(a: &OutAlert, receiver: &str, external_url: &str) -> serde_json::Value {
    let alertname = a.labels.get("alertname").cloned().unwrap_or_default();
    let ends_at = if a.status == "firing" {
        ZERO_TIME
    } else {
        &a.ends_at
    };
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": a.status,
        "receiver": receiver,
        "groupLabels": { "alertname": alertname },
        "commonLabels": a.labels,
        "commonAnnotations": a.annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": a.status,
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": a.starts_at,
            "endsAt": ends_at,
            "generatorURL": a.generator_url,
            "fingerprint": a.fingerprint,
        }],
    })
}

/// The signing key in a secret file: `whsec_<base64>` (Standard Webhooks), else the file's
/// bytes without surrounding whitespace.
pub fn signing_key(file_text: &str) -> Result<Vec<u8>, String> {
    let t = file_text.trim();
    if t.is_empty() {
        return Err("the secret file is empty".into());
    }
    match t.strip_prefix("whsec_") {
        Some(b64) => B64
            .decode(b64)
            // The decoder's message quotes the offending byte: part of the secret.
            .map_err(|_| "the whsec_ secret is not valid base64 (contents not shown)".into()),
        None => Ok(t.as_bytes().to_vec()),
    }
}

/// `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_signature() {
        // The example of the Standard Webhooks specification.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(signing_key("  raw-key\n").unwrap(), b"raw-key");
        assert!(signing_key("\n").is_err());
        assert!(signing_key("whsec_***").is_err());
    }

    #[test]
    fn fingerprints_depend_on_every_label() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = fingerprint(&l(&[("alertname", "X"), ("port", "80")]));
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint(&l(&[("port", "80"), ("alertname", "X")])));
        assert_ne!(a, fingerprint(&l(&[("alertname", "X"), ("port", "81")])));
        assert_ne!(
            fingerprint(&l(&[("a", "bc")])),
            fingerprint(&l(&[("ab", "c")]))
        );
    }

    #[test]
    fn webhook_payload_is_version_4() {
        let mut a = OutAlert {
            status: "firing".into(),
            starts_at: "2026-01-01T00:00:00Z".into(),
            ends_at: "2026-01-01T00:04:00Z".into(),
            ..OutAlert::default()
        };
        a.labels.insert("alertname".into(), "X".into());
        let v = webhook(&a, "ops", "http://node:9477");
        assert_eq!(v["version"], "4");
        assert_eq!(v["groupKey"], "{}:{alertname=\"X\"}");
        assert_eq!(v["alerts"][0]["endsAt"], ZERO_TIME);
        a.status = "resolved".into();
        assert_eq!(
            webhook(&a, "ops", "")["alerts"][0]["endsAt"],
            "2026-01-01T00:04:00Z"
        );
    }
}
