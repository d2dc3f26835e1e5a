//! The exported metric families against a golden list (tests/fixtures/metric_families.txt):
//! a real agent, configured so that nearly every family carries a sample, is scraped, and
//! every family it shows must be in the list with the same type and exactly the listed label
//! names. prometheus-client leaves a family without samples out of `/metrics` altogether, so
//! a listed family that does not show must be one of the few [`MAY_LACK_SAMPLES`].

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use common::{
    Agent, TempDir, have_root, have_tool,
    nvml::{FakeNvml, Gpu, State},
    wait_for,
};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/metric_families.txt"
);

/// Listed families this test cannot give a sample on demand, with why.
const MAY_LACK_SAMPLES: &[(&str, &str)] = &[(
    "nodewatch_probe_missed_events_total",
    "only once the kernel skipped a probe's program (another BPF program on that CPU)",
)];

/// Xid code of this test's own (tests/gpu_xid.rs knows it), written to the kernel log.
const XID: u32 = 13;

/// A family: its type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// The golden list: family name → type and labels.
fn golden() -> BTreeMap<String, Family> {
    let text = std::fs::read_to_string(GOLDEN).expect("read tests/fixtures/metric_families.txt");
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (name, kind) = (words.next().unwrap(), words.next());
        let kind = kind.unwrap_or_else(|| panic!("{GOLDEN}:{}: no type: {line}", n + 1));
        let labels: Vec<&str> = words.collect();
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(labels, sorted, "{GOLDEN}:{}: labels not sorted", n + 1);
        let family = Family {
            kind: kind.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
        };
        let dup = out.insert(name.to_string(), family);
        assert!(dup.is_none(), "{GOLDEN}:{}: {name} listed twice", n + 1);
    }
    out
}

/// The sample name of one sample line and the label names of its `{...}`, honouring `\"`
/// and `\\` in values.
fn sample_labels(sample: &str) -> (String, Vec<String>) {
    let Some((name, rest)) = sample.split_once('{') else {
        let name = sample.split_whitespace().next().unwrap_or_default();
        return (name.to_string(), Vec::new());
    };
    let mut names = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim();
        if key.starts_with('}') || key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} unquoted: {sample}");
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        names.push(key.to_string());
        match chars.clone().next() {
            Some(',') => {
                chars.next();
            }
            _ => break,
        }
    }
    (name.to_string(), names)
}

/// From Prometheus text: each `# TYPE` family with its type and the union of its samples'
/// label names (`le` of histogram buckets left out).
fn scraped(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            let family = Family {
                kind: kind.to_string(),
                labels: BTreeSet::new(),
            };
            assert!(
                out.insert(name.to_string(), family).is_none(),
                "{name} typed twice"
            );
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (sample, labels) = sample_labels(line);
        let (family, is_bucket) = if out.contains_key(&sample) {
            (sample.clone(), false)
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.strip_suffix(s).map(|b| (b, *s == "_bucket")))
                .filter(|(b, _)| out.get(*b).is_some_and(|f| f.kind == "histogram"));
            let (b, bucket) = base.unwrap_or_else(|| panic!("sample of no # TYPE family: {line}"));
            (b.to_string(), bucket)
        };
        let f = out.get_mut(&family).unwrap();
        f.labels
            .extend(labels.into_iter().filter(|l| !(is_bucket && l == "le")));
    }
    out
}

/// A loopback listener with `backlog`.
fn listener(backlog: i32) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen() again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

/// A proc root that is the real /proc without `loadavg`, so the resources collector fails
/// every tick (collector_errors) while everything else reads the real files.
fn proc_without_loadavg(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.0.join("proc");
    std::fs::create_dir_all(&root).unwrap();
    for e in std::fs::read_dir("/proc").unwrap() {
        let name = e.unwrap().file_name();
        let s = name.to_string_lossy();
        if s == "loadavg" || s.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        std::os::unix::fs::symlink(std::path::Path::new("/proc").join(&name), root.join(&name))
            .unwrap();
    }
    root
}

const RULES: &str = "groups:
  - name: families
    rules:
      - alert: FamiliesAlwaysFiring
        expr: absent(nodewatch_no_such_metric)
        labels:
          health: drain
      - alert: FamiliesEvaluationFails
        expr: '-{__name__=~\"nodewatch_load1|nodewatch_memory_used_ratio\"}'
";

#[test]
fn exported_families_match_the_golden_list() {
    if !have_root("metric_families") || !have_tool("metric_families", "cc") {
        return;
    }
    let golden = golden();
    for (name, why) in MAY_LACK_SAMPLES {
        assert!(golden.contains_key(*name), "{name} ({why}) is not listed");
    }
    let dir = TempDir::new("metric-families");
    dir.write("rules.yaml", RULES);
    let proc = proc_without_loadavg(&dir);
    // A heartbeat target that answers; a watched listener whose queue overflows; a closed
    // port for the failing heartbeat and the notifier.
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let full = listener(1);
    let (up_port, port) = (
        up.local_addr().unwrap().port(),
        full.local_addr().unwrap().port(),
    );
    let closed = common::free_port();
    // A fake NVML with two GPUs: one call of GPU 1 fails every time, another takes 2 s (past
    // the deadline), so the per-call error and timeout counts have samples too.
    let mut gpu1 = Gpu::h100(1);
    gpu1.error = vec![("power", 999)];
    gpu1.block = vec![("pcie_replays", 2000)];
    let gpu0 = Gpu::h100(0);
    let pci = common::nvml::log_bus_id(&gpu0.pci).to_string();
    let nvml = FakeNvml::build(&dir, &State::new(vec![gpu0, gpu1]));
    // An InfiniBand port.
    let ib = common::infiniband::IbTree::new(&dir);
    ib.add_port("mlx5_0", 1);
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms
proc_root: {proc}
probes:
  tcp_retransmits: {{ ports: [{port}] }}
  accept_queue: {{ ports: [{port}] }}
  gpu_ioctl: {{ devices: [\"/dev/full\"] }}
{gpu_state}{infiniband}heartbeats:
  - {{ name: up, tcp: \"127.0.0.1:{up_port}\", interval: 500ms, timeout: 200ms }}
  - {{ name: closed, tcp: \"127.0.0.1:{closed}\", interval: 500ms, timeout: 200ms }}
  - {{ name: push, push_ttl: 5s }}
scrape:
  - {{ job: refused, url: \"http://127.0.0.1:{closed}/metrics\", interval: 500ms }}
rule_files: [rules.yaml]
notifiers:
  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{closed}/hook\", timeout: 500ms }}
spool_dir: {spool}
",
            proc = proc.display(),
            spool = dir.0.join("spool").display(),
            gpu_state = nvml.config(Some(2)),
            infiniband = ib.config(),
        ),
    );
    // One Xid line about GPU 0, one SXid line, and connections past the listener's queue.
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| {
            // One record per write.
            f.write_all(
                format!("<4>NVRM: Xid (PCI:{pci}): {XID}, pid=1, name=metric_families, Graphics Engine Exception\n")
                    .as_bytes(),
            )?;
            f.write_all(
                format!("<4>nvidia-nvswitch0: SXid (PCI:{pci}.0): 12028, Non-fatal, Link 37 egress non-posted PRIV error (First)\n")
                    .as_bytes(),
            )
        })
        .expect("write /dev/kmsg");
    let _queued: Vec<TcpStream> = (0..4)
        .filter_map(|_| {
            TcpStream::connect_timeout(&full.local_addr().unwrap(), Duration::from_millis(200)).ok()
        })
        .collect();

    // A few ticks, until every listed family shows but those that may lack samples.
    let may_lack: BTreeSet<&str> = MAY_LACK_SAMPLES.iter().map(|m| m.0).collect();
    let missing = |got: &BTreeMap<String, Family>| -> Vec<String> {
        golden
            .keys()
            .filter(|k| !got.contains_key(*k))
            .cloned()
            .collect()
    };
    let text = wait_for(Duration::from_secs(10), || {
        let text = agent.metrics();
        missing(&scraped(&text))
            .iter()
            .all(|m| may_lack.contains(m.as_str()))
            .then_some(text)
    })
    .unwrap_or_else(|| agent.metrics());
    let got = scraped(&text);

    let unlisted: Vec<&String> = got.keys().filter(|k| !golden.contains_key(*k)).collect();
    let differ: Vec<String> = got
        .iter()
        .filter_map(|(name, f)| {
            let want = golden.get(name)?;
            (want != f).then(|| format!("{name}: exported {f:?}, listed {want:?}"))
        })
        .collect();
    let unsampled = missing(&got);
    eprintln!(
        "{} families listed, {} exported with samples; listed without a sample in this run: {unsampled:?}",
        golden.len(),
        got.len()
    );
    assert!(
        unlisted.is_empty(),
        "exported but not in {GOLDEN}: {unlisted:?}\n{text}"
    );
    assert!(
        differ.is_empty(),
        "type or labels differ from {GOLDEN}:\n{}\n{text}",
        differ.join("\n")
    );
    let unexpected: Vec<&String> = unsampled
        .iter()
        .filter(|m| !may_lack.contains(m.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "listed, but not exported (renamed or gone? or this run gave them no sample): {unexpected:?}\n{text}\nlog:\n{}",
        agent.log_text()
    );
}

#[test]
fn sample_labels_reads_quoted_values() {
    assert_eq!(
        sample_labels(r#"x_bucket{le="0.1",device="/dev/a\"b,c=d",rule_group="f;g"} 3"#),
        (
            "x_bucket".to_string(),
            vec!["le".into(), "device".into(), "rule_group".into()]
        )
    );
    assert_eq!(sample_labels("x 1"), ("x".to_string(), vec![]));
}
