//! The drain budget's arithmetic, the same on every node: the nodes that want out of the load
//! balancer are ranked, nodes already out first, then by the earliest `startsAt` of their
//! claims (when each began to want out), then by node name; a node may leave only while its
//! rank is within the budget. Every node sorts the same set the same way, so two nodes deciding
//! in the same second agree on which of them goes; and a node's rank depends only on the
//! claims before it, so a claim that arrives later never moves a node that is already out.
//! With `hold_down: false`, nodes that are `down` (never held) rank before all others.

use std::collections::{BTreeMap, BTreeSet};

/// `max_unhealthy`: a number of nodes, or a share of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Nodes(u32),
    /// Percent of the fleet, rounded down, at least one node.
    Percent(u8),
}

impl Limit {
    /// How many nodes may be out in a fleet of `size`.
    pub fn allowed(self, size: usize) -> usize {
        match self {
            Limit::Nodes(n) => n as usize,
            Limit::Percent(p) => (size * usize::from(p) / 100).max(1),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Nodes(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A node that wants out: from its claims in Alertmanager, or this node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// It asks for `health: down`.
    pub down: bool,
    /// It is out of the load balancer (let out by the budget, or drained by hand).
    pub out: bool,
    /// The earliest `startsAt` of its claims, in milliseconds since the epoch.
    pub since_ms: i64,
}

/// The order of the ranking: `down` first when it is never held, then nodes already out,
/// then the earliest claim, then the name.
fn key(c: &Candidate, down_first: bool) -> (bool, bool, i64, &str) {
    (!(down_first && c.down), !c.out, c.since_ms, &c.node)
}

/// Groups claims by node (down if any is, out if any is, the earliest start) and ranks them.
pub fn by_node(alerts: impl IntoIterator<Item = Candidate>, down_first: bool) -> Vec<Candidate> {
    let mut nodes: BTreeMap<String, Candidate> = BTreeMap::new();
    for a in alerts {
        match nodes.get_mut(&a.node) {
            None => {
                nodes.insert(a.node.clone(), a);
            }
            Some(c) => {
                c.down |= a.down;
                c.out |= a.out;
                c.since_ms = c.since_ms.min(a.since_ms);
            }
        }
    }
    let mut out: Vec<Candidate> = nodes.into_values().collect();
    out.sort_by(|a, b| key(a, down_first).cmp(&key(b, down_first)));
    out
}

/// What the budget says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// This node's place among those that want out, 0 first.
    pub rank: usize,
    /// How many nodes want out, this one included.
    pub wanting: usize,
    /// How many may be out: `max_unhealthy` for this fleet's size.
    pub allowed: usize,
    /// The fleet's size: nodes that announce themselves, or want out.
    pub size: usize,
    /// The nodes ranked before this one, `(name, down)`.
    pub ahead: Vec<(String, bool)>,
}

impl Verdict {
    /// Whether this node may leave the load balancer now.
    pub fn within(&self) -> bool {
        self.rank < self.allowed
    }

    /// Whether more nodes want out than the budget lets out.
    pub fn exhausted(&self) -> bool {
        self.wanting > self.allowed
    }
}

/// Ranks `me` among `others` (the alerts Alertmanager holds, this node's own among them or
/// not yet) in a fleet whose members announced themselves as `members`.
pub fn verdict(
    others: &[Candidate],
    members: &BTreeSet<String>,
    me: &Candidate,
    limit: Limit,
    down_first: bool,
) -> Verdict {
    let all = by_node(others.iter().cloned().chain([me.clone()]), down_first);
    let rank = all
        .iter()
        .position(|c| c.node == me.node)
        .expect("me is among them");
    let mut fleet: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    fleet.extend(all.iter().map(|c| c.node.as_str()));
    Verdict {
        rank,
        wanting: all.len(),
        allowed: limit.allowed(fleet.len()),
        size: fleet.len(),
        ahead: all[..rank]
            .iter()
            .map(|c| (c.node.clone(), c.down))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: &str, down: bool, since_ms: i64) -> Candidate {
        Candidate {
            node: node.into(),
            down,
            out: false,
            since_ms,
        }
    }

    fn names(order: &[Candidate]) -> Vec<&str> {
        order.iter().map(|c| c.node.as_str()).collect()
    }

    #[test]
    fn out_first_then_earliest_claim_then_name_and_down_first_only_when_never_held() {
        let mut late_out = c("n9", false, 5000);
        late_out.out = true;
        let claims = [
            c("n3", false, 100),
            c("n2", true, 900),
            late_out.clone(),
            c("n1", false, 100),
        ];
        // Held like drain: a node already out keeps its place before earlier claims.
        assert_eq!(
            names(&by_node(claims.clone(), false)),
            ["n9", "n1", "n3", "n2"]
        );
        // Never held: down first.
        assert_eq!(names(&by_node(claims, true)), ["n2", "n9", "n1", "n3"]);
    }

    #[test]
    fn claims_of_one_node_are_one_candidate() {
        let mut out = c("n1", false, 500);
        out.out = true;
        let order = by_node([c("n1", false, 50), out, c("n2", true, 10)], false);
        assert_eq!(names(&order), ["n1", "n2"]);
        assert!(order[0].out && !order[0].down && order[0].since_ms == 50);
    }

    #[test]
    fn down_first_then_earliest_then_name() {
        let order = by_node(
            [
                c("n3", false, 100),
                c("n1", false, 200),
                c("n4", true, 900),
                c("n2", false, 100),
                // A second alert of n1, earlier: its earliest start counts.
                c("n1", false, 50),
            ],
            true,
        );
        let names: Vec<&str> = order.iter().map(|c| c.node.as_str()).collect();
        assert_eq!(names, ["n4", "n1", "n2", "n3"]);
    }

    #[test]
    fn every_node_computes_the_same_ranks_from_the_same_alerts() {
        // Four nodes fire in the same millisecond; each sees the others' alerts, its own
        // perhaps not yet: all four agree that n1 and n2 go.
        let alerts = [
            c("n1", false, 1000),
            c("n2", false, 1000),
            c("n3", false, 1000),
            c("n4", false, 1000),
        ];
        let none = BTreeSet::new();
        for (i, me) in alerts.iter().enumerate() {
            let mut seen: Vec<Candidate> = alerts.to_vec();
            seen.remove(i);
            let v = verdict(&seen, &none, me, Limit::Nodes(2), false);
            assert_eq!(v.rank, i);
            assert_eq!(v.within(), i < 2, "{me:?}");
            assert_eq!((v.wanting, v.allowed), (4, 2));
        }
    }

    #[test]
    fn a_down_node_takes_a_place_in_the_budget() {
        let seen = [c("n1", false, 10), c("n9", true, 500)];
        let me = c("n2", false, 20);
        let v = verdict(&seen, &BTreeSet::new(), &me, Limit::Nodes(2), true);
        assert_eq!(v.rank, 2);
        assert!(!v.within());
        assert_eq!(
            v.ahead,
            [("n9".to_string(), true), ("n1".to_string(), false)]
        );
    }

    #[test]
    fn percent_of_the_fleet_rounds_down_to_at_least_one() {
        assert_eq!(Limit::Percent(20).allowed(10), 2);
        assert_eq!(Limit::Percent(20).allowed(14), 2);
        assert_eq!(Limit::Percent(20).allowed(15), 3);
        assert_eq!(Limit::Percent(20).allowed(3), 1);
        assert_eq!(Limit::Percent(100).allowed(7), 7);
        assert_eq!(Limit::Nodes(3).allowed(1), 3);
        let members: BTreeSet<String> = (1..=10).map(|i| format!("n{i}")).collect();
        let me = c("n3", false, 30);
        let seen = [c("n1", false, 10), c("n2", false, 20)];
        let v = verdict(&seen, &members, &me, Limit::Percent(20), false);
        assert_eq!((v.size, v.allowed, v.rank), (10, 2, 2));
        assert!(!v.within());
        // Nodes that want out but never announced themselves still count in the size.
        let v = verdict(&seen, &BTreeSet::new(), &me, Limit::Percent(50), false);
        assert_eq!((v.size, v.allowed), (3, 1));
    }
}
