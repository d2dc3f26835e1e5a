//! Probe `infiniband` against a fixture sysfs tree: ports exported as sysfs says, a port going
//! down takes the node out within 2 s naming its device and port, `link_downed` counted
//! exactly, and a node without RDMA devices reports the probe off.

mod common;

use std::time::{Duration, Instant};

use common::{
    Agent, TempDir, firing, healthz, http_get, infiniband::IbTree, nvml::time_until, sample,
    wait_for,
};

/// The other probes off: this test is about the InfiniBand ports alone.
const QUIET: &str = "probes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n  gpu_ioctl: { enabled: false }\n  gpu_xid: { enabled: false }\n  gpu_state: { enabled: false }\n";

fn config(dir: &TempDir, ib: &IbTree) -> String {
    format!(
        "{QUIET}{}spool_dir: {}\nhealth: {{ recover_after: 0s }}\n",
        ib.config(),
        dir.0.join("spool").display()
    )
}

#[test]
fn a_port_going_down_takes_the_node_out_within_2s_and_link_downed_counts_exactly() {
    let dir = TempDir::new("ib-down");
    let ib = IbTree::new(&dir);
    ib.add_port("mlx5_0", 1);
    ib.add_port("mlx5_1", 1);
    ib.set("mlx5_1", 1, "rate", "200 Gb/sec (4X HDR)");
    ib.set("mlx5_1", 1, "counters/symbol_error", "12");
    let agent = Agent::start(&dir, &config(&dir, &ib));
    let up = |d: &str| format!("nodewatch_infiniband_port_up{{device=\"{d}\",port=\"1\"}}");
    wait_for(Duration::from_secs(5), || {
        (agent.sample(&up("mlx5_0")) == Some(1.0) && healthz(&agent) == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "ports up, healthy:\n{}\n{}",
            agent.metrics(),
            agent.log_text()
        )
    });
    let text = agent.metrics();
    for (series, v) in [
        (up("mlx5_1"), 1.0),
        (
            "nodewatch_infiniband_port_rate_gbps{device=\"mlx5_0\",port=\"1\"}".to_string(),
            400.0,
        ),
        (
            "nodewatch_infiniband_port_rate_gbps{device=\"mlx5_1\",port=\"1\"}".to_string(),
            200.0,
        ),
        (
            "nodewatch_infiniband_port_errors_total{device=\"mlx5_1\",port=\"1\",counter=\"symbol_error\"}".to_string(),
            12.0,
        ),
        (
            "nodewatch_infiniband_link_downed_total{device=\"mlx5_0\",port=\"1\"}".to_string(),
            0.0,
        ),
        (
            "nodewatch_probe_up{probe=\"infiniband\",mode=\"sysfs\"}".to_string(),
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, &series), Some(v), "{series}\n{text}");
    }

    // The link of mlx5_0 port 1 goes down: the kernel counts it, the port is no longer ACTIVE.
    ib.set("mlx5_0", 1, "counters/link_downed", "1");
    ib.set("mlx5_0", 1, "phys_state", "3: Disabled");
    ib.set("mlx5_0", 1, "state", "1: DOWN");
    let t0 = Instant::now();
    let alert = [("device", "mlx5_0"), ("port", "1"), ("health", "drain")];
    let took = time_until(Duration::from_secs(5), || {
        firing(&agent, "NodewatchInfinibandPortDown", &alert) && healthz(&agent) == 503
    });
    eprintln!("mlx5_0 port 1 down -> NodewatchInfinibandPortDown and /healthz 503 after {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "not out within 2 s ({:?}):\n{}",
        t0.elapsed(),
        agent.metrics()
    );
    assert!(!firing(
        &agent,
        "NodewatchInfinibandPortDown",
        &[("device", "mlx5_1")]
    ));
    let (_, body) = http_get(agent.addr, "/healthz").unwrap();
    assert!(body.contains("NodewatchInfinibandPortDown"), "{body}");

    // It comes back, and goes down and up twice more: link_downed counts exactly 3.
    let downed = "nodewatch_infiniband_link_downed_total{device=\"mlx5_0\",port=\"1\"}";
    ib.set("mlx5_0", 1, "state", "4: ACTIVE");
    ib.set("mlx5_0", 1, "phys_state", "5: LinkUp");
    ib.set("mlx5_0", 1, "counters/link_downed", "3");
    let back = time_until(Duration::from_secs(5), || {
        agent.sample(downed) == Some(3.0) && !firing(&agent, "NodewatchInfinibandPortDown", &[])
    });
    assert!(back.is_some(), "not back:\n{}", agent.metrics());
    assert!(
        wait_for(Duration::from_secs(3), || firing(
            &agent,
            "NodewatchInfinibandLinkFlapping",
            &[("device", "mlx5_0"), ("port", "1"), ("health", "degrade")]
        )
        .then_some(()))
        .is_some(),
        "a link that went down is reported\n{}",
        agent.metrics()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.sample(downed), Some(3.0), "counted exactly");
    assert_eq!(
        healthz(&agent),
        200,
        "a flapping link degrades, it does not drain"
    );
}

#[test]
fn no_rdma_devices_turn_the_probe_off() {
    let dir = TempDir::new("ib-none");
    let agent = Agent::start(
        &dir,
        &format!(
            "{QUIET}  infiniband: {{ sysfs_root: {} }}\nspool_dir: {}\n",
            dir.0.join("nonexistent").display(),
            dir.0.join("spool").display()
        ),
    );
    let text = agent.metrics();
    assert_eq!(
        sample(
            &text,
            "nodewatch_probe_up{probe=\"infiniband\",mode=\"off\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert!(!text.contains("nodewatch_infiniband_port_up"), "{text}");
    assert_eq!(healthz(&agent), 200);
}
