//! Operational events from one snapshot to the next, in `/api/v1/events`, newest first.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::{Duration, Instant};

use wgtel::{
    events::Event,
    lab::{Lab, LabOptions},
};
use wgtel_tests::Daemon;

fn events(daemon: &Daemon) -> Vec<Event> {
    serde_json::from_str(&daemon.get("/api/v1/events")).unwrap()
}

fn wait_for_events(daemon: &Daemon, count: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = events(daemon);
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn peer_changes_roaming_and_a_vanished_interface_are_events_newest_first() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "300ms"]);
    daemon.wait_for(Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    assert_eq!(events(&daemon), Vec::new(), "the first snapshot is only the baseline");

    let added = lab.add_peer().unwrap().public_key.to_string();
    wait_for_events(&daemon, 1);
    let peer1 = lab.peer("peer1").unwrap().public_key.to_string();
    let gateway = lab.gateway().clone();
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "peer", &peer1, "endpoint"])
        .arg(format!("198.18.{}.99:40000", lab.number()))
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_events(&daemon, 2);
    lab.remove_peer("peer2").unwrap();
    wait_for_events(&daemon, 3);
    lab.stop_gateway();
    let seen = wait_for_events(&daemon, 4);

    let summary: Vec<(&str, Option<&str>)> =
        seen.iter().map(|event| (event.kind.as_str(), event.peer.as_deref())).collect();
    assert_eq!(
        summary,
        [
            ("interface_destroyed", None),
            ("peer_removed", Some(added.as_str())),
            ("endpoint_roamed", Some(peer1.as_str())),
            ("peer_added", Some(added.as_str())),
        ]
    );
    assert_eq!(seen[2].detail, format!("198.18.{0}.10:51820 -> 198.18.{0}.99:40000", lab.number()));
    assert!(
        daemon
            .get("/metrics")
            .contains("wireguard_events_total{wireguard_event_type=\"peer_added\"} 1")
    );
}
