//! Inner packets counted on the WireGuard interface, tied to their peer by AllowedIPs.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{collections::HashMap, net::IpAddr, time::Duration};

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabOptions},
};
use wgtel_tests::{Daemon, settled};

const INTERVAL: &str = "500ms";
const SETTLE: Duration = Duration::from_millis(1200);
const WAIT: Duration = Duration::from_secs(10);

/// (rx_packets, tx_packets) by public key.
fn packets(peers: &[ApiPeer]) -> HashMap<String, (u64, u64)> {
    peers.iter().map(|peer| (peer.public_key.clone(), (peer.rx_packets, peer.tx_packets))).collect()
}

fn two_peer_lab() -> (Lab, Daemon) {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", INTERVAL]);
    daemon.wait_for(WAIT, "both peers listed", |peers| peers.len() == 2);
    (lab, daemon)
}

/// 50 pings from the gateway to peer1 through the tunnel: exactly 50 packets out to peer1
/// (the requests) and 50 in from it (the replies); peer2's counters do not move.
fn fifty_pings_to_peer1(address: impl Fn(&wgtel::lab::LabNode) -> IpAddr) {
    let (lab, daemon) = two_peer_lab();
    let peer1 = lab.peer("peer1").unwrap().public_key.to_string();
    let peer2 = lab.peer("peer2").unwrap().public_key.to_string();
    let before = settled(&daemon, SETTLE, packets);

    let answered = lab.ping(lab.gateway(), address(lab.peer("peer1").unwrap()), 50).unwrap();
    assert_eq!(answered, 50, "the tunnel lost pings");

    let (rx1, tx1) = before[&peer1];
    daemon.wait_for(WAIT, "peer1's counters to move by 50", |peers| {
        packets(peers)[&peer1] == (rx1 + 50, tx1 + 50)
    });
    let after = settled(&daemon, SETTLE, packets);
    assert_eq!(after[&peer1], (rx1 + 50, tx1 + 50), "peer1: (rx, tx) packets");
    assert_eq!(after[&peer2], before[&peer2], "peer2 must not see peer1's pings");
    // Echo replies that ping's raw socket takes are not drops, whatever reason the kernel
    // frees them with.
    let peers = daemon.peers();
    let drops = &peers.iter().find(|peer| peer.public_key == peer1).unwrap().drops;
    assert_eq!(drops, &Some(Default::default()), "counted, and none");
}

#[test]
fn fifty_ipv4_pings_are_fifty_packets_each_way_on_their_peer() {
    fifty_pings_to_peer1(|peer| peer.tunnel_v4.into());
}

#[test]
fn fifty_ipv6_pings_are_fifty_packets_each_way_on_their_peer() {
    fifty_pings_to_peer1(|peer| peer.tunnel_v6.into());
}

#[test]
fn traffic_no_peer_accepts_counts_as_no_peer_drops_and_moves_no_peer() {
    let (lab, daemon) = two_peer_lab();
    let no_peer = |daemon: &Daemon| -> u64 {
        let interfaces = daemon.interfaces();
        interfaces[0]["drops"]["no_peer"].as_u64().unwrap_or(0)
    };
    let before_peers = settled(&daemon, SETTLE, packets);
    let before = no_peer(&daemon);

    // Routed into the tunnel by the gateway's /24 and /64, covered by no peer's AllowedIPs.
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v4().into(), 20).unwrap(), 0);
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v6().into(), 7).unwrap(), 0);

    let deadline = std::time::Instant::now() + WAIT;
    while no_peer(&daemon) < before + 27 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(SETTLE);
    assert_eq!(no_peer(&daemon), before + 27, "no_peer drops: 20 IPv4 and 7 IPv6 pings");
    let peers = daemon.peers();
    assert!(peers.iter().all(|peer| peer.drops == Some(Default::default())), "{peers:#?}");
    assert_eq!(packets(&peers), before_peers, "no peer's counters may move");
}

#[test]
fn a_prefix_shorter_than_a_host_ties_traffic_to_its_peer_through_the_trie() {
    let (lab, daemon) = two_peer_lab();
    let peer2 = lab.peer("peer2").unwrap();
    let key = peer2.public_key.to_string();
    // peer2 also takes 198.19.L.240/28 (and the unrouted .250 with it) and fd00:19:0:L::f0/124.
    let gateway = lab.gateway();
    let allowed = format!(
        "{}/32,{}/128,198.19.{}.240/28,{}/124",
        peer2.tunnel_v4,
        peer2.tunnel_v6,
        lab.number(),
        {
            let mut segments = lab.unrouted_v6().segments();
            segments[7] &= 0xfff0;
            std::net::Ipv6Addr::from(segments)
        }
    );
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "peer", &key, "allowed-ips", &allowed])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for(WAIT, "peer2's four AllowedIPs", |peers| {
        peers.iter().any(|peer| peer.public_key == key && peer.allowed_ips.len() == 4)
    });
    let no_peer =
        |daemon: &Daemon| daemon.interfaces()[0]["drops"]["no_peer"].as_u64().unwrap_or(0);
    let before = settled(&daemon, SETTLE, packets);
    let no_peer_before = no_peer(&daemon);

    // The peer holds no such address and does not answer: only the transmit side counts.
    assert_eq!(lab.ping(gateway, lab.unrouted_v4().into(), 6).unwrap(), 0);
    assert_eq!(lab.ping(gateway, lab.unrouted_v6().into(), 4).unwrap(), 0);

    let (rx, tx) = before[&key];
    daemon.wait_for(WAIT, "10 packets to peer2", |peers| packets(peers)[&key] == (rx, tx + 10));
    let after = settled(&daemon, SETTLE, packets);
    assert_eq!(after[&key], (rx, tx + 10));
    assert_eq!(no_peer(&daemon), no_peer_before, "covered by peer2's prefixes: not no_peer");
}

/// Sets peer `node`'s AllowedIPs on the gateway; fails the test when `wg` refuses.
fn set_allowed_ips(lab: &Lab, node: &wgtel::lab::LabNode, allowed: &str) {
    let gateway = lab.gateway();
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "peer", &node.public_key.to_string()])
        .args(["allowed-ips", allowed])
        .status()
        .unwrap();
    assert!(status.success(), "wg set allowed-ips {allowed}");
}

fn no_peer(daemon: &Daemon) -> u64 {
    daemon.interfaces()[0]["drops"]["no_peer"].as_u64().unwrap_or(0)
}

/// A peer with `::/0` takes every IPv6 destination and no IPv4 one: WireGuard keeps a trie per
/// family. Ten pings to an IPv4 address no IPv4 AllowedIPs cover are `no_peer`, not that
/// peer's; then with `0.0.0.0/0` on the other peer, each family goes to its own default peer.
#[test]
fn default_routes_of_one_family_never_take_the_other() {
    let (lab, daemon) = two_peer_lab();
    let peer1 = lab.peer("peer1").unwrap();
    let peer2 = lab.peer("peer2").unwrap();
    let (key1, key2) = (peer1.public_key.to_string(), peer2.public_key.to_string());
    set_allowed_ips(&lab, peer1, &format!("{}/32,::/0", peer1.tunnel_v4));
    daemon.wait_for(WAIT, "peer1 with ::/0", |peers| {
        peers.iter().any(|p| p.public_key == key1 && p.allowed_ips.iter().any(|a| a == "::/0"))
    });
    let before = settled(&daemon, SETTLE, packets);
    let no_peer_before = no_peer(&daemon);

    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v4().into(), 10).unwrap(), 0);
    // The unrouted IPv6 address is peer1's now: WireGuard sends the pings to it, which has no
    // such address and does not answer.
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v6().into(), 4).unwrap(), 0);
    daemon.wait_for(WAIT, "4 packets to peer1", |peers| {
        packets(peers)[&key1] == (before[&key1].0, before[&key1].1 + 4)
    });
    let after = settled(&daemon, SETTLE, packets);
    assert_eq!(after[&key1], (before[&key1].0, before[&key1].1 + 4), "peer1: only IPv6");
    assert_eq!(after[&key2], before[&key2], "peer2");
    assert_eq!(no_peer(&daemon), no_peer_before + 10, "the IPv4 pings are no_peer");

    // 0.0.0.0/0 on peer2: IPv4 defaults to peer2, IPv6 still to peer1.
    set_allowed_ips(
        &lab,
        peer2,
        &format!("{}/32,{}/128,0.0.0.0/0", peer2.tunnel_v4, peer2.tunnel_v6),
    );
    daemon.wait_for(WAIT, "peer2 with 0.0.0.0/0", |peers| {
        peers.iter().any(|p| p.public_key == key2 && p.allowed_ips.iter().any(|a| a == "0.0.0.0/0"))
    });
    let before = settled(&daemon, SETTLE, packets);
    let no_peer_before = no_peer(&daemon);
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v4().into(), 6).unwrap(), 0);
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v6().into(), 3).unwrap(), 0);
    daemon.wait_for(WAIT, "6 packets to peer2 and 3 to peer1", |peers| {
        let now = packets(peers);
        now[&key2].1 == before[&key2].1 + 6 && now[&key1].1 == before[&key1].1 + 3
    });
    let after = settled(&daemon, SETTLE, packets);
    assert_eq!(after[&key2], (before[&key2].0, before[&key2].1 + 6), "peer2: the IPv4 pings");
    assert_eq!(after[&key1], (before[&key1].0, before[&key1].1 + 3), "peer1: the IPv6 pings");
    assert_eq!(no_peer(&daemon), no_peer_before, "every ping had a peer");
}

/// Over IPv6 too: with `0.0.0.0/0` on peer2 and no IPv6 default, IPv6 pings to an address no
/// IPv6 AllowedIPs cover are `no_peer`.
#[test]
fn an_ipv4_default_route_never_takes_ipv6() {
    let (lab, daemon) = two_peer_lab();
    let peer2 = lab.peer("peer2").unwrap();
    let key2 = peer2.public_key.to_string();
    set_allowed_ips(&lab, peer2, &format!("{}/128,0.0.0.0/0", peer2.tunnel_v6));
    daemon.wait_for(WAIT, "peer2 with 0.0.0.0/0", |peers| {
        peers.iter().any(|p| p.public_key == key2 && p.allowed_ips.iter().any(|a| a == "0.0.0.0/0"))
    });
    let before = settled(&daemon, SETTLE, packets);
    let no_peer_before = no_peer(&daemon);
    assert_eq!(lab.ping(lab.gateway(), lab.unrouted_v6().into(), 9).unwrap(), 0);
    let deadline = std::time::Instant::now() + WAIT;
    while no_peer(&daemon) < no_peer_before + 9 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = settled(&daemon, SETTLE, packets);
    assert_eq!(no_peer(&daemon), no_peer_before + 9, "the IPv6 pings are no_peer");
    assert_eq!(after, before, "no peer's counters move");
}
