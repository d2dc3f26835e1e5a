//! The drain budget's decision driven through the races of a fleet: each node decides from
//! its own view, as `decide` sees it.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::*;

const P: Duration = Duration::from_millis(500);

fn rules(node: &str, limit: u32) -> Rules {
    Rules {
        node: node.into(),
        limit: Limit::Nodes(limit),
        when_unreachable: WhenUnreachable::Drain,
        hold_down: true,
        propagation: P,
    }
}

fn claim(node: &str, down: bool, out: bool, since_ms: i64) -> Candidate {
    Candidate {
        node: node.into(),
        down,
        out,
        since_ms,
    }
}

fn view(started: Instant, answered: usize, wanting: Vec<Candidate>) -> View {
    View {
        started,
        asked: 3,
        answered,
        wanting,
        members: BTreeSet::new(),
        errors: Vec::new(),
    }
}

fn mine(t0: Instant, since_ms: i64, out: bool) -> Mine {
    Mine {
        wants: Status::Draining,
        claim: Claim { since_ms, at: t0 },
        out,
        manual: false,
    }
}

fn is_out(d: &Decision) -> bool {
    matches!(d, Decision::Out(_))
}

#[test]
fn no_decision_before_every_earlier_claim_can_have_arrived() {
    let t0 = Instant::now();
    let me = mine(t0, 1_000, false);
    // An answer asked for before the claim cannot hold it.
    let early = view(t0 - Duration::from_millis(1), 3, vec![]);
    assert!(matches!(
        decide(&rules("a", 1), &me, Some(&early), t0),
        Decision::Wait { .. }
    ));
    // Holds the claim, but was asked for within the propagation bound: ask again then.
    let soon = view(
        t0 + Duration::from_millis(10),
        3,
        vec![claim("a", false, false, 1_000)],
    );
    assert_eq!(
        decide(
            &rules("a", 1),
            &me,
            Some(&soon),
            t0 + Duration::from_millis(20)
        ),
        Decision::Wait {
            why: "waiting for earlier claims to reach Alertmanager",
            ask_at: t0 + P
        }
    );
    let settled = view(t0 + P, 3, vec![claim("a", false, false, 1_000)]);
    assert!(is_out(&decide(&rules("a", 1), &me, Some(&settled), t0 + P)));
}

#[test]
fn two_nodes_claiming_at_once_agree_which_goes() {
    // a and b claim in the same millisecond, budget one: the name breaks the tie, on both.
    let t0 = Instant::now();
    let both = vec![
        claim("a", false, false, 1_000),
        claim("b", false, false, 1_000),
    ];
    let v = view(t0 + P, 3, both);
    let a = decide(&rules("a", 1), &mine(t0, 1_000, false), Some(&v), t0 + P);
    let b = decide(&rules("b", 1), &mine(t0, 1_000, false), Some(&v), t0 + P);
    assert!(is_out(&a), "{a:?}");
    match b {
        Decision::Held(v) => assert_eq!((v.rank, v.wanting, v.allowed), (1, 2, 1)),
        other => panic!("b: {other:?}"),
    }
}

#[test]
fn a_late_claim_never_puts_an_out_node_back_in() {
    // b went out; a's claim, made earlier, reached Alertmanager only after (a post slower
    // than the propagation bound). a waits, b stays out: no overshoot, no bounce.
    let t0 = Instant::now();
    let v = view(
        t0 + 2 * P,
        3,
        vec![
            claim("a", false, false, 900),
            claim("b", false, true, 1_000),
        ],
    );
    let b = decide(&rules("b", 1), &mine(t0, 1_000, true), Some(&v), t0 + 2 * P);
    assert!(is_out(&b), "{b:?}");
    let a = decide(&rules("a", 1), &mine(t0, 900, false), Some(&v), t0 + 2 * P);
    assert!(matches!(a, Decision::Held(_)), "{a:?}");
}

#[test]
fn an_alertmanager_missing_a_post_delays_but_does_not_mislead() {
    // The merged answer lacks this node's own claim (every Alertmanager missed its post): it
    // waits, asking again, for at most OWN_CLAIM_WAIT.
    let t0 = Instant::now();
    let me = mine(t0, 1_000, false);
    let v = view(t0 + P, 2, vec![claim("x", false, false, 1_200)]);
    assert!(matches!(
        decide(&rules("a", 1), &me, Some(&v), t0 + P),
        Decision::Wait { .. }
    ));
    let v = view(
        t0 + OWN_CLAIM_WAIT,
        2,
        vec![claim("x", false, false, 1_200)],
    );
    assert!(is_out(&decide(
        &rules("a", 1),
        &me,
        Some(&v),
        t0 + OWN_CLAIM_WAIT
    )));
}

#[test]
fn a_partition_decides_as_configured_and_an_out_node_stays_out() {
    let t0 = Instant::now();
    let nobody = view(t0 + P, 0, vec![]);
    let mut r = rules("a", 1);
    assert_eq!(
        decide(&r, &mine(t0, 1_000, false), Some(&nobody), t0 + P),
        Decision::Unreachable { out: true }
    );
    r.when_unreachable = WhenUnreachable::Stay;
    assert_eq!(
        decide(&r, &mine(t0, 1_000, false), Some(&nobody), t0 + P),
        Decision::Unreachable { out: false }
    );
    assert_eq!(
        decide(&r, &mine(t0, 1_000, true), Some(&nobody), t0 + P),
        Decision::Unreachable { out: true }
    );
}

#[test]
fn a_restarted_node_keeps_its_place() {
    // The node was out, its agent restarted: its new claim is later and not out yet, but
    // Alertmanager still holds the claim it sent as out. It ranks as out, with its first
    // claim's time, before the node that waited.
    let t0 = Instant::now();
    let v = view(
        t0 + P,
        3,
        vec![
            claim("a", false, true, 500),
            claim("a", false, false, 9_000),
            claim("b", false, false, 800),
        ],
    );
    let a = decide(&rules("a", 1), &mine(t0, 9_000, false), Some(&v), t0 + P);
    assert!(is_out(&a), "{a:?}");
    let b = decide(&rules("b", 1), &mine(t0, 800, false), Some(&v), t0 + P);
    assert!(matches!(b, Decision::Held(_)), "{b:?}");
}

#[test]
fn more_out_than_the_budget_sends_the_latest_back() {
    // The budget shrank (a percentage of a smaller fleet) or views differed beyond the bound:
    // of the nodes out, those ranked past the budget go back in, the earliest stay.
    let t0 = Instant::now();
    let v = view(
        t0 + P,
        3,
        vec![claim("a", false, true, 100), claim("b", false, true, 200)],
    );
    assert!(is_out(&decide(
        &rules("a", 1),
        &mine(t0, 100, true),
        Some(&v),
        t0 + P
    )));
    assert!(matches!(
        decide(&rules("b", 1), &mine(t0, 200, true), Some(&v), t0 + P),
        Decision::Held(_)
    ));
}

#[test]
fn down_is_held_unless_hold_down_is_off() {
    let t0 = Instant::now();
    let v = view(
        t0 + P,
        3,
        vec![claim("a", false, true, 100), claim("b", true, false, 200)],
    );
    let down = Mine {
        wants: Status::Down,
        ..mine(t0, 200, false)
    };
    let held = decide(&rules("b", 1), &down, Some(&v), t0 + P);
    match held {
        Decision::Held(v) => assert!(v.exhausted() && v.ahead == [("a".to_string(), false)]),
        other => panic!("{other:?}"),
    }
    let mut r = rules("b", 1);
    r.hold_down = false;
    // Never held, without waiting for any answer; and it ranks first, so the drained node
    // goes back in.
    assert!(is_out(&decide(&r, &down, None, t0)));
    let mut ra = rules("a", 1);
    ra.hold_down = false;
    assert!(matches!(
        decide(&ra, &mine(t0, 100, true), Some(&v), t0 + P),
        Decision::Held(_)
    ));
}

#[test]
fn a_manual_drain_is_out_at_once_and_takes_a_place() {
    let t0 = Instant::now();
    let manual = Mine {
        manual: true,
        ..mine(t0, 100, false)
    };
    assert!(is_out(&decide(&rules("a", 1), &manual, None, t0)));
    // Counted: an automatic drain elsewhere waits behind it.
    let v = view(
        t0 + P,
        3,
        vec![claim("a", false, true, 100), claim("b", false, false, 50)],
    );
    assert!(matches!(
        decide(&rules("b", 1), &mine(t0, 50, false), Some(&v), t0 + P),
        Decision::Held(_)
    ));
}

#[test]
fn twenty_nodes_racing_let_out_exactly_the_budget() {
    // Twelve nodes claim within 30 ms; each decides from a view that holds every claim made
    // before its own (the propagation bound) plus some made after, in any order: exactly the
    // first four go, whatever each saw of the later ones.
    let t0 = Instant::now();
    let claims: Vec<Candidate> = (0..12)
        .map(|i| claim(&format!("n{i:02}"), false, false, 1_000 + (i * 7 % 30)))
        .collect();
    let mut order: Vec<&Candidate> = claims.iter().collect();
    order.sort_by_key(|c| (c.since_ms, c.node.clone()));
    let first: BTreeSet<&str> = order[..4].iter().map(|c| c.node.as_str()).collect();
    for (i, me) in claims.iter().enumerate() {
        // What this node saw: every earlier claim, and every other later one.
        let seen: Vec<Candidate> = claims
            .iter()
            .enumerate()
            .filter(|(j, c)| (c.since_ms, &c.node) <= (me.since_ms, &me.node) || (i + j) % 2 == 0)
            .map(|(_, c)| c.clone())
            .collect();
        let v = view(t0 + P, 3, seen);
        let d = decide(
            &rules(&me.node, 4),
            &mine(t0, me.since_ms, false),
            Some(&v),
            t0 + P,
        );
        assert_eq!(
            is_out(&d),
            first.contains(me.node.as_str()),
            "{me:?}: {d:?}"
        );
    }
}
