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

/// `wgtel run` every `interval`, `cpu_saturated` off (`cpu-saturated = 1.0`): these tests
/// count every event, and the two CPUs they share with builds and other tests are often busy;
/// `cpu_saturated` has a test of its own (`cpu_alert.rs`).
fn start(lab: &Lab, interval: &str) -> Daemon {
    let config = lab.dir().join("events.toml");
    std::fs::write(&config, "[alerts]\ncpu-saturated = 1.0\n").unwrap();
    Daemon::start(lab, &["--interval", interval, "--config", config.to_str().unwrap()])
}

#[test]
fn peer_changes_roaming_and_a_vanished_interface_are_events_newest_first() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, "300ms");
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

/// `ip link set DEV down|up` in the gateway's namespace.
fn set_link(lab: &Lab, device: &str, state: &str) {
    let status = Lab::command(&lab.gateway().namespace, "ip")
        .args(["link", "set", device, state])
        .status()
        .unwrap();
    assert!(status.success(), "ip link set {device} {state}");
}

#[test]
fn links_going_down_and_up_are_events_even_between_collections_and_flapping_is_one() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(Duration::from_secs(10)).unwrap();
    // A long interval: every change below happens between two collections.
    let daemon = start(&lab, "2s");
    daemon.wait_for(Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    let wireguard = lab.gateway().interface.clone();

    // The WireGuard interface down and up within 100 ms.
    set_link(&lab, &wireguard, "down");
    std::thread::sleep(Duration::from_millis(100));
    set_link(&lab, &wireguard, "up");
    let seen = wait_for_events(&daemon, 2);
    let summary: Vec<(&str, &str, &str)> =
        seen.iter().map(|e| (e.kind.as_str(), e.interface.as_str(), e.detail.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("link_up", wireguard.as_str(), "WireGuard interface up"),
            ("link_down", wireguard.as_str(), "WireGuard interface down"),
        ]
    );

    // The underlay NIC down and up three times: three of each, one flapping.
    for _ in 0..3 {
        set_link(&lab, "u0", "down");
        set_link(&lab, "u0", "up");
    }
    let seen = wait_for_events(&daemon, 9);
    let underlay: Vec<&str> =
        seen.iter().filter(|e| e.interface == "u0").map(|e| e.kind.as_str()).collect();
    assert_eq!(
        underlay,
        // Newest first: the third down makes three within a minute.
        ["link_up", "link_flapping", "link_down", "link_up", "link_down", "link_up", "link_down"]
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(events(&daemon).len(), 9, "nothing more: {:#?}", events(&daemon));
    let metrics = daemon.get("/metrics");
    for (kind, count) in [("link_down", 4), ("link_up", 4), ("link_flapping", 1)] {
        let line = format!("wireguard_events_total{{wireguard_event_type=\"{kind}\"}} {count}");
        assert!(metrics.lines().any(|l| l == line), "{line}");
    }
}

#[test]
fn a_new_private_key_is_a_public_key_changed_event_showing_only_public_keys() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, "300ms");
    daemon.wait_for(Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    let gateway = lab.gateway().clone();
    let old = gateway.public_key.to_string();
    let key_file = lab.dir().join("new-private-key");
    let private = Lab::command(&gateway.namespace, "wg").arg("genkey").output().unwrap().stdout;
    std::fs::write(&key_file, &private).unwrap();
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "private-key"])
        .arg(&key_file)
        .status()
        .unwrap();
    assert!(status.success());
    let new = Lab::command(&gateway.namespace, "wg")
        .args(["show", &gateway.interface, "public-key"])
        .output()
        .unwrap()
        .stdout;
    let new = String::from_utf8(new).unwrap().trim().to_owned();

    let seen = wait_for_events(&daemon, 1);
    let summary: Vec<(&str, &str)> =
        seen.iter().map(|e| (e.kind.as_str(), e.detail.as_str())).collect();
    assert_eq!(summary, [("public_key_changed", format!("{old} -> {new}").as_str())]);
    let interfaces = daemon.interfaces();
    assert_eq!(interfaces[0]["public_key"].as_str(), Some(new.as_str()));
    let private = String::from_utf8(private).unwrap();
    let (_, log) = daemon.stop();
    assert!(!log.contains(private.trim()), "the private key reached the log");
}

#[test]
fn an_interface_deleted_and_recreated_is_two_events_and_counting_resumes_on_the_new_one() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(Duration::from_secs(10)).unwrap();
    let daemon = start(&lab, "300ms");
    daemon.wait_for(Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    let interface_events = |daemon: &Daemon| -> Vec<String> {
        events(daemon)
            .into_iter()
            .filter(|e| e.kind.starts_with("interface_"))
            .map(|e| e.kind)
            .collect()
    };

    lab.stop_gateway();
    let deadline = Instant::now() + Duration::from_secs(10);
    while interface_events(&daemon).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.start_gateway().unwrap();
    lab.wait_for_handshakes(Duration::from_secs(10)).unwrap();
    daemon.wait_for(Duration::from_secs(10), "the peer on the new interface", |peers| {
        peers.len() == 1
    });
    assert_eq!(interface_events(&daemon), ["interface_created", "interface_destroyed"]);

    // The programs are attached to the new interface: 10 pings, 10 packets each way.
    let peer1 = lab.peer("peer1").unwrap().clone();
    let key = peer1.public_key.to_string();
    let packets = |peers: &[wgtel::export::api::ApiPeer]| {
        let peer = peers.iter().find(|p| p.public_key == key).unwrap();
        (peer.rx_packets, peer.tx_packets)
    };
    let before = wgtel_tests::settled(&daemon, Duration::from_millis(900), packets);
    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 10).unwrap(), 10);
    daemon.wait_for(Duration::from_secs(10), "10 more packets each way", |peers| {
        packets(peers) == (before.0 + 10, before.1 + 10)
    });
}
