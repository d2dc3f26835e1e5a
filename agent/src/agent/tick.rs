//! The tick thread: every collector collects, the rules evaluate what they wrote, and the
//! alerts drive node health and the notifiers; between two ticks, a reload asked for by
//! SIGHUP or the API.

use std::{
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use super::privileges;
use crate::{
    collectors::Collectors,
    config::Config,
    health::Health,
    notify::Notifiers,
    rules::{
        self,
        live::{LiveRules, now_ms},
        reload::Reloads,
    },
    store::Store,
    wake::Woken,
};

/// The least time between two ticks when one runs early, so that a burst of requests costs
/// at most ten ticks a second.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The rules as the tick thread runs them, and how it learns of a reload.
pub struct RulesTick {
    pub live: LiveRules,
    pub reloads: Arc<Reloads>,
    pub config_path: Option<PathBuf>,
    pub config: Config,
}

impl RulesTick {
    /// When asked (SIGHUP, `POST /api/v1/reload`): re-reads the config file (for
    /// `rule_files` and `default_rules`) and every rule file; an invalid set is refused and
    /// the running one stays.
    fn reload_if_asked(&mut self) {
        let Some(number) = self.reloads.pending() else {
            return;
        };
        tracing::info!("reloading rules");
        let loaded = match &self.config_path {
            None => rules::load_for_config(&self.config, None),
            Some(p) => match Config::load(p) {
                Err(e) => Err(e.0),
                Ok(new) => {
                    let restart_only = Config {
                        default_rules: self.config.default_rules,
                        rule_files: self.config.rule_files.clone(),
                        ..new.clone()
                    };
                    if restart_only != self.config {
                        tracing::warn!(
                            "config changes other than rule_files and default_rules take effect at the next restart"
                        );
                    }
                    let loaded = rules::load_for_config(&new, Some(p));
                    if loaded.is_ok() {
                        self.config.default_rules = new.default_rules;
                        self.config.rule_files = new.rule_files;
                    }
                    loaded
                }
            },
        };
        let outcome = self.live.reload(loaded);
        self.reloads.finish(number, outcome);
    }
}

/// What the alerts firing after each tick act on.
pub struct Outputs<'a> {
    pub health: &'a Health,
    pub notifiers: &'a Notifiers,
}

/// One tick: every collector collects, then the rules evaluate what they wrote. Blocking reads
/// stay on this thread, off the async workers. Ticks run every `interval`, and also early
/// (out of schedule, which stays as it was) when a collector asks: a heartbeat that has
/// just confirmed a change, a GPU call that has just passed its stall threshold. Ends when
/// the collectors' wake-up is told to stop.
pub fn tick_loop(
    mut collectors: Collectors,
    store: &Store,
    mut rules: RulesTick,
    outputs: Outputs<'_>,
    interval: Duration,
) {
    let wake = collectors.wake().clone();
    let mut next = Instant::now();
    // The capabilities this thread holds: all it started with, until set once below.
    let mut holds: Option<&[u32]> = None;
    loop {
        // This thread attaches what waits for a device; once nothing does, it needs nothing.
        // capset only when that changes, not every tick.
        let needs: &[u32] = if collectors.awaiting_attach() {
            privileges::ATTACH
        } else {
            &[]
        };
        if holds != Some(needs) {
            match privileges::keep_only(needs) {
                Ok(()) => {
                    if needs.is_empty() {
                        tracing::debug!("tick thread dropped its capabilities");
                    }
                    holds = Some(needs);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not drop the tick thread's capabilities");
                    holds = Some(needs);
                }
            }
        }
        collectors.collect(&store.own);
        rules.reload_if_asked();
        rules.live.tick(now_ms(), store);
        let alerts = rules.live.alerts();
        outputs.health.evaluate(&alerts, Instant::now());
        let fleet = outputs.health.fleet_alerts();
        outputs
            .notifiers
            .observe(&alerts, &fleet, std::time::SystemTime::now());
        let ran = Instant::now();
        if next <= ran {
            next += interval;
            if next < ran {
                // Fell behind (a stalled read): skip the missed ticks rather than burst.
                next = ran + interval;
            }
        }
        loop {
            let until = collectors.deadline().map_or(next, |d| d.min(next));
            match wake.wait_until(until.max(ran + MIN_GAP)) {
                Woken::Stop => return,
                Woken::Asked => {
                    thread::sleep((ran + MIN_GAP).saturating_duration_since(Instant::now()));
                    tracing::debug!("early tick: asked by a collector");
                    break;
                }
                Woken::Deadline => {
                    let now = Instant::now();
                    if now >= next {
                        break;
                    }
                    if collectors.due(now) {
                        tracing::debug!("early tick: a collector's deadline");
                        break;
                    }
                }
            }
        }
    }
}
