//! `health:` in the configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::yaml::{HumanDuration, located};

/// `health:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Address of the HAProxy agent-check listener (`agent-check agent-port`), e.g.
    /// `0.0.0.0:9478`. Default: none.
    pub haproxy_agent_listen: Option<SocketAddr>,
    /// How long the alerts that made the node worse than healthy must have stopped firing
    /// before it is better again. Default `30s`.
    pub recover_after: HumanDuration,
    /// The share of its weight a degraded node keeps in the load balancer (the HAProxy
    /// agent-check answers `up ready <N>%`): `50` or `"50%"`, 1-100. Default 50.
    pub degraded_weight: Percent,
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
            degraded_weight: Percent(50),
            token_file: None,
        }
    }
}

/// A percentage from 1 to 100, written `50` or `"50%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        let digits = text.value.trim().strip_suffix('%').unwrap_or(&text.value);
        match digits.trim().parse::<u8>() {
            Ok(n @ 1..=100) => Ok(Self(n)),
            _ => Err(located(
                &text,
                format!(
                    "`{}` is not a weight: write a percentage from 1 to 100, such as 50 or \"50%\"",
                    text.value
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn degraded_weight_is_a_percentage() {
        let weight = |v: &str| {
            Config::parse("c.yaml", &format!("health:\n  degraded_weight: {v}\n"))
                .map(|c| c.health.degraded_weight.0)
                .map_err(|e| e.to_string())
        };
        assert_eq!(weight("50"), Ok(50));
        assert_eq!(weight("\"25%\""), Ok(25));
        assert_eq!(weight("100"), Ok(100));
        assert_eq!(weight("1"), Ok(1));
        assert_eq!(Config::parse("c", "").unwrap().health.degraded_weight.0, 50);
        for bad in ["0", "101", "\"0%\"", "half", "-5", "12.5"] {
            let e = weight(bad).unwrap_err();
            assert!(
                e.starts_with("c.yaml:2:20: health.degraded_weight: ")
                    && e.contains("from 1 to 100"),
                "{bad}: {e}"
            );
        }
    }
}
