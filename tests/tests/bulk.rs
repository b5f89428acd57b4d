//! Packet conservation under bulk traffic, on every WireGuard implementation: iperf3 through
//! the tunnel both ways (TCP over IPv4, full-size segments; UDP over IPv6), with the sending
//! stacks' own counters as ground truth. Per peer and direction, the tunnel's packets equal
//! what the stacks sent, the underlay's transport-data messages equal the tunnel's packets,
//! and nothing is `invalid`: also when wireguard-go batches UDP (GSO on send, GRO on receive)
//! and coalesces inner TCP into its TUN device, and at a tunnel MTU that is a multiple of 16
//! (full-size packets padded) and one that is not (1420: full-size packets unpadded).

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::Duration;

use wgtel::{
    export::api::ApiPeer,
    lab::{Implementation, Lab, LabNode, LabOptions},
};
use wgtel_tests::{Daemon, peer, settled};

const WAIT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(1500);
/// Seconds of each iperf3 run.
const SECONDS: u32 = 3;
/// The UDP run's bitrate: well within what every implementation encrypts on this machine, so
/// no datagram is lost between the stack and the wire.
const UDP_BITRATE: u64 = 50_000_000;

/// What wgtel says of one peer: tunnel (rx, tx) packets, underlay transport data (rx, tx),
/// keepalives (rx, tx), drops.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counts {
    tunnel: (u64, u64),
    data: (u64, u64),
    keepalive: (u64, u64),
    invalid: (u64, u64),
    drops: u64,
}

fn counts(peers: &[ApiPeer], node: &LabNode) -> Counts {
    let peer = peer(peers, node);
    let message = |kind: &str| {
        let count = peer.messages[kind];
        (count.receive, count.transmit)
    };
    Counts {
        tunnel: (peer.rx_packets, peer.tx_packets),
        data: message("transport_data"),
        keepalive: message("keepalive"),
        invalid: message("invalid"),
        drops: peer.drops.as_ref().expect("drops counted").values().sum(),
    }
}

/// Datagrams sent over UDP on IPv6 in `node`'s namespace (`Udp6OutDatagrams` of
/// `/proc/net/snmp6`): the lab's underlay is IPv4, so these are iperf3's alone.
fn udp6_sent(node: &LabNode) -> u64 {
    udp6(node, "Udp6OutDatagrams")
}

/// Counter `name` of `/proc/net/snmp6` in `node`'s namespace.
fn udp6(node: &LabNode, name: &str) -> u64 {
    let output = Lab::command(&node.namespace, "cat").arg("/proc/net/snmp6").output().unwrap();
    assert!(output.status.success(), "reading /proc/net/snmp6 in {}", node.namespace);
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(|c: char| c.is_whitespace()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}'s /proc/net/snmp6", node.namespace))
}

/// Inner packets `node`'s stack sent: TCP segments (IPv4 and IPv6; new and retransmitted) and
/// IPv6 datagrams.
fn stack_sent(lab: &Lab, node: &LabNode) -> u64 {
    lab.tcp_segments(node).unwrap().transmitted() + udp6_sent(node)
}

/// peer1's and peer2's counts once they have stopped moving for [`SETTLE`] (at most [`WAIT`]).
fn quiet(daemon: &Daemon, peer1: &LabNode, peer2: &LabNode) -> (Counts, Counts) {
    let deadline = std::time::Instant::now() + WAIT;
    let read = || {
        let peers = daemon.peers();
        (counts(&peers, peer1), counts(&peers, peer2))
    };
    let mut last = read();
    loop {
        std::thread::sleep(SETTLE);
        let now = read();
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Packets the kernel dropped from `node`'s WireGuard interface's transmit queue (a TUN
/// device whose reader, the userspace WireGuard, fell behind): `ip -s` statistics.
fn tun_tx_dropped(node: &LabNode) -> u64 {
    let output = Lab::command(&node.namespace, "ip")
        .args(["-j", "-s", "link", "show", "dev", &node.interface])
        .output()
        .unwrap();
    assert!(output.status.success(), "ip -s link show {}", node.interface);
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx dropped count for {}: {links}", node.interface))
}

/// The outside counts of one bulk run, as deltas over it.
#[derive(Debug)]
struct Truth {
    /// Inner packets peer1's and the gateway's stacks sent.
    peer1_sent: u64,
    gateway_sent: u64,
    /// Dropped from peer1's and the gateway's TUN queue before their WireGuard read them.
    peer1_queue_drops: u64,
    gateway_queue_drops: u64,
    /// WireGuard datagrams the gateway's UDP receive buffer had no room for.
    gateway_rcvbuf_errors: u64,
}

/// Reads every counter [`Truth`] takes, at one point in time.
fn truth(lab: &Lab) -> Truth {
    let (gateway, peer1) = (lab.gateway(), lab.peer("peer1").unwrap());
    Truth {
        peer1_sent: stack_sent(lab, peer1),
        gateway_sent: stack_sent(lab, gateway),
        peer1_queue_drops: tun_tx_dropped(peer1),
        gateway_queue_drops: tun_tx_dropped(gateway),
        gateway_rcvbuf_errors: lab.udp_counters(gateway).unwrap().rcvbuf_errors,
    }
}

/// One bulk run at a time: two at once on two cores would measure the machine, not wgtel.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn conservation(options: LabOptions, tunnel_mtu: Option<u32>) {
    // A test that failed while holding the lock does not fail the others.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = Lab::build(LabOptions { peers: 2, ..options }).unwrap();
    if let Some(mtu) = tunnel_mtu {
        for node in [lab.gateway(), lab.peer("peer1").unwrap()] {
            let status = Lab::command(&node.namespace, "ip")
                .args(["link", "set", &node.interface, "mtu", &mtu.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "setting the MTU of {}", node.interface);
        }
    }
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (gateway, peer1, peer2) =
        (lab.gateway(), lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    let before = settled(&daemon, SETTLE, |peers| (counts(peers, peer1), counts(peers, peer2)));
    // No request to the daemon's API (TCP on the gateway's loopback) from here until the
    // stacks' counters are read again: every segment they count goes through the tunnel.
    let start = truth(&lab);
    let out = lab.iperf3(gateway, peer1.tunnel_v4.into(), false, SECONDS, None).unwrap();
    let back = lab.iperf3(gateway, peer1.tunnel_v4.into(), true, SECONDS, None).unwrap();
    let udp =
        lab.iperf3(gateway, peer1.tunnel_v6.into(), false, SECONDS, Some(UDP_BITRATE)).unwrap();
    let end = truth(&lab);
    let run = Truth {
        peer1_sent: end.peer1_sent - start.peer1_sent,
        gateway_sent: end.gateway_sent - start.gateway_sent,
        peer1_queue_drops: end.peer1_queue_drops - start.peer1_queue_drops,
        gateway_queue_drops: end.gateway_queue_drops - start.gateway_queue_drops,
        gateway_rcvbuf_errors: end.gateway_rcvbuf_errors - start.gateway_rcvbuf_errors,
    };
    assert!(
        out.received_bytes > 10_000_000 && back.received_bytes > 10_000_000,
        "{out:?} {back:?}"
    );
    let datagrams = udp.datagrams.unwrap();
    assert!(datagrams.sent > 1000, "{udp:?}");

    let (after, other) = quiet(&daemon, peer1, peer2);
    let delta = |now: (u64, u64), then: (u64, u64)| (now.0 - then.0, now.1 - then.1);
    let tunnel = delta(after.tunnel, before.0.tunnel);
    let data = delta(after.data, before.0.data);
    let report = format!(
        "{options:?} MTU {tunnel_mtu:?}: {run:?}; {datagrams:?}; wgtel: tunnel (rx, tx) \
         {tunnel:?}, underlay transport data {data:?}, keepalives {:?}, drops {}",
        delta(after.keepalive, before.0.keepalive),
        after.drops - before.0.drops,
    );
    eprintln!("{report}");
    // Into the tunnel: every packet the gateway's stack sent, counted once.
    assert_eq!(tunnel.1, run.gateway_sent, "tunnel tx = gateway stack: {report}");
    // Onto the wire: each as one transport-data message, but those the kernel dropped from
    // the TUN queue before wireguard-go or boringtun read them.
    assert_eq!(data.1 + run.gateway_queue_drops, tunnel.1, "underlay tx: {report}");
    // From the wire: every packet peer1's stack sent, but those dropped from its TUN queue.
    assert_eq!(data.0 + run.peer1_queue_drops, run.peer1_sent, "underlay rx: {report}");
    // Out of the tunnel: each message, but the datagrams the gateway's UDP receive buffer had
    // no room for (the kernel dropped them before WireGuard saw them).
    assert_eq!(tunnel.0 + run.gateway_rcvbuf_errors, data.0, "tunnel rx: {report}");
    assert_eq!(after.invalid, (0, 0), "nothing invalid: {report}");
    // peer2 saw none of it (a keepalive after its handshake aside).
    let other = Counts { keepalive: before.1.keepalive, ..other };
    assert_eq!(other, before.1, "peer2: {report}");
}

#[test]
fn bookworm_wireguard_go_conserves_packets_at_mtu_1420_and_1408() {
    conservation(LabOptions::default(), None);
    conservation(LabOptions::default(), Some(1408));
}

#[test]
fn current_wireguard_go_conserves_packets_with_gso() {
    let options =
        LabOptions { implementation: Implementation::WireguardGoCurrent, ..LabOptions::default() };
    conservation(options, None);
}

#[test]
fn current_wireguard_go_conserves_packets_with_gso_and_gro() {
    let options = LabOptions {
        implementation: Implementation::WireguardGoCurrent,
        gro: true,
        ..LabOptions::default()
    };
    conservation(options, None);
}

#[test]
fn boringtun_conserves_packets() {
    let options = LabOptions { implementation: Implementation::Boringtun, ..LabOptions::default() };
    conservation(options, None);
}

#[test]
fn mixed_boringtun_gateway_and_current_wireguard_go_peers_conserve_packets() {
    let options = LabOptions {
        implementation: Implementation::WireguardGoCurrent,
        gateway_implementation: Some(Implementation::Boringtun),
        gro: true,
        ..LabOptions::default()
    };
    conservation(options, None);
}
