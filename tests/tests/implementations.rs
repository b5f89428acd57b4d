//! Each userspace WireGuard implementation as the gateway (bookworm's wireguard-go, the
//! current wireguard-go with UDP GSO/GRO, boringtun), with peers of the same one, and a mixed
//! lab: exact inner packet counts on the right peer, the age of a fresh handshake, and the
//! implementation named in `/api/v1/interfaces`. Then the bulk traffic helpers of the lab
//! (iperf3, `/proc/net/snmp`) through a tunnel.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{collections::HashMap, net::IpAddr, time::Duration};

use wgtel::{
    export::api::ApiPeer,
    lab::{Implementation, Lab, LabError, LabNode, LabOptions},
};
use wgtel_tests::{Daemon, peer, settled};

const INTERVAL: &str = "500ms";
const SETTLE: Duration = Duration::from_millis(1200);
const WAIT: Duration = Duration::from_secs(10);

/// (rx_packets, tx_packets) by public key.
fn packets(peers: &[ApiPeer]) -> HashMap<String, (u64, u64)> {
    peers.iter().map(|peer| (peer.public_key.clone(), (peer.rx_packets, peer.tx_packets))).collect()
}

/// The gateway's only interface in `/api/v1/interfaces`.
fn gateway_interface(daemon: &Daemon) -> serde_json::Value {
    let interfaces = daemon.interfaces();
    let list = interfaces.as_array().unwrap();
    assert_eq!(list.len(), 1, "{interfaces:#}");
    list[0].clone()
}

/// `wireguard_peer_handshake_age_seconds` of the peer `node` in `/metrics`.
fn handshake_age_metric(daemon: &Daemon, node: &LabNode) -> f64 {
    let metrics = daemon.get("/metrics");
    let key = format!("wireguard_peer_public_key=\"{}\"", node.public_key);
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("wireguard_peer_handshake_age_seconds{") && line.contains(&key)
        })
        .unwrap_or_else(|| panic!("no handshake age for {}:\n{metrics}", node.name));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Builds the lab's handshakes, starts the daemon, and checks what it says of the gateway's
/// implementation (`expected`: its name in the API), its key and port, and of every peer's
/// fresh handshake.
fn start(lab: &Lab, expected: &str) -> Daemon {
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(lab, &["--interval", INTERVAL]);
    let count = lab.peers().len();
    let peers = daemon.wait_for(WAIT, "every peer", |peers| peers.len() == count);
    let interface = gateway_interface(&daemon);
    assert_eq!(interface["implementation"], expected, "{interface:#}");
    assert_eq!(interface["public_key"], lab.gateway().public_key.to_string(), "{interface:#}");
    assert_eq!(interface["listen_port"], 51820, "{interface:#}");
    for node in lab.peers() {
        let age = peer(&peers, node).last_handshake_seconds_ago;
        assert!(age.is_some_and(|age| (0.0..5.0).contains(&age)), "{}: {age:?}", node.name);
        let metric = handshake_age_metric(&daemon, node);
        assert!((0.0..5.0).contains(&metric), "{}: {metric} s in /metrics", node.name);
    }
    daemon
}

/// `count` pings from the gateway to `to` (an address of `target`): exactly `count` packets
/// out to `target` and `count` in from it; every other peer's counters stay as they were.
fn pings_count_on_their_peer(lab: &Lab, daemon: &Daemon, target: &LabNode, to: IpAddr, count: u32) {
    let key = target.public_key.to_string();
    let before = settled(daemon, SETTLE, packets);
    assert_eq!(lab.ping(lab.gateway(), to, count).unwrap(), count, "the tunnel lost pings to {to}");
    let (rx, tx) = before[&key];
    let expected = (rx + u64::from(count), tx + u64::from(count));
    daemon.wait_for(WAIT, &format!("{count} pings on {}", target.name), |peers| {
        packets(peers)[&key] == expected
    });
    let after = settled(daemon, SETTLE, packets);
    assert_eq!(after[&key], expected, "{}: (rx, tx) packets after {count} pings", target.name);
    for other in lab.peers().iter().filter(|other| other.name != target.name) {
        let other_key = other.public_key.to_string();
        assert_eq!(after[&other_key], before[&other_key], "{} moved", other.name);
    }
}

/// 50 IPv4 and 20 IPv6 pings to each peer, one peer at a time.
fn every_peer_counts_its_pings(lab: &Lab, daemon: &Daemon) {
    for node in lab.peers() {
        pings_count_on_their_peer(lab, daemon, node, node.tunnel_v4.into(), 50);
        pings_count_on_their_peer(lab, daemon, node, node.tunnel_v6.into(), 20);
    }
}

/// A lab of two peers, every node running `implementation`, whose process calls itself `comm`.
fn same_everywhere(implementation: Implementation, comm: &str, expected: &str) {
    let lab = Lab::build(LabOptions { peers: 2, implementation, ..LabOptions::default() }).unwrap();
    assert!(lab.peers().iter().all(|node| node.implementation == implementation));
    // The lab keeps the pid of the implementation's own process (`ip netns exec` execs it).
    for node in std::iter::once(lab.gateway()).chain(lab.peers()) {
        let pid = lab.wireguard_pid(node).unwrap();
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(name.trim_end(), comm, "{}", node.name);
    }
    let daemon = start(&lab, expected);
    every_peer_counts_its_pings(&lab, &daemon);
}

#[test]
fn bookworm_wireguard_go_everywhere() {
    same_everywhere(Implementation::WireguardGo, "wireguard-go", "wireguard-go");
}

#[test]
fn current_wireguard_go_everywhere() {
    // comm holds the first 15 bytes of `wireguard-go-current`.
    same_everywhere(Implementation::WireguardGoCurrent, "wireguard-go-cu", "wireguard-go");
}

#[test]
fn boringtun_everywhere() {
    same_everywhere(Implementation::Boringtun, "boringtun-cli", "boringtun");
}

#[test]
fn a_boringtun_gateway_with_a_current_and_a_bookworm_wireguard_go_peer() {
    let mut lab = Lab::build(LabOptions {
        peers: 1,
        implementation: Implementation::WireguardGoCurrent,
        gateway_implementation: Some(Implementation::Boringtun),
        ..LabOptions::default()
    })
    .unwrap();
    lab.add_peer_with(Implementation::WireguardGo).unwrap();
    let kinds: Vec<_> = lab.peers().iter().map(|node| node.implementation).collect();
    assert_eq!(kinds, [Implementation::WireguardGoCurrent, Implementation::WireguardGo]);
    assert_eq!(lab.gateway().implementation, Implementation::Boringtun);
    let daemon = start(&lab, "boringtun");
    every_peer_counts_its_pings(&lab, &daemon);
}

#[test]
fn iperf3_and_the_kernels_segment_counts_see_bulk_traffic_through_the_tunnel() {
    let lab = Lab::build(LabOptions { peers: 1, gro: true, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let (gateway, peer1) = (lab.gateway(), lab.peer("peer1").unwrap());

    // TCP, the gateway sending for 3 s.
    let out_before = lab.tcp_segments(gateway).unwrap().sent;
    let tcp = lab.iperf3(gateway, peer1.tunnel_v4.into(), false, 3, None).unwrap();
    let out_after = lab.tcp_segments(gateway).unwrap().sent;
    assert!(tcp.sent_bytes > 0 && tcp.received_bytes > 0, "{tcp:?}");
    assert_eq!(tcp.datagrams, None);
    assert!(out_after - out_before > 1000, "{} segments sent", out_after - out_before);

    // UDP at 10 Mbit/s for 1 s, the peer sending (reverse): every datagram iperf3 received
    // reached a socket of the gateway's namespace (which counts WireGuard's own too).
    let udp_before = lab.udp_counters(gateway).unwrap();
    let udp = lab.iperf3(gateway, peer1.tunnel_v4.into(), true, 1, Some(10_000_000)).unwrap();
    let udp_after = lab.udp_counters(gateway).unwrap();
    let datagrams = udp.datagrams.unwrap();
    assert!(datagrams.sent > 0 && datagrams.received > 0, "{udp:?}");
    assert!(datagrams.received + datagrams.lost <= datagrams.sent, "{udp:?}");
    assert!(udp_after.in_datagrams - udp_before.in_datagrams >= datagrams.received, "{udp:?}");

    // An address no node holds is an error, not a run of zero bytes.
    let error = lab.iperf3(gateway, lab.unrouted_v4().into(), false, 1, None).unwrap_err();
    assert!(matches!(error, LabError::NoSuchAddress(address) if address == lab.unrouted_v4()));
}
