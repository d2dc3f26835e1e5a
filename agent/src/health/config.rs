//! `health:` in the configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::yaml::HumanDuration;

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
