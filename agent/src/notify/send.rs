//! One delivery attempt of a notification to a receiver, and how its failure is sorted:
//! retried (timeouts, connection errors, 5xx, 429), retried and counted apart (a TLS failure,
//! 401, 403, 407: a setting someone will fix), or given up (other 4xx).

use std::time::SystemTime;

use bytes::Bytes;

use super::{Receiver, config::Kind, payload, spool::Notification};
use crate::httpc;

/// A failed delivery attempt.
pub(super) struct Failure {
    pub(super) retry: bool,
    /// The `result` it is counted under when retried: `retried`, or `tls_error` and
    /// `auth_error` for the failures only a fixed configuration ends.
    pub(super) counted: &'static str,
    pub(super) message: String,
}

impl Receiver {
    pub(super) async fn send(&self, n: &Notification) -> Result<(), Failure> {
        let (uri, body) = match self.kind {
            Kind::Alertmanager => {
                let base = self.uri.to_string();
                let uri = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
                (
                    uri.parse::<http::Uri>().map_err(|e| Failure {
                        retry: false,
                        counted: "failed",
                        message: e.to_string(),
                    })?,
                    payload::alertmanager(&n.alert),
                )
            }
            Kind::Webhook => (
                self.uri.clone(),
                payload::webhook(&n.alert, &self.config_name, &self.external_url),
            ),
        };
        let body = Bytes::from(body.to_string());
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(key) = &self.key {
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            headers.push(("webhook-id", n.id.clone()));
            headers.push(("webhook-timestamp", ts.to_string()));
            headers.push((
                "webhook-signature",
                payload::signature(key, &n.id, ts, &body),
            ));
        }
        let attempt = self
            .client
            .request(http::Method::POST, &uri, &headers, body);
        match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => Err(Failure {
                retry: true,
                counted: "retried",
                message: format!("no answer within {:?}", self.timeout),
            }),
            Ok(Err(e @ httpc::HttpError::Tls(_))) => Err(Failure {
                retry: true,
                counted: "tls_error",
                message: e.to_string(),
            }),
            Ok(Err(e)) => Err(Failure {
                retry: true,
                counted: "retried",
                message: e.to_string(),
            }),
            Ok(Ok(a)) if (200..300).contains(&a.status) => Ok(()),
            Ok(Ok(a)) => {
                // 401, 403 and 407 are a configuration someone will fix: kept and retried.
                let auth = matches!(a.status, 401 | 403 | 407);
                Err(Failure {
                    retry: auth || a.status >= 500 || a.status == 429,
                    counted: if auth { "auth_error" } else { "retried" },
                    message: format!(
                        "HTTP {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                            .chars()
                            .take(500)
                            .collect::<String>()
                    ),
                })
            }
        }
    }
}
