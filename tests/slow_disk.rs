//! The agent's spool on a disk that is slow to sync: an in-memory FUSE file system whose every
//! `fsync` takes 3 s (tests/fixtures/slow_sync.py), as on a GPU node whose disk is busy
//! writing a checkpoint. A notification's first delivery does not wait for its file: the
//! webhook hears of the alert before a single sync could have finished, the tick goes on
//! every second meanwhile, and the file is written (and removed once delivered) behind it.

mod common;

use std::time::{Duration, Instant};

use common::{
    Agent, TempDir, free_port,
    fuse::{FUSEPY, FUSEPY_CHECK, SlowFs},
    have_root, have_tool_by,
    scoreboard::webhook_receiver,
    wait_for,
};

/// The fixture script.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/slow_sync.py"
);
/// How long each sync takes.
const SYNC: Duration = Duration::from_secs(3);

#[test]
fn a_notification_does_not_wait_for_the_disk() {
    if !have_root("slow disk") || !have_tool_by("slow disk", FUSEPY, FUSEPY_CHECK) {
        return;
    }
    let dir = TempDir::new("slow-disk");
    let sync = SYNC.as_secs_f64().to_string();
    let disk = SlowFs::mount(&dir, "spool", FIXTURE, &[&sync], "");
    let (hook_port, hooks) = webhook_receiver();
    // Nothing listens there: the heartbeat is refused from its first check, and the default
    // rule NodewatchHeartbeatDown fires.
    let dead = free_port();
    let agent = Agent::start(
        &dir,
        &format!(
            "spool_dir: {}\nnotifiers:\n  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{hook_port}/hook\" }}\nheartbeats:\n  - {{ name: inference, url: \"http://127.0.0.1:{dead}/health\", interval: 1s, timeout: 500ms }}\n",
            disk.mnt.display()
        ),
    );
    let started = Instant::now();
    let heard = wait_for(Duration::from_secs(20), || {
        hooks.firing("NodewatchHeartbeatDown")
    })
    .unwrap_or_else(|| panic!("the webhook never heard of it:\n{}", agent.log_text()));
    let after = heard.saturating_duration_since(started);
    eprintln!("webhook {after:?} after the agent answered (each sync takes {SYNC:?})");
    assert!(
        after < SYNC,
        "the first delivery waited for the disk: {after:?}\n{}",
        agent.log_text()
    );
    // Nor does the tick wait for it: the files are written by threads of their own, while the
    // tick goes on every second (the node, down, counts its unhealthy seconds each tick).
    let down = || {
        agent
            .sample("nodewatch_unhealthy_seconds_total")
            .unwrap_or(0.0)
    };
    let before = down();
    std::thread::sleep(Duration::from_millis(2500));
    let counted = down() - before;
    assert!(
        counted >= 1.5,
        "{counted} s counted in 2.5 s while the disk synced: the tick waited\n{}",
        agent.log_text()
    );
    // Behind it the file is written, then removed as delivered: nothing is left queued.
    let queue = || {
        std::fs::read_dir(disk.mnt.join("notifications/hook"))
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), || (queue() == 0).then_some(()))
        .unwrap_or_else(|| panic!("{} notification files left", queue()));
    drop(agent);
}
