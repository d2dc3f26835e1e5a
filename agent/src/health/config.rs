//! `health:` in the configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::budget::Limit;
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
    /// How many nodes of the fleet may be out of the load balancer at once because of
    /// nodewatch's drain alerts; every node reads the others' alerts from the Alertmanagers it
    /// notifies. Default: none, each node decides alone.
    pub drain_budget: Option<DrainBudget>,
}

/// `health.drain_budget`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBudget {
    /// Nodes that may be out at once: a number (`2`), or a share of the fleet (`"20%"`, of
    /// the nodes that announce themselves to Alertmanager, rounded down, at least 1).
    pub max_unhealthy: MaxUnhealthy,
    /// When no Alertmanager answers: `drain` (decide alone, as without a budget) or `stay`
    /// (stay in the load balancer, degraded). Default `drain`.
    #[serde(default)]
    pub when_unreachable: WhenUnreachable,
    /// Whether the budget holds back nodes whose alerts say `health: down` as it holds
    /// `drain` (a held node stays in, degraded). `false`: `down` is never held, but still
    /// takes a place in the budget. Default `true`.
    #[serde(default = "yes")]
    pub hold_down: bool,
    /// The longest a node's claim takes to reach every Alertmanager, plus the clock skew
    /// between nodes: a node that wants out decides only from an answer asked for this long
    /// after its claim, so every earlier claim is in it. Default `500ms`.
    #[serde(default = "default_propagation")]
    pub propagation: HumanDuration,
}

fn yes() -> bool {
    true
}

fn default_propagation() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

/// What a node that wants to drain does when no Alertmanager answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenUnreachable {
    #[default]
    Drain,
    Stay,
}

/// `max_unhealthy`: `N` nodes or `"P%"` of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxUnhealthy(pub Limit);

impl<'de> Deserialize<'de> for MaxUnhealthy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Spanned::<String>::deserialize(d)?;
        let t = text.value.trim();
        let limit = match t.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Some(Limit::Percent(p)),
                _ => None,
            },
            None => match t.parse::<u32>() {
                Ok(n @ 1..=1_000_000) => Some(Limit::Nodes(n)),
                _ => None,
            },
        };
        limit.map(Self).ok_or_else(|| {
            located(
                &text,
                format!(
                    "`{}` is not a budget: write a number of nodes (at least 1), such as 2, or a share of the fleet from 1% to 100%, such as \"20%\"",
                    text.value
                ),
            )
        })
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            haproxy_agent_listen: None,
            recover_after: HumanDuration(Duration::from_secs(30)),
            degraded_weight: Percent(50),
            token_file: None,
            drain_budget: None,
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
    use super::{Limit, WhenUnreachable};
    use crate::config::Config;

    #[test]
    fn drain_budget_is_a_count_or_a_share() {
        let parse = |v: &str| {
            Config::parse(
                "c.yaml",
                &format!("notifiers: [{{ name: am, kind: alertmanager, url: \"http://a:9093\" }}]\nhealth:\n  drain_budget: {v}\n"),
            )
            .map(|c| c.health.drain_budget.unwrap())
            .map_err(|e| e.to_string())
        };
        let b = parse("{ max_unhealthy: 2 }").unwrap();
        assert_eq!(b.max_unhealthy.0, Limit::Nodes(2));
        assert_eq!(b.when_unreachable, WhenUnreachable::Drain);
        assert!(b.hold_down, "down is held by default");
        assert_eq!(b.propagation.0, std::time::Duration::from_millis(500));
        let b = parse(
            "{ max_unhealthy: \"20%\", when_unreachable: stay, hold_down: false, propagation: 2s }",
        )
        .unwrap();
        assert!(!b.hold_down);
        assert_eq!(b.propagation.0, std::time::Duration::from_secs(2));
        assert_eq!(b.max_unhealthy.0, Limit::Percent(20));
        assert_eq!(b.when_unreachable, WhenUnreachable::Stay);
        for bad in ["0", "\"0%\"", "\"101%\"", "many", "-1"] {
            let e = parse(&format!("{{ max_unhealthy: {bad} }}")).unwrap_err();
            assert!(
                e.starts_with("c.yaml:3:34: health.drain_budget.max_unhealthy: ")
                    && e.contains("not a budget"),
                "{bad}: {e}"
            );
        }
        let e = parse("{ max_unhealthy: 2, when_unreachable: maybe }").unwrap_err();
        assert!(e.contains("when_unreachable"), "{e}");
        let e = parse("{ when_unreachable: stay }").unwrap_err();
        assert!(e.contains("max_unhealthy"), "{e}");
    }

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
