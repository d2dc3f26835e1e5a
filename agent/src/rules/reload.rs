//! Rule reloads, asked for by SIGHUP or `POST /api/v1/reload`, done by the tick thread
//! between two ticks, and what came of each.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::watch;

/// What a reload did: the number of rules now running, or why the new set was refused (the
/// running rules stay).
pub type Outcome = Result<usize, Vec<String>>;

/// Reload requests and their outcomes. Requests that arrive before the tick thread gets to
/// them are served by one reload, which reads every file afresh.
pub struct Reloads {
    requested: AtomicU64,
    done: watch::Sender<(u64, Outcome)>,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            requested: AtomicU64::new(0),
            done: watch::channel((0, Ok(0))).0,
        }
    }
}

impl Reloads {
    /// Asks for a reload at the next tick; returns its number, for [`Reloads::wait`].
    pub fn request(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// For the tick thread: the newest request not served yet.
    pub fn pending(&self) -> Option<u64> {
        let asked = self.requested.load(Ordering::SeqCst);
        (asked > self.done.borrow().0).then_some(asked)
    }

    /// For the tick thread: every request up to `number` is served with `outcome`.
    pub fn finish(&self, number: u64, outcome: Outcome) {
        let _previous = self.done.send_replace((number, outcome));
    }

    /// The outcome of request `number`, or `None` if it is not served within `limit`.
    pub async fn wait(&self, number: u64, limit: Duration) -> Option<Outcome> {
        let mut rx = self.done.subscribe();
        let done = tokio::time::timeout(limit, rx.wait_for(|(n, _)| *n >= number))
            .await
            .ok()?
            .ok()?;
        Some(done.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_before_a_reload_share_its_outcome_and_later_ones_wait() {
        let r = Reloads::default();
        assert_eq!(r.pending(), None);
        let (a, b) = (r.request(), r.request());
        assert_eq!(r.pending(), Some(b));
        r.finish(b, Err(vec!["bad.yaml:3:7: nope".into()]));
        assert_eq!(r.pending(), None);
        let want = Some(Err(vec!["bad.yaml:3:7: nope".to_string()]));
        assert_eq!(r.wait(a, Duration::from_millis(10)).await, want);
        assert_eq!(r.wait(b, Duration::from_millis(10)).await, want);
        let c = r.request();
        assert_eq!(r.wait(c, Duration::from_millis(50)).await, None);
        r.finish(c, Ok(12));
        assert_eq!(r.wait(c, Duration::from_millis(10)).await, Some(Ok(12)));
    }
}
