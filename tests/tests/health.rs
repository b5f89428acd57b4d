//! Peer health: broken (sending without a fresh handshake) told apart from never and active.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::Duration;

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabNode, LabOptions},
};
use wgtel_tests::Daemon;

const WAIT: Duration = Duration::from_secs(10);

fn health(peers: &[ApiPeer], node: &LabNode) -> String {
    let key = node.public_key.to_string();
    peers.iter().find(|peer| peer.public_key == key).unwrap().health.clone()
}

#[test]
fn a_peer_this_host_sends_to_without_a_handshake_is_broken_a_quiet_one_is_not() {
    let lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (peer1, broken) = (lab.peer("peer1").unwrap(), lab.peer("broken").unwrap());
    let peers = daemon.wait_for(WAIT, "both peers", |peers| peers.len() == 2);
    assert_eq!((health(&peers, peer1), health(&peers, broken)), ("never".into(), "never".into()));

    assert_eq!(lab.ping(lab.gateway(), broken.tunnel_v4.into(), 1).unwrap(), 0);
    let peers = daemon.wait_for(WAIT, "the broken peer", |peers| health(peers, broken) == "broken");
    assert_eq!(health(&peers, peer1), "never", "a quiet peer is not broken");

    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 2).unwrap(), 2);
    daemon.wait_for(WAIT, "peer1 active", |peers| health(peers, peer1) == "active");
}

#[test]
fn host_metrics_cover_the_namespaces_nics_and_the_wireguard_go_processes() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "300ms"]);
    let gateway = lab.gateway();
    let deadline = std::time::Instant::now() + WAIT;
    let mut metrics = daemon.get("/metrics");
    // CPU utilization needs two readings.
    while !metrics.contains("system_cpu_utilization_ratio{") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        metrics = daemon.get("/metrics");
    }
    for state in ["user", "system", "idle", "softirq"] {
        assert!(
            metrics
                .contains(&format!("system_cpu_utilization_ratio{{system_cpu_state=\"{state}\"}}")),
            "{state}"
        );
    }
    assert!(metrics.contains("system_memory_usage_bytes{system_memory_state=\"used\"}"));
    for nic in ["u0", gateway.interface.as_str()] {
        let line = format!(
            "system_network_io_bytes_total{{network_interface_name=\"{nic}\",network_io_direction=\"transmit\"}}"
        );
        assert!(metrics.contains(&line), "{line}");
    }
    // The gateway's wireguard-go, named by the interface on its command line.
    let process = format!(
        "process_executable_name=\"wireguard-go\",wireguard_interface=\"{}\"",
        gateway.interface
    );
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("process_memory_usage_bytes{") && line.contains(&process)),
        "{process}"
    );
    assert!(metrics.contains("system_network_udp_errors_total{error_type=\"receive_buffer\"}"));
}
