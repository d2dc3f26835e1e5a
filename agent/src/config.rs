//! The agent's YAML configuration. Every key is optional; the doc comment on each field is its
//! reference documentation. Errors name the file, line, column and key.

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de, de::DeserializeOwned};
use serde_saphyr::Spanned;

pub use crate::{
    heartbeats::config::Heartbeats, notify::config::Notifiers, resources::ResourcesConfig,
};

/// The configuration the binary runs with when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../packaging/config.yaml");

/// Most ports one probe may watch (the kernel map has one more slot, for `other`).
pub const MAX_WATCHED_PORTS: usize = nodewatch_common::tcp_retransmits::MAX_PORTS as usize;

/// Most device globs `probes.gpu_ioctl.devices` may list.
pub const MAX_DEVICE_GLOBS: usize = 64;

/// Top level of the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (`/metrics`, `/healthz`, the API). Default `0.0.0.0:9477`.
    pub listen: SocketAddr,
    /// How often collectors run and rules are evaluated. Default `1s`; at least `100ms`.
    pub interval: Interval,
    /// Root of the proc filesystem, for the procfs fallbacks. Default `/proc`.
    pub proc_root: PathBuf,
    /// Settings of each probe.
    pub probes: ProbesConfig,
    /// Local services to watch: HTTP and TCP checks, and push heartbeats. Default: none.
    pub heartbeats: Heartbeats,
    /// Resource metrics: CPU, memory, load, disk usage, pressure stall information.
    pub resources: ResourcesConfig,
    /// Where alerts are sent: Alertmanager and webhooks. Default: none.
    pub notifiers: Notifiers,
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
            interval: Interval(Duration::from_secs(1)),
            proc_root: PathBuf::from("/proc"),
            probes: ProbesConfig::default(),
            heartbeats: Heartbeats::default(),
            resources: ResourcesConfig::default(),
            notifiers: Notifiers::default(),
            health: HealthConfig::default(),
            spool_dir: PathBuf::from("/var/lib/nodewatch"),
            default_rules: true,
            rule_files: Vec::new(),
        }
    }
}

/// `probes:` — one entry per probe.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// TCP retransmits per watched port.
    pub tcp_retransmits: TcpRetransmitsConfig,
    /// Accept-queue overflows and queue depth per watched listening port.
    pub accept_queue: AcceptQueueConfig,
    /// GPU-driver ioctl latency, stalls and calls hung right now, per device.
    pub gpu_ioctl: GpuIoctlConfig,
    /// NVIDIA Xid errors counted from the kernel log.
    pub gpu_xid: GpuXidConfig,
}

/// `probes.tcp_retransmits:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpRetransmitsConfig {
    /// Whether the probe runs. Default `true`.
    pub enabled: bool,
    /// Ports to count separately; a connection matches when either end uses one. Everything
    /// else is counted under `port="other"`. Default `[8000, 8001, 8080]`; at most 256 ports,
    /// each 1–65535, no duplicates.
    pub ports: Ports,
}

impl Default for TcpRetransmitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Ports(vec![8000, 8001, 8080]),
        }
    }
}

/// `probes.accept_queue:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcceptQueueConfig {
    /// Whether the probe runs. Default `true`.
    pub enabled: bool,
    /// Listening ports to watch: overflows are counted and queue length and limit exported
    /// for each. Default `[8000, 8001, 8080]`; at most 256 ports, each 1–65535, no duplicates.
    pub ports: Ports,
    /// Where overflow counts come from: `auto` (eBPF, else sock_diag, else procfs), or one of
    /// `ebpf`, `sock_diag` (per-listener drops), `procfs` (host-wide `ListenOverflows`).
    /// Default `auto`.
    pub mode: AcceptQueueMode,
}

impl Default for AcceptQueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Ports(vec![8000, 8001, 8080]),
            mode: AcceptQueueMode::Auto,
        }
    }
}

/// `probes.gpu_ioctl:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuIoctlConfig {
    /// Whether the probe runs. Default `true`. Its programs are loaded at start but attached
    /// only once a watched device exists, so a host without GPUs pays nothing.
    pub enabled: bool,
    /// Device paths to watch, as absolute globs (`*`, `?`, `[...]`), re-read every tick so
    /// devices that appear later (a driver loaded after start) are picked up. A character
    /// device is matched by major:minor, a regular file by (file system, inode). A driver in
    /// `/proc/devices` whose name matches a glob's last part (`nvidia-uvm` for
    /// `/dev/nvidia-uvm*`) is watched by its major even where its node does not exist here.
    /// Default: NVIDIA, AMD KFD and DRM render nodes; at most 64 globs.
    pub devices: DeviceGlobs,
    /// Calls that take at least this long are stalls: counted, logged, and reported in
    /// flight while they last. Default `1s`; at least `1ms`.
    pub stall_threshold: StallThreshold,
}

impl Default for GpuIoctlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            devices: DeviceGlobs(
                [
                    "/dev/nvidia*",
                    "/dev/nvidia-uvm*",
                    "/dev/kfd",
                    "/dev/dri/renderD*",
                ]
                .map(String::from)
                .to_vec(),
            ),
            stall_threshold: StallThreshold(Duration::from_secs(1)),
        }
    }
}

/// `probes.accept_queue.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptQueueMode {
    /// The best this host allows: eBPF, then sock_diag, then procfs.
    Auto,
    /// eBPF only; if it cannot attach, the probe degrades as in `auto`, with a WARN line.
    Ebpf,
    /// Per-listener drops from sock_diag, no eBPF.
    SockDiag,
    /// Host-wide `TcpExt: ListenOverflows` from `/proc/net/netstat`.
    Procfs,
}

/// `health:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Address of the HAProxy agent-check listener (`agent-check agent-port`), e.g.
    /// `0.0.0.0:9478`. Default: none.
    pub haproxy_agent_listen: Option<SocketAddr>,
    /// How long the alerts that took the node out must have stopped firing before it is
    /// healthy again. Default `30s`.
    pub recover_after: HumanDuration,
    /// A file holding a token that lets callers other than loopback use
    /// `POST /api/v1/drain`, `/api/v1/undrain` and `/api/v1/reload` (`Authorization: Bearer <token>`).
    /// Default: none, loopback only.
    pub token_file: Option<PathBuf>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            haproxy_agent_listen: None,
            recover_after: HumanDuration(Duration::from_secs(30)),
            token_file: None,
        }
    }
}

/// A duration written the human way (`0s`, `500ms`, `30s`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        Ok(Self(parse_duration(&text)?))
    }
}

/// `probes.gpu_xid:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuXidConfig {
    /// Whether NVIDIA Xid lines are counted from `/dev/kmsg`. Default `true`. Reading starts
    /// at the end of the log, so a restart does not count old lines again.
    pub enabled: bool,
}

impl Default for GpuXidConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A duration written the human way (`500ms`, `1s`, `2m`), at least 100 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        let d = parse_duration(&text)?;
        if d < Duration::from_millis(100) {
            return Err(located(
                &text,
                format!(
                    "interval {} is too short: the minimum is 100ms",
                    humantime::format_duration(d)
                ),
            ));
        }
        Ok(Self(d))
    }
}

/// The GPU ioctl stall threshold, at least 1 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallThreshold(pub Duration);

impl<'de> Deserialize<'de> for StallThreshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        let d = parse_duration(&text)?;
        if d < Duration::from_millis(1) {
            return Err(located(
                &text,
                format!(
                    "stall threshold {} is too short: the minimum is 1ms",
                    humantime::format_duration(d)
                ),
            ));
        }
        Ok(Self(d))
    }
}

/// Absolute path globs, distinct and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGlobs(pub Vec<String>);

impl<'de> Deserialize<'de> for DeviceGlobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let globs = Vec::<Spanned<String>>::deserialize(d)?;
        if globs.len() > MAX_DEVICE_GLOBS {
            return Err(located(
                &globs[MAX_DEVICE_GLOBS],
                format!(
                    "{} globs listed; at most {MAX_DEVICE_GLOBS} are allowed",
                    globs.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for g in &globs {
            if !g.value.starts_with('/') {
                return Err(located(
                    g,
                    format!("`{}` is not an absolute path: write /dev/...", g.value),
                ));
            }
            if let Err(e) = glob::Pattern::new(&g.value) {
                return Err(located(g, format!("invalid glob `{}`: {e}", g.value)));
            }
            if !seen.insert(g.value.as_str()) {
                return Err(located(g, format!("`{}` is listed twice", g.value)));
            }
        }
        Ok(Self(globs.into_iter().map(|g| g.value).collect()))
    }
}

pub(crate) fn parse_duration<E: de::Error>(text: &Spanned<String>) -> Result<Duration, E> {
    humantime::parse_duration(text.value.trim()).map_err(|e| {
        located(
            text,
            format!(
                "invalid duration `{}` ({e}): write a number with a unit, such as 500ms, 1s or 2m",
                text.value
            ),
        )
    })
}

/// Marks a message from our own validation with the location of the value it is about, so
/// [`Config::parse`] can report it (serde's custom errors carry no location).
const LOC_MARK: char = '\u{1}';

pub(crate) fn located<T, E: de::Error>(at: &Spanned<T>, msg: impl fmt::Display) -> E {
    let l = &at.referenced;
    E::custom(format!(
        "{LOC_MARK}{}:{}{LOC_MARK}{msg}",
        l.line(),
        l.column()
    ))
}

/// Splits a message made by [`located`] into its location and text.
fn take_location(msg: &str) -> Option<(u64, u64, &str)> {
    let rest = msg.strip_prefix(LOC_MARK)?;
    let (loc, text) = rest.split_once(LOC_MARK)?;
    let (line, col) = loc.split_once(':')?;
    Some((line.parse().ok()?, col.parse().ok()?, text))
}

/// A list of distinct TCP ports, 1–65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ports = Vec::<Spanned<u16>>::deserialize(d)?;
        if ports.len() > MAX_WATCHED_PORTS {
            return Err(located(
                &ports[MAX_WATCHED_PORTS],
                format!(
                    "{} ports listed; at most {MAX_WATCHED_PORTS} can be watched",
                    ports.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &ports {
            if p.value == 0 {
                return Err(located(p, "port 0 is not a port; use 1-65535"));
            }
            if !seen.insert(p.value) {
                return Err(located(p, format!("port {} is listed twice", p.value)));
            }
        }
        Ok(Self(ports.into_iter().map(|p| p.value).collect()))
    }
}

/// A configuration problem, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: writable by every user (mode {mode:04o}); the agent runs privileged and refuses it: chmod o-w {file}"
    )]
    WorldWritable { file: String, mode: u32 },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file; one that any user may write is refused.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        refuse_world_writable(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Self {
        Self::parse("<embedded config.yaml>", DEFAULT_CONFIG)
            .expect("the embedded config is checked by a unit test")
    }

    /// Parses configuration text; `file` only names the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        // An empty file (or one with only comments) means "all defaults".
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            return Ok(Self::default());
        }
        parse_yaml(file, text)
    }
}

/// Refuses a file any user may change: whoever writes the agent's config or rules decides
/// what a privileged process reads and where it sends alerts. (A missing file is left to the
/// read that follows, for its usual message.)
pub fn refuse_world_writable(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(ConfigError::WorldWritable {
            file: path.display().to_string(),
            mode: m.permissions().mode() & 0o7777,
        }),
        _ => Ok(()),
    }
}

/// Parses YAML text into `T`; every problem is reported as `file:line:col: key: message`
/// (`file` only names the source). Shared by the config and the rule files.
pub fn parse_yaml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigError> {
    if let Some((line, column)) = control_char(text) {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            message: "control character in the file: YAML allows only printable text".into(),
        });
    }
    let options = serde_saphyr::Options {
        with_snippet: false,
        ..Default::default()
    };
    let mut path = None;
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    parsed.map_err(|e| {
        let full = strip_location(&e.to_string());
        let (line, column, mut message) = match take_location(&full) {
            Some((line, column, text)) => (line, column, text.to_string()),
            None => {
                // For serde's field errors the parser only knows where the enclosing
                // mapping starts; find the key they are about in the text instead.
                let about_key = ["unknown field", "duplicate field"]
                    .iter()
                    .any(|m| full.starts_with(m));
                let key_at = || path.as_deref().and_then(|p| locate(text, p));
                let parser_at = || {
                    e.location()
                        .filter(|l| l.line() > 0)
                        .map(|l| (l.line(), l.column()))
                };
                let at = if about_key {
                    key_at().or_else(parser_at)
                } else {
                    parser_at().or_else(key_at)
                };
                let (line, column) = at.unwrap_or((1, 1));
                (line, column, full.clone())
            }
        };
        // `Spanned` leaves add a `.value` segment that is not in the file.
        let path = path.map(|p| p.strip_suffix(".value").unwrap_or(&p).to_string());
        if let Some(p) = path.filter(|p| p != ".") {
            message = format!("{p}: {message}");
        }
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })
}

/// Line and column (1-based) of the first character YAML does not allow.
fn control_char(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        line.chars()
            .position(|c| c.is_control() && c != '\t' && c != '\r')
            .map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

/// Where the last key of a serde path (`probes.tcp_retransmits.ports[1]`) is written:
/// each key is searched for after the previous one, as `key:` in block or flow style.
fn locate(text: &str, path: &str) -> Option<(u64, u64)> {
    let mut pos = 0;
    for key in path.split('.').map(|k| k.split('[').next().unwrap_or(k)) {
        if key.is_empty() {
            continue;
        }
        pos += text[pos..].match_indices(key).find_map(|(i, _)| {
            let at = pos + i;
            let before = text[..at].chars().next_back();
            let after = text[at + key.len()..].trim_start_matches([' ', '\t']);
            let starts = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
            (starts && after.starts_with(':')).then_some(i)
        })?;
    }
    let line = text[..pos].matches('\n').count() as u64 + 1;
    let column = text[..pos]
        .rsplit('\n')
        .next()
        .unwrap_or("")
        .chars()
        .count() as u64
        + 1;
    Some((line, column))
}

/// serde-saphyr appends " at line L, column C"; the location is reported in front instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(", column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
