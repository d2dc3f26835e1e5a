//! Metric names without the `nodewatch_` prefix, in one place. Counters are registered
//! without `_total`; the encoder appends it (`nodewatch_tcp_retransmits_total`).

pub const TCP_RETRANSMITS: &str = "tcp_retransmits";
pub const TCP_SEGMENTS_SENT: &str = "tcp_segments_sent";
pub const TCP_LISTEN_OVERFLOWS: &str = "tcp_listen_overflows";
pub const TCP_LISTEN_QUEUE_LENGTH: &str = "tcp_listen_queue_length";
pub const TCP_LISTEN_QUEUE_MAX: &str = "tcp_listen_queue_max";
pub const HEARTBEAT_UP: &str = "heartbeat_up";
pub const HEARTBEAT_LATENCY: &str = "heartbeat_latency_seconds";
pub const HEARTBEAT_FAILURES: &str = "heartbeat_failures";
pub const CPU_USAGE: &str = "cpu_usage_ratio";
pub const MEMORY_USED: &str = "memory_used_ratio";
pub const LOAD1: &str = "load1";
pub const DISK_USED: &str = "disk_used_ratio";
pub const PRESSURE: &str = "pressure_ratio";
pub const NODE_HEALTHY: &str = "node_healthy";
pub const NODE_DEGRADED: &str = "node_degraded";
pub const HEALTH_TRANSITIONS: &str = "health_transitions";
pub const UNHEALTHY_SECONDS: &str = "unhealthy_seconds";
pub const NOTIFICATIONS: &str = "notifications";
pub const NOTIFICATION_QUEUE: &str = "notification_queue_length";
pub const GPU_IOCTL_DURATION: &str = "gpu_ioctl_duration_seconds";
pub const GPU_IOCTL_STALLS: &str = "gpu_ioctl_stalls";
pub const GPU_IOCTL_INFLIGHT_STALLED: &str = "gpu_ioctl_inflight_stalled";
pub const GPU_IOCTL_EVENTS_DROPPED: &str = "gpu_ioctl_events_dropped";
pub const GPU_XID_ERRORS: &str = "gpu_xid_errors";
pub const PROBE_UP: &str = "probe_up";
pub const COLLECTOR_DURATION: &str = "collector_duration_seconds";
pub const COLLECTOR_ERRORS: &str = "collector_errors";
pub const MISSED_EVENTS: &str = "probe_missed_events";
pub const BUILD_INFO: &str = "build_info";
pub const ALERTS: &str = "alerts";
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: &str =
    "config_last_reload_success_timestamp_seconds";
pub const RULE_EVALUATION_DURATION: &str = "rule_evaluation_duration_seconds";
pub const RULE_EVALUATION_FAILURES: &str = "rule_evaluation_failures";
pub const RULE_HISTORY_SERIES: &str = "rule_history_series";
pub const RULE_HISTORY_SAMPLES: &str = "rule_history_samples";
pub const RULE_HISTORY_DROPPED_SAMPLES: &str = "rule_history_dropped_samples";
