//! The agent's YAML configuration: the top-level keys. Each section's type lives with the part
//! of the agent that uses it (a collector, the notifiers, node health); every key is optional,
//! and the doc comment on each field is its reference documentation. Every problem of a file
//! is reported, each as `file:line:col: key: message`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::{
    collectors::{
        self, ProbesConfig, containers::ContainersConfig, heartbeats::config::HeartbeatsConfig,
        resources::ResourcesConfig, scrape::config::ScrapeConfig,
    },
    health::config::HealthConfig,
    notify::config::{ExternalLabels, Kind, NODE_LABEL, NotifiersConfig},
    yaml::{self, Document, Spanned},
};

/// A configuration problem, located in its file.
pub type ConfigError = yaml::Error;

/// The configuration the binary runs with when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../packaging/config.yaml");

/// Top level of the configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address of the HTTP server (`/metrics`, `/healthz`, the API). Default `0.0.0.0:9477`.
    pub listen: SocketAddr,
    /// A web-config file in exporter-toolkit's format (as node_exporter's and Alertmanager's
    /// `--web.config.file`): TLS for the HTTP server, client certificates, basic-auth users.
    /// Default: none (plain HTTP, no authentication).
    pub web_config_file: Option<PathBuf>,
    /// How often collectors run and rules are evaluated. Default `1s`; at least `100ms`.
    pub interval: Interval,
    /// Root of the proc filesystem, for the procfs fallbacks. Default `/proc`.
    pub proc_root: PathBuf,
    /// Settings of each probe.
    pub probes: ProbesConfig,
    /// Local services to watch: HTTP and TCP checks, and push heartbeats. Default: none.
    pub heartbeats: HeartbeatsConfig,
    /// Resource metrics: CPU, memory, load, disk usage, pressure stall information.
    pub resources: ResourcesConfig,
    /// Local targets whose metrics the rules read (a model server, node_exporter), each
    /// scraped on its own task; their series are not exported on `/metrics`. Default: none.
    pub scrape: ScrapeConfig,
    /// The `container` and `pod` labels: how a cgroup is traced to its container.
    pub containers: ContainersConfig,
    /// Labels added to every alert sent to Alertmanager and webhooks (a rule's own label of
    /// the same name wins), so that the same alert of two nodes stays two alerts. Label names
    /// as in Prometheus. Default `{node: <hostname>}`; `{}` adds none.
    pub external_labels: ExternalLabels,
    /// Where alerts are sent: Alertmanager and webhooks. Default: none.
    pub notifiers: NotifiersConfig,
    /// Node health for the load balancer.
    pub health: HealthConfig,
    /// Where state that must survive a restart is kept (manual drain, undelivered
    /// notifications). Default `/var/lib/nodewatch`.
    pub spool_dir: PathBuf,
    /// Whether the rules embedded in the binary (`alerts/default.yaml`) are evaluated.
    /// Default `true`.
    pub default_rules: bool,
    /// More rule files to evaluate, in the Prometheus rule-file format: paths or globs
    /// (`/etc/nodewatch/rules.d/*.yaml`); relative ones are resolved against the folder of this
    /// config file. Re-read on SIGHUP. Default: none.
    pub rule_files: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9477)),
            web_config_file: None,
            interval: Interval(Duration::from_secs(1)),
            proc_root: PathBuf::from("/proc"),
            probes: ProbesConfig::default(),
            heartbeats: HeartbeatsConfig::default(),
            resources: ResourcesConfig::default(),
            scrape: ScrapeConfig::default(),
            containers: ContainersConfig::default(),
            external_labels: ExternalLabels::default(),
            notifiers: NotifiersConfig::default(),
            health: HealthConfig::default(),
            spool_dir: PathBuf::from("/var/lib/nodewatch"),
            default_rules: true,
            rule_files: Vec::new(),
        }
    }
}

/// The top-level keys, in the order the reference lists them.
const KEYS: &[&str] = &[
    "listen",
    "web_config_file",
    "interval",
    "proc_root",
    "probes",
    "heartbeats",
    "resources",
    "scrape",
    "containers",
    "external_labels",
    "notifiers",
    "health",
    "spool_dir",
    "default_rules",
    "rule_files",
];

impl Config {
    /// Reads and validates a configuration file; one that any user may write is refused.
    pub fn load(path: &Path) -> Result<Self, yaml::Errors> {
        let text = yaml::read_trusted(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Self {
        Self::parse("<embedded config.yaml>", DEFAULT_CONFIG)
            .expect("the embedded config is checked by a unit test")
    }

    /// Parses configuration text; `file` only names the source in errors. Every section is
    /// read on its own, so the problems of all of them are reported.
    pub fn parse(file: &str, text: &str) -> Result<Self, yaml::Errors> {
        let mut doc = Document::new(file, text)?;
        let mut c = Self::default();
        if doc.is_empty() || !doc.keys(&[], KEYS) {
            doc.finish()?;
            return Ok(c);
        }
        fn set<T: serde::de::DeserializeOwned>(doc: &mut Document<'_>, key: &str, to: &mut T) {
            if let Some(v) = doc.section(&[key]) {
                *to = v;
            }
        }
        set(&mut doc, "listen", &mut c.listen);
        set(&mut doc, "web_config_file", &mut c.web_config_file);
        set(&mut doc, "interval", &mut c.interval);
        set(&mut doc, "proc_root", &mut c.proc_root);
        c.probes = collectors::probes_config(&mut doc, &["probes"]);
        set(&mut doc, "heartbeats", &mut c.heartbeats);
        set(&mut doc, "resources", &mut c.resources);
        set(&mut doc, "scrape", &mut c.scrape);
        set(&mut doc, "containers", &mut c.containers);
        set(&mut doc, "external_labels", &mut c.external_labels);
        set(&mut doc, "notifiers", &mut c.notifiers);
        set(&mut doc, "health", &mut c.health);
        set(&mut doc, "spool_dir", &mut c.spool_dir);
        set(&mut doc, "default_rules", &mut c.default_rules);
        set(&mut doc, "rule_files", &mut c.rule_files);
        c.check_drain_budget(&mut doc);
        for (job, instance, timeout) in c.scrape.timeouts_over(c.interval.0) {
            doc.invalid(
                "scrape",
                format!(
                    "job `{job}` ({instance}): timeout {} is longer than the agent's interval {}, which it is scraped at: shorten it or give the target its own interval",
                    humantime::format_duration(timeout),
                    humantime::format_duration(c.interval.0)
                ),
            );
        }
        doc.finish()?;
        Ok(c)
    }

    /// The drain budget reads the Alertmanagers the agent notifies and groups by the `node`
    /// external label: both must be there.
    fn check_drain_budget(&self, doc: &mut Document<'_>) {
        if self.health.drain_budget.is_none() {
            return;
        }
        if !self
            .notifiers
            .0
            .iter()
            .any(|n| n.kind == Kind::Alertmanager)
        {
            doc.invalid(
                "health.drain_budget",
                "the drain budget reads the other nodes' alerts from Alertmanager: add a notifier of kind alertmanager",
            );
        }
        if !self.external_labels.resolved().contains_key(NODE_LABEL) {
            doc.invalid(
                "external_labels",
                "the drain budget tells nodes apart by the external label `node`: keep it",
            );
        }
    }

    /// The Alertmanagers notified, with the shortest delivery timeout among them.
    pub fn alertmanagers(&self) -> (Vec<(http::Uri, crate::httpc::HttpConfig)>, Duration) {
        let ams: Vec<_> = self
            .notifiers
            .0
            .iter()
            .filter(|n| n.kind == Kind::Alertmanager)
            .collect();
        let timeout = ams
            .iter()
            .map(|n| n.timeout)
            .min()
            .unwrap_or(Duration::from_secs(1));
        (
            ams.iter()
                .flat_map(|n| n.urls.iter().map(|u| (u.clone(), n.http_config.clone())))
                .collect(),
            timeout,
        )
    }

    /// What the collectors read of it.
    pub fn collectors(&self) -> collectors::Settings<'_> {
        collectors::Settings {
            proc_root: &self.proc_root,
            probes: &self.probes,
            heartbeats: &self.heartbeats,
            resources: &self.resources,
            scrape: &self.scrape,
            interval: self.interval.0,
            containers: &self.containers,
            spool_dir: &self.spool_dir,
        }
    }
}

/// The tick: a duration written the human way (`500ms`, `1s`, `2m`), at least 100 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        yaml::duration_at_least(&text, Duration::from_millis(100), "interval").map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::probes::accept_queue::AcceptQueueMode;

    fn err(text: &str) -> String {
        Config::parse("c.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_parses_and_equals_builtin_defaults() {
        assert_eq!(Config::embedded(), Config::default());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("c", "").unwrap(), Config::default());
        assert_eq!(
            Config::parse("c", "# nothing\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn reads_every_key() {
        let c = Config::parse(
            "c",
            "listen: 127.0.0.1:1234\ninterval: 250ms\nproc_root: /tmp/p\nprobes:\n  tcp_retransmits: { enabled: false, ports: [22, 443] }\n",
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(c.interval.0, Duration::from_millis(250));
        assert_eq!(c.proc_root, PathBuf::from("/tmp/p"));
        assert!(!c.probes.tcp_retransmits.enabled);
        assert_eq!(c.probes.tcp_retransmits.ports.0, vec![22, 443]);
        let c = Config::parse(
            "c",
            "default_rules: false\nrule_files: [\"/etc/nodewatch/rules.d/*.yaml\", local.yaml]\n",
        )
        .unwrap();
        assert!(!c.default_rules);
        assert_eq!(
            c.rule_files,
            vec![
                "/etc/nodewatch/rules.d/*.yaml".to_string(),
                "local.yaml".into()
            ]
        );
        let c = Config::parse(
            "c",
            "probes:\n  accept_queue:\n    ports: [8000]\n    mode: sock_diag\n",
        )
        .unwrap();
        assert_eq!(c.probes.accept_queue.ports.0, vec![8000]);
        assert_eq!(c.probes.accept_queue.mode, AcceptQueueMode::SockDiag);
        let e = err("probes:\n  accept_queue:\n    mode: fast\n");
        assert!(
            e.starts_with("c.yaml:3:11: probes.accept_queue.mode: "),
            "{e}"
        );
        assert!(e.contains("sock_diag"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let e = err("interval: 1s\nprobes:\n  tcp_retransmit: {}\n");
        assert!(e.starts_with("c.yaml:3:3: "), "{e}");
        assert!(e.contains("unknown field `tcp_retransmit`"), "{e}");
        assert!(e.contains("probes"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("probes:\n  tcp_retransmits:\n    ports: [80, http]\n");
        assert!(
            e.starts_with("c.yaml:3:17: probes.tcp_retransmits.ports[1]: "),
            "{e}"
        );
        assert!(e.contains("probes.tcp_retransmits.ports"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = err("listen: 0.0.0.0:9477\ninterval: soon\n");
        assert!(
            e.starts_with("c.yaml:2:11: interval: invalid duration `soon`"),
            "{e}"
        );
        let e = err("interval: 10ms\n");
        assert!(e.contains("interval: interval 10ms is too short"), "{e}");
    }

    #[test]
    fn bad_ports_are_rejected() {
        assert!(err("probes: {tcp_retransmits: {ports: [0]}}").contains("port 0"));
        assert!(err("probes: {tcp_retransmits: {ports: [80, 80]}}").contains("listed twice"));
        assert!(err("probes: {tcp_retransmits: {ports: [70000]}}").contains("ports"));
        let many: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
        let e = err(&format!(
            "probes: {{tcp_retransmits: {{ports: [{}]}}}}",
            many.join(",")
        ));
        assert!(e.contains("at most 256"), "{e}");
    }

    #[test]
    fn reads_gpu_keys() {
        let c = Config::parse(
            "c",
            "probes:\n  gpu_ioctl:\n    enabled: false\n    devices: [/dev/null, \"/tmp/x/gpu*\"]\n    stall_threshold: 250ms\n  gpu_xid: { enabled: false }\n",
        )
        .unwrap();
        let g = &c.probes.gpu_ioctl;
        assert!(!g.enabled);
        assert_eq!(g.devices.0, vec!["/dev/null", "/tmp/x/gpu*"]);
        assert_eq!(g.stall_threshold.0, Duration::from_millis(250));
        assert!(!c.probes.gpu_xid.enabled);
    }

    #[test]
    fn bad_gpu_keys_are_located() {
        let e = err("probes:\n  gpu_ioctl:\n    devices: [/dev/nvidia0, dev/kfd]\n");
        assert!(
            e.starts_with("c.yaml:3:29: probes.gpu_ioctl.devices: `dev/kfd` is not an absolute"),
            "{e}"
        );
        let e = err("probes: { gpu_ioctl: { devices: [\"/dev/[nv\"] } }\n");
        assert!(e.contains("invalid glob `/dev/[nv`"), "{e}");
        let e = err("probes: { gpu_ioctl: { devices: [/dev/kfd, /dev/kfd] } }\n");
        assert!(e.contains("`/dev/kfd` is listed twice"), "{e}");
        let e = err("probes:\n  gpu_ioctl:\n    stall_threshold: 10us\n");
        assert!(
            e.starts_with(
                "c.yaml:3:22: probes.gpu_ioctl.stall_threshold: stall threshold 10us is too short"
            ),
            "{e}"
        );
        let e = err("probes: { gpu_ioctl: { stall_threshold: forever } }\n");
        assert!(e.contains("invalid duration `forever`"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("/dev/x{i}")).collect();
        let e = err(&format!(
            "probes: {{gpu_ioctl: {{devices: [{}]}}}}",
            many.join(",")
        ));
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn top_level_unknown_key_is_located() {
        let e = err("listen: 0.0.0.0:9477\nintervall: 1s\n");
        assert!(
            e.starts_with("c.yaml:2:1: intervall: unknown field `intervall`"),
            "{e}"
        );
        let e = err("probes: { tcp_retransmits: { ports: [1], colour: red } }\n");
        assert!(
            e.starts_with("c.yaml:1:42: probes.tcp_retransmits.colour: "),
            "{e}"
        );
    }

    #[test]
    fn notifiers_are_validated_with_locations() {
        let c = Config::parse(
            "c",
            "notifiers:\n  - { name: am, kind: alertmanager, urls: [\"http://a:9093\", \"http://b:9093\"] }\n  - { name: ops, kind: webhook, url: \"http://h/x\", timeout: 2s }\n",
        )
        .unwrap();
        assert_eq!(c.notifiers.0.len(), 2);
        assert_eq!(c.notifiers.0[0].urls.len(), 2);
        assert_eq!(c.notifiers.0[1].timeout, Duration::from_secs(2));
        for (text, want) in [
            (
                "notifiers:\n  - { name: a, kind: pager, url: \"http://x\" }\n",
                "c.yaml:2:22: notifiers: unknown notifier kind `pager`",
            ),
            (
                "notifiers:\n  - { name: a, kind: webhook }\n",
                "c.yaml:2:13: notifiers: notifier `a` needs `url` or `urls`",
            ),
            (
                "notifiers:\n  - { name: a, kind: webhook, url: \"ftp://x\" }\n",
                "URL `ftp://x` must be http",
            ),
            (
                "notifiers:\n  - { name: a, kind: alertmanager, url: \"http://x\", secret_file: /k }\n",
                "secret_file applies to webhooks only",
            ),
            (
                "notifiers:\n  - { name: a, kind: webhook, url: \"http://x\" }\n  - { name: a, kind: webhook, url: \"http://y\" }\n",
                "c.yaml:3:13: notifiers: notifier `a` is listed twice",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text}: want {want:?} in {e}");
        }
    }

    #[test]
    fn mistakes_in_three_sections_are_all_reported_in_file_order() {
        let text = "interval: 10ms\nprobes:\n  tcp_retransmits: { ports: [0] }\n  gpu_ioctl:\n    stall_threshold: soon\nheartbeats:\n  - { name: \"a b\", push_ttl: 10s }\nhealth: { colour: red }\n";
        let e = err(text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 5, "{e}");
        assert!(
            lines[0].starts_with("c.yaml:1:11: interval: interval 10ms is too short"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("c.yaml:3:30: probes.tcp_retransmits.ports: port 0"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("c.yaml:5:22: probes.gpu_ioctl.stall_threshold: invalid duration"),
            "{e}"
        );
        assert!(
            lines[3].starts_with("c.yaml:7:13: heartbeats: heartbeat name `a b`"),
            "{e}"
        );
        assert!(
            lines[4].starts_with("c.yaml:8:11: health.colour: unknown field `colour`"),
            "{e}"
        );
    }

    #[test]
    fn external_labels_default_to_the_hostname_and_are_validated() {
        let c = Config::parse("c", "").unwrap();
        let l = c.external_labels.resolved();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["node"]);
        assert!(!l["node"].is_empty());
        let c = Config::parse("c", "external_labels: { node: gpu-17, rack: r4 }\n").unwrap();
        assert_eq!(c.external_labels.resolved()["rack"], "r4");
        let c = Config::parse("c", "external_labels: {}\n").unwrap();
        assert!(c.external_labels.resolved().is_empty());
        let e = err("external_labels:\n  9lives: x\n");
        assert!(
            e.starts_with("c.yaml:2:11: external_labels: `9lives` is not a label name"),
            "{e}"
        );
        assert!(err("external_labels: { __x: y }").contains("not a label name"));
        assert!(err("external_labels: { node: \"\" }").contains("is empty"));
    }

    #[test]
    fn a_drain_budget_needs_alertmanager_and_the_node_label() {
        let am = "notifiers: [{ name: am, kind: alertmanager, url: \"http://a:9093\" }]\n";
        let budget = "health:\n  drain_budget: { max_unhealthy: 1 }\n";
        assert!(Config::parse("c", &format!("{am}{budget}")).is_ok());
        let e = err(budget);
        assert!(
            e.starts_with("c.yaml:2:3: health.drain_budget: ") && e.contains("kind alertmanager"),
            "{e}"
        );
        let e = err(&format!("{am}external_labels: {{ host: a }}\n{budget}"));
        assert!(
            e.starts_with("c.yaml:2:1: external_labels: ") && e.contains("`node`"),
            "{e}"
        );
    }

    #[test]
    fn control_characters_are_rejected() {
        let e = err("interval: 1s\nlisten: \u{0}\n");
        assert!(e.starts_with("c.yaml:2:9: control character"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        for text in [
            "listen: [",
            "{",
            ": :",
            "probes: {tcp_retransmits: 3}",
            "- a\n- b",
        ] {
            let e = err(text);
            assert!(e.starts_with("c.yaml:"), "{text:?} -> {e}");
        }
    }
}
