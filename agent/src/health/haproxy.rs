//! HAProxy agent-check listener: each connection gets one line in HAProxy's agent-check
//! grammar and is closed. `up ready <N>%` puts the server in rotation at N % of its configured
//! weight (100 % healthy, `health.degraded_weight` degraded), `up drain` stops new traffic but
//! lets sessions finish, `down` takes it out; a `#` starts the reason shown in HAProxy's stats.
//!
//! The weight is always sent: HAProxy keeps the last weight an agent set, so a node back from
//! degraded must say 100 %, and a weight without `ready` would leave a drained server in
//! DRAIN (both measured with HAProxy 2.6).

use std::{sync::Arc, time::Duration};

use tokio::{io::AsyncWriteExt, net::TcpListener};

use super::{Health, Snapshot, Status};

/// The reply for a health snapshot.
pub fn reply(s: &Snapshot) -> String {
    let words = match s.status {
        Status::Healthy => return "up ready 100%\n".into(),
        Status::Degraded => format!("up ready {}%", s.weight),
        Status::Draining => "up drain".into(),
        Status::Down => "down".into(),
    };
    let reason: String = s
        .reasons
        .join("; ")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect();
    if reason.is_empty() {
        format!("{words}\n")
    } else {
        format!("{words} #{reason}\n")
    }
}

/// Answers agent checks until the runtime stops.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "HAProxy agent-check accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let line = reply(&health.snapshot());
        tokio::spawn(async move {
            // A peer that does not read cannot hold the task for long.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                conn.write_all(line.as_bytes()).await?;
                conn.shutdown().await
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(status: Status, reasons: &[&str]) -> Snapshot {
        Snapshot {
            status,
            weight: if status == Status::Degraded { 30 } else { 0 },
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            since: 0,
            maintenance: None,
        }
    }

    #[test]
    fn replies_in_agent_check_grammar() {
        assert_eq!(reply(&snap(Status::Healthy, &[])), "up ready 100%\n");
        assert_eq!(
            reply(&snap(Status::Degraded, &["alert GpuHot (degraded): 91 C"])),
            "up ready 30% #alert GpuHot (degraded): 91 C\n"
        );
        assert_eq!(
            reply(&snap(Status::Draining, &["maintenance: kernel upgrade"])),
            "up drain #maintenance: kernel upgrade\n"
        );
        assert_eq!(
            reply(&snap(Status::Down, &["a", "b\nc"])),
            "down #a; b?c\n",
            "no newline may end the line early"
        );
        assert_eq!(reply(&snap(Status::Down, &[])), "down\n");
    }
}
