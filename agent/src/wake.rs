//! How the tick thread is woken before its next scheduled tick: a collector that has just
//! confirmed a change (a heartbeat gone down) asks for a tick now, so the change reaches the
//! rules, the load balancer and the notifiers without waiting out the interval; and the agent
//! asks the tick thread to stop.

use std::{
    sync::{Arc, Condvar, Mutex},
    time::Instant,
};

#[derive(Debug, Default)]
struct Flags {
    now: bool,
    stop: bool,
}

/// A handle on the tick thread's wake-up; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<(Mutex<Flags>, Condvar)>);

/// Why [`Wake::wait_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The deadline came.
    Deadline,
    /// Someone asked for a tick now.
    Asked,
    /// The agent is stopping.
    Stop,
}

impl Wake {
    /// Asks for a tick as soon as possible. Asking again before it runs asks once.
    pub fn now(&self) {
        self.set(|f| f.now = true);
    }

    /// Asks the tick thread to stop.
    pub fn stop(&self) {
        self.set(|f| f.stop = true);
    }

    fn set(&self, f: impl FnOnce(&mut Flags)) {
        let (lock, cv) = &*self.0;
        f(&mut lock.lock().unwrap_or_else(|e| e.into_inner()));
        cv.notify_all();
    }

    /// Waits until `deadline`, a request for a tick, or a stop, whichever comes first; a
    /// request is consumed by returning [`Woken::Asked`].
    pub fn wait_until(&self, deadline: Instant) -> Woken {
        let (lock, cv) = &*self.0;
        let mut flags = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if flags.stop {
                return Woken::Stop;
            }
            if flags.now {
                flags.now = false;
                return Woken::Asked;
            }
            let now = Instant::now();
            if now >= deadline {
                return Woken::Deadline;
            }
            flags = cv
                .wait_timeout(flags, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{thread, time::Duration};

    #[test]
    fn a_request_from_another_thread_ends_the_wait_early() {
        let w = Wake::default();
        let other = w.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            other.now();
        });
        let start = Instant::now();
        assert_eq!(w.wait_until(start + Duration::from_secs(30)), Woken::Asked);
        assert!(start.elapsed() < Duration::from_secs(10));
        t.join().unwrap();
        // Consumed: the next wait runs to its deadline.
        assert_eq!(
            w.wait_until(Instant::now() + Duration::from_millis(20)),
            Woken::Deadline
        );
    }

    #[test]
    fn stop_wins_over_a_request_and_stays() {
        let w = Wake::default();
        w.now();
        w.stop();
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(w.wait_until(far), Woken::Stop);
        assert_eq!(w.wait_until(far), Woken::Stop);
    }
}
