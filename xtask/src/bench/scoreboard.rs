//! The fault-injection scoreboard (the `scoreboard` test suite, run here in release mode and
//! read back), the same kind of fault through a stock Prometheus + Alertmanager scraping
//! nodewatch, and the healthy run with the default rules.

use std::{
    fmt::Write,
    io::{BufRead, BufReader, Read, Write as _},
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::util::{Nodewatch, Proc, env_num, free_addr, wait_http};

fn secs(v: &Value) -> String {
    v.as_f64()
        .map_or("not reached".into(), |s| format!("{s:.2} s"))
}

/// Runs `cargo test --release -p nodewatch --test <name>` with `env`: whether it passed, and
/// its stderr.
fn cargo_test(name: &str, env: &[(&str, String)]) -> Result<(bool, String)> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--release",
        "-p",
        "nodewatch",
        "--test",
        name,
        "--",
        "--nocapture",
    ])
    .env("CI", "true")
    .current_dir(crate::root_dir())
    .stdout(Stdio::inherit())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("cargo test")?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        eprintln!("{err}");
        eprintln!("xtask: `cargo test --release --test {name}` failed; reporting what it measured");
    }
    Ok((out.status.success(), err))
}

pub fn section(dir: &Path) -> Result<String> {
    crate::step("bench scoreboard: cargo test --release --test scoreboard");
    let file = dir.join("scoreboard.jsonl");
    let _ = std::fs::remove_file(&file);
    let (passed, _) = cargo_test(
        "scoreboard",
        &[("NODEWATCH_SCOREBOARD_OUT", file.display().to_string())],
    )?;
    let mut rows: Vec<Value> = std::fs::read_to_string(&file)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    rows.sort_by_key(|r| r["fault"].as_str().unwrap_or("").to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Fault-injection scoreboard\n\nCommand: `cargo xtask bench` runs \
         `cargo test --release -p nodewatch --test scoreboard` (`tests/scoreboard.rs`; \
         `cargo xtask test` runs the same suite in debug mode and fails when a fault is not \
         detected). Each fault is produced for real against an agent with the embedded default \
         rules, the default 1 s interval, a `kind: webhook` notifier posting to a local receiver \
         and `health.haproxy_agent_listen` checked by a real HAProxy 2.6 (`agent-inter 100ms`). \
         Times are from the injection to: (1) the metric moving on `/metrics`, (2) the default \
         rule `firing` on `/api/v1/alerts`, (3) the webhook arriving, (4) HAProxy showing the \
         server `DRAIN`/`DOWN`; all polled every 50 ms.\n"
    );
    let _ = writeln!(
        out,
        "| fault | default rule | (1) metric | (2) rule firing | (3) webhook | (4) HAProxy | ≤ 2 s |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
    for r in &rows {
        let haproxy = if r["drains"] == true {
            secs(&r["haproxy"])
        } else {
            "n/a (rule does not drain)".into()
        };
        let worst = ["metric", "fired", "webhook", "haproxy"]
            .iter()
            .filter_map(|k| r[*k].as_f64())
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {haproxy} | {} |",
            r["fault"].as_str().unwrap_or(""),
            r["rule"].as_str().unwrap_or(""),
            secs(&r["metric"]),
            secs(&r["fired"]),
            secs(&r["webhook"]),
            if worst <= 2.0 {
                "met".to_string()
            } else {
                format!("missed ({worst:.1} s)")
            }
        );
    }
    if !passed {
        let _ = writeln!(
            out,
            "\n**The scoreboard suite failed in this run**: a row with `not reached` was not \
             detected in its time limit."
        );
    }
    let _ = writeln!(
        out,
        "\nNo default rule waits on a `for:` for these faults: a detector that is specific is the damping. What is left is the detection itself. `NodewatchTcpRetransmitStorm` compares the retransmits with the segments sent between the last two samples (one tick, in a sample of at least 100 segments), so the first full tick of the storm fires it; `NodewatchHeartbeatDown` is the check's own confirmation (three retries 100 ms apart, plus the 500 ms timeout for a hung target) on a 1 s check interval, and the confirmed change asks for a tick at once; `NodewatchGpuIoctlHung` is the stall threshold (1 s here): the probe asks for a tick when a call it saw in flight reaches it. The noisy but healthy run (`tests/healthy_run.rs`) checks that these detectors stay quiet on 0.2 % loss, 250 ms GPU calls, a restarted heartbeat target and busy cores.\n"
    );
    Ok(out)
}

/// The retransmit storm alone, `NODEWATCH_BENCH_STORM_RUNS` times (default 10): each run's
/// times, and how many reached the webhook within 2 s.
pub fn storm(dir: &Path) -> Result<String> {
    let runs = env_num("NODEWATCH_BENCH_STORM_RUNS", 10);
    let file = dir.join("storm.jsonl");
    let _ = std::fs::remove_file(&file);
    for i in 1..=runs {
        crate::step(&format!("bench storm: run {i}/{runs}"));
        let mut cmd = Command::new("cargo");
        cmd.args([
            "test",
            "--release",
            "-p",
            "nodewatch",
            "--test",
            "scoreboard",
            "retransmit_storm",
            "--",
            "--nocapture",
        ])
        .env("CI", "true")
        .env("NODEWATCH_SCOREBOARD_OUT", &file)
        .current_dir(crate::root_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.status().context("cargo test")?;
    }
    let rows: Vec<Value> = std::fs::read_to_string(&file)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = String::from(
        "\n## The retransmit storm, run after run\n\nReproduce: `NODEWATCH_BENCH_ONLY=storm cargo xtask bench` (`NODEWATCH_BENCH_STORM_RUNS`, default 10): the scoreboard's retransmit storm (`tests/scoreboard.rs`, release build) run again and again, each with a fresh agent on the embedded defaults.\n\n| run | (1) metric | (2) rule firing | (3) webhook | (4) HAProxy |\n|---:|---:|---:|---:|---:|\n",
    );
    let mut within = 0;
    for (i, r) in rows.iter().enumerate() {
        if r["webhook"].as_f64().is_some_and(|s| s <= 2.0) {
            within += 1;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            secs(&r["metric"]),
            secs(&r["fired"]),
            secs(&r["webhook"]),
            secs(&r["haproxy"])
        );
    }
    let _ = writeln!(
        out,
        "\nAt the webhook within 2 s: **{within} of {runs}** runs{}.",
        if rows.len() as u64 == runs {
            String::new()
        } else {
            format!(" ({} runs reported a row)", rows.len())
        }
    );
    Ok(out)
}

/// Webhook bodies that arrived, with their time.
type Hooks = Arc<Mutex<Vec<(Instant, String)>>>;

fn receiver() -> Result<(u16, Hooks)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let got: Hooks = Arc::default();
    let store = Arc::clone(&got);
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut r = BufReader::new(conn);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let t = line.trim_end();
                    if t.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = t.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_ok() {
                    store
                        .lock()
                        .unwrap()
                        .push((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    Ok((port, got))
}

fn first(h: &Hooks, alertname: &str) -> Option<Instant> {
    let needle = format!("\"alertname\":\"{alertname}\"");
    h.lock()
        .unwrap()
        .iter()
        .find(|(_, b)| b.contains(&needle) && b.contains("\"status\":\"firing\""))
        .map(|(t, _)| *t)
}

/// An Xid 79 through nodewatch's own webhook and through Prometheus (stock intervals: scrape
/// and evaluation every 1 m, the defaults when prometheus.yml does not set them) loading the
/// same default rules, then Alertmanager (stock route: group_wait 30 s) to a webhook.
pub fn pipeline(nodewatch: &Path, dir: &Path) -> Result<String> {
    let (nw_hook, nw_hooks) = receiver()?;
    let (am_hook, am_hooks) = receiver()?;
    let nw = Nodewatch::start(
        nodewatch,
        dir,
        "pipeline",
        &format!(
            "notifiers:\n  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{nw_hook}/\" }}\n"
        ),
    )?;
    let am_addr = free_addr();
    let am_dir = dir.join("alertmanager");
    let _ = std::fs::remove_dir_all(&am_dir);
    std::fs::create_dir_all(&am_dir)?;
    let am_cfg = am_dir.join("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        format!(
            "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{am_hook}/\n"
        ),
    )?;
    let _am = Proc(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", am_cfg.display()))
            .arg(format!("--storage.path={}", am_dir.display()))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(am_dir.join("log"))?)
            .spawn()
            .context("start prometheus-alertmanager")?,
    );
    wait_http(am_addr, "/-/ready", Duration::from_secs(30))?;
    let prom_addr = free_addr();
    let prom_dir = dir.join("prometheus");
    let _ = std::fs::remove_dir_all(&prom_dir);
    std::fs::create_dir_all(&prom_dir)?;
    let prom_cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "rule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs: [{{ targets: [\"{am_addr}\"] }}]\nscrape_configs:\n  - job_name: nodewatch\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
            crate::root_dir().join("alerts/default.yaml").display(),
            nw.addr
        ),
    )?;
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prom_dir.join("log"))?)
            .spawn()
            .context("start prometheus")?,
    );
    wait_http(prom_addr, "/-/ready", Duration::from_secs(60))?;
    // Wait for the first scrape, so the series exists before the fault, as on a live fleet.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = super::util::http_get(prom_addr, "/api/v1/targets").unwrap_or_default();
        if t.contains("\"health\":\"up\"") {
            break;
        }
        if Instant::now() > deadline {
            bail!("Prometheus never scraped nodewatch");
        }
        thread::sleep(Duration::from_secs(1));
    }
    crate::step("bench pipeline: Xid 79 into /dev/kmsg; waiting for both webhooks (minutes)");
    let injected = Instant::now();
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")?
        .write_all(
            b"<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=bench, GPU has fallen off the bus.\n",
        )?;
    let limit = Duration::from_secs(env_num("NODEWATCH_BENCH_PIPELINE_LIMIT", 360));
    let rule = "NodewatchGpuXidReboot";
    while injected.elapsed() < limit
        && (first(&nw_hooks, rule).is_none() || first(&am_hooks, rule).is_none())
    {
        thread::sleep(Duration::from_millis(50));
    }
    let ours = first(&nw_hooks, rule).map(|t| (t - injected).as_secs_f64());
    let theirs = first(&am_hooks, rule).map(|t| (t - injected).as_secs_f64());
    let show = |v: Option<f64>| v.map_or(format!("not within {limit:?}"), |s| format!("{s:.2} s"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### The same fault through Prometheus + Alertmanager\n\nAn Xid 79 line written to \
         `/dev/kmsg` once the agent is running; timed to the webhook of nodewatch's own notifier and \
         to the webhook of Debian's Alertmanager 0.25 (stock route: `group_wait` 30 s) fed by \
         Debian's Prometheus 2.42 scraping the same agent with the stock intervals (no \
         `scrape_interval`/`evaluation_interval` set: 1 m each) and loading the same \
         `alerts/default.yaml`. One fault, one run: the Prometheus figure depends on where in its \
         1-minute scrape and evaluation cycles the fault lands (anywhere from about 30 s to about \
         2.5 min).\n"
    );
    let _ = writeln!(out, "| path | injection → webhook |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| nodewatch (local rules, 1 s tick, webhook notifier) | {} |",
        show(ours)
    );
    let _ = writeln!(
        out,
        "| Prometheus (1 m scrape, 1 m evaluation) → Alertmanager (group_wait 30 s) → webhook | {} |",
        show(theirs)
    );
    if let (Some(a), Some(b)) = (ours, theirs) {
        let _ = writeln!(
            out,
            "\nRatio: the Prometheus + Alertmanager path took **×{:.0}** as long.",
            b / a
        );
    }
    Ok(out)
}

/// The healthy runs: the `healthy_run` tests (a quiet host, and a noisy but healthy one, side
/// by side), as long as asked (10 minutes by default).
pub fn healthy() -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_HEALTHY_SECS", 600);
    crate::step(&format!(
        "bench healthy runs: {secs} s with the default rules, quiet and noisy"
    ));
    let (passed, err) = cargo_test(
        "healthy_run",
        &[
            ("NODEWATCH_HEALTHY_SECS", secs.to_string()),
            ("NODEWATCH_NOISY_SECS", secs.to_string()),
            ("NODEWATCH_HEALTHY_ALL_PROBES", "1".into()),
        ],
    )?;
    let record = |prefix: &str| {
        err.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or("(no record: the test failed before it; see the bench log)")
            .to_string()
    };
    let (quiet, noisy) = (record("HEALTHY "), record("NOISY "));
    let quiet_fired = !quiet.contains("\"fired\":[]");
    let noisy_clean = noisy.contains("\"fired\":[]") && noisy.contains("\"unhealthy_samples\":[]");
    let verdict = match (passed, quiet_fired) {
        (true, false) => "zero alerts fired: **met**",
        (true, true) => {
            "no false positive: **met**, but alerts did fire: only Xid rules, for Xid lines that \
             other processes (other test suites on this shared machine) wrote into the kernel \
             log during the run, listed in the record: true positives"
        }
        (false, _) => "alerts fired that nothing explains: **missed** (see the records)",
    };
    let noisy_verdict = if noisy_clean {
        "nothing fired and `/healthz` answered 200 (not degraded) at every check: **met**"
    } else {
        "**missed** (see the record)"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Healthy runs (no false positives)\n\n`cargo test --release -p nodewatch --test healthy_run` \
         with `NODEWATCH_HEALTHY_SECS={secs} NODEWATCH_NOISY_SECS={secs}` runs two agents side by \
         side for {secs} s each, checked every second: no alert may fire, no webhook may be sent, \
         the node must stay healthy.\n\n- A quiet host: the default configuration (every probe, \
         the embedded default rules, a webhook notifier). Result: {verdict}. Record: `{quiet}`\n\
         - A noisy but healthy host: continuous request/response traffic on a watched port with \
         0.2 % of its packets lost, GPU calls of 250 ms one after another on a FUSE stand-in \
         device, the heartbeat target restarted once (down 200 ms), both cores busy for 10 s. \
         Result: {noisy_verdict}. Record: `{noisy}`\n\n(`cargo xtask test` runs them for 45 s \
         and 60 s, the quiet one without the Xid reader, because other test suites write Xid \
         lines into the host's log on purpose.)\n"
    );
    Ok(out)
}
