//! Underlay telemetry: WireGuard messages by type on the right peer, handshakes that go
//! unanswered, kernel drops with their reasons, outer fragments and ICMP too-big.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabNode, LabOptions},
};
use wgtel_tests::{Daemon, drop_echo_requests_from, peer, settled, venv};

const WAIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_millis(1200);

/// (receive, transmit) of message type `kind` on `node`.
fn messages(peers: &[ApiPeer], node: &LabNode, kind: &str) -> (u64, u64) {
    let count = peer(peers, node).messages[kind];
    (count.receive, count.transmit)
}

#[test]
fn transport_data_is_counted_on_its_peer_in_each_direction() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    let before = settled(&daemon, SETTLE, |peers| {
        (messages(peers, peer1, "transport_data"), peer(peers, peer2).messages.clone())
    });

    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 20).unwrap(), 20);

    let (rx, tx) = before.0;
    daemon.wait_for(WAIT, "20 data messages each way", |peers| {
        messages(peers, peer1, "transport_data") == (rx + 20, tx + 20)
    });
    let after = settled(&daemon, SETTLE, |peers| {
        (messages(peers, peer1, "transport_data"), peer(peers, peer2).messages.clone())
    });
    assert_eq!(after.0, (rx + 20, tx + 20), "peer1 transport_data (receive, transmit)");
    assert_eq!(after.1, before.1, "peer2's messages must not move");
    let interfaces = daemon.interfaces();
    assert_eq!(interfaces[0]["underlay_unknown_source"], 0);
}

#[test]
fn a_peer_holding_a_wrong_key_shows_unanswered_initiations_within_an_interval() {
    let lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "1s"]);
    let broken = lab.peer("broken").unwrap();
    daemon.wait_for(WAIT, "both peers", |peers| peers.len() == 2);

    // One packet for the broken peer: the gateway initiates, and retries every 5 s
    // (REKEY_TIMEOUT) while the packet waits.
    let started = Instant::now();
    assert_eq!(lab.ping(lab.gateway(), broken.tunnel_v4.into(), 1).unwrap(), 0);
    daemon.wait_for(WAIT, "an unanswered initiation", |peers| {
        peer(peers, broken).unanswered_initiations >= 1
    });
    // The ping waited up to 1 s for its answer; the daemon must then show it within an
    // interval and the time its collection takes.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let peers = daemon.wait_for(WAIT, "a retried initiation", |peers| {
        peer(peers, broken).unanswered_initiations >= 2
    });
    let broken_peer = peer(&peers, broken);
    let (responses_in, _) = messages(&peers, broken, "handshake_response");
    let (_, initiations_out) = messages(&peers, broken, "handshake_initiation");
    assert_eq!(responses_in, 0, "{broken_peer:#?}");
    assert_eq!(broken_peer.unanswered_initiations, initiations_out);
    assert_eq!(broken_peer.last_handshake_seconds_ago, None);
    assert_eq!(peer(&peers, lab.peer("peer1").unwrap()).unanswered_initiations, 0);
}

#[test]
fn netfilter_drops_of_one_peers_traffic_are_counted_on_that_peer_with_their_reason() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    drop_echo_requests_from(&lab, peer1);
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);

    // peer1's pings reach the gateway through the tunnel and die in its input hook.
    assert_eq!(lab.ping(peer1, lab.gateway().tunnel_v4.into(), 12).unwrap(), 0);
    assert_eq!(lab.ping(peer2, lab.gateway().tunnel_v4.into(), 5).unwrap(), 5);

    daemon.wait_for(WAIT, "12 NETFILTER_DROP on peer1", |peers| {
        peer(peers, peer1).drops.as_ref().and_then(|drops| drops.get("NETFILTER_DROP")) == Some(&12)
    });
    let (on_peer1, on_peer2) = settled(&daemon, SETTLE, |peers| {
        (peer(peers, peer1).drops.clone(), peer(peers, peer2).drops.clone())
    });
    let (on_peer1, on_peer2) = (on_peer1.expect("drops counted"), on_peer2.expect("drops counted"));
    assert_eq!(on_peer1.get("NETFILTER_DROP"), Some(&12), "{on_peer1:?}");
    assert_eq!(on_peer2.get("NETFILTER_DROP"), None, "{on_peer2:?}");
    let interfaces = daemon.interfaces();
    assert_eq!(interfaces[0]["drops"].get("NETFILTER_DROP"), None, "{interfaces}");
}

/// A drop of a packet this host sends is the peer's it was sent to, even when this host's own
/// address lies in another peer's AllowedIPs: peer2 takes the whole tunnel /24 (the gateway's
/// 198.19.L.1 in it), and the gateway's firewall drops its echo requests to peer1 on their way
/// out. Exactly 9 `NETFILTER_DROP` on peer1, none on peer2.
#[test]
fn drops_of_sent_packets_are_the_destination_peers() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    let gateway = lab.gateway();
    let wide = format!("{}/32,198.19.{}.0/24", peer2.tunnel_v4, lab.number());
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "peer", &peer2.public_key.to_string()])
        .args(["allowed-ips", &wide])
        .status()
        .unwrap();
    assert!(status.success(), "wg set allowed-ips {wide}");
    for rule in [
        "add table inet wgteltx".to_owned(),
        "add chain inet wgteltx out { type filter hook postrouting priority 0 ; }".to_owned(),
        format!(
            "add rule inet wgteltx out ip daddr {} icmp type echo-request drop",
            peer1.tunnel_v4
        ),
    ] {
        let status = Lab::command(&gateway.namespace, "nft").arg(&rule).status().unwrap();
        assert!(status.success(), "nft {rule}");
    }
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);

    assert_eq!(lab.ping(gateway, peer1.tunnel_v4.into(), 9).unwrap(), 0);
    daemon.wait_for(WAIT, "9 NETFILTER_DROP on peer1", |peers| {
        peer(peers, peer1).drops.as_ref().and_then(|drops| drops.get("NETFILTER_DROP")) == Some(&9)
    });
    let (on_peer1, on_peer2) = settled(&daemon, SETTLE, |peers| {
        (peer(peers, peer1).drops.clone(), peer(peers, peer2).drops.clone())
    });
    let (on_peer1, on_peer2) = (on_peer1.expect("drops counted"), on_peer2.expect("drops counted"));
    assert_eq!(on_peer1.get("NETFILTER_DROP"), Some(&9), "{on_peer1:?}");
    assert!(on_peer2.is_empty(), "{on_peer2:?}");
}

#[test]
fn a_1280_underlay_under_a_1420_tunnel_fragments_both_directions_on_that_peer() {
    let lab = Lab::build(LabOptions { peers: 1, mtu_peer: true, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (mtu, peer1) = (lab.peer("mtu").unwrap(), lab.peer("peer1").unwrap());
    let before = settled(&daemon, SETTLE, |peers| {
        (peer(peers, mtu).fragments, peer(peers, peer1).fragments)
    });

    // 1400 bytes of ICMP payload: a 1428-byte inner packet, a 1500-byte outer one: two
    // fragments on a 1280 path, each way.
    let output = Lab::command(&lab.gateway().namespace, "ping")
        .args(["-n", "-q", "-c", "8", "-i", "0.05", "-W", "1", "-s", "1400"])
        .arg(mtu.tunnel_v4.to_string())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("8 received"), "{output:?}");

    let expected = (before.0.receive + 16, before.0.transmit + 16);
    daemon.wait_for(WAIT, "16 fragments each way", |peers| {
        let f = peer(peers, mtu).fragments;
        (f.receive, f.transmit) == expected
    });
    let after = settled(&daemon, SETTLE, |peers| {
        (peer(peers, mtu).fragments, peer(peers, peer1).fragments)
    });
    assert_eq!((after.0.receive, after.0.transmit), expected);
    assert_eq!(after.1, before.1, "peer1 sends nothing big");
}

/// An ICMP fragmentation-needed message (type 3 code 4, next-hop MTU `mtu`) sent from
/// `namespace` to `to`, quoting a WireGuard datagram from `source` to `destination` (both port
/// 51820): what a router on the path would send.
fn send_fragmentation_needed(
    namespace: &str,
    to: Ipv4Addr,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    mtu: u16,
) {
    let script = format!(
        r#"
import socket, struct
def checksum(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
quoted_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 1, 0, 64, 17, 0,
                        socket.inet_aton("{source}"), socket.inet_aton("{destination}"))
quoted_udp = struct.pack("!HHHH", 51820, 51820, 1480, 0)
body = struct.pack("!BBHHH", 3, 4, 0, 0, {mtu}) + quoted_ip + quoted_udp
icmp = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(icmp, ("{to}", 0))
"#
    );
    let status =
        Lab::command(namespace, venv().join("bin/python3")).args(["-c", &script]).status().unwrap();
    assert!(status.success());
}

#[test]
fn icmp_too_big_about_a_peers_datagrams_is_counted_on_it_with_its_mtu() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (gateway, peer1, peer2) =
        (lab.gateway(), lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());

    // Received: a router tells the gateway its datagrams to peer1 are too big (3 times).
    for _ in 0..3 {
        send_fragmentation_needed(
            &peer1.namespace,
            gateway.underlay_v4,
            gateway.underlay_v4,
            peer1.underlay_v4,
            1200,
        );
    }
    // Sent: the gateway tells peer1 that peer1's datagrams to it are too big (once).
    send_fragmentation_needed(
        &gateway.namespace,
        peer1.underlay_v4,
        peer1.underlay_v4,
        gateway.underlay_v4,
        1100,
    );

    daemon.wait_for(WAIT, "4 too-big messages on peer1", |peers| {
        let p = peer(peers, peer1);
        (p.icmp_too_big.receive, p.icmp_too_big.transmit) == (3, 1)
    });
    let too_big = |peers: &[ApiPeer], node: &LabNode| {
        let p = peer(peers, node);
        (p.icmp_too_big.receive, p.icmp_too_big.transmit, p.path_mtu)
    };
    let (on_peer1, on_peer2) =
        settled(&daemon, SETTLE, |peers| (too_big(peers, peer1), too_big(peers, peer2)));
    assert_eq!(on_peer1, (3, 1, Some(1100)), "the latest report's MTU is kept");
    assert_eq!(on_peer2, (0, 0, None));
}

#[test]
fn datagrams_from_no_known_endpoint_count_as_unknown_source_and_on_no_peer() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let peer1 = lab.peer("peer1").unwrap();
    let before = settled(&daemon, SETTLE, |peers| peer(peers, peer1).messages.clone());

    // From peer1's address but another port: not its endpoint, a scan or a roaming peer.
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{}', 40000))\n\
         for _ in range(9): s.sendto(b'\\x01' + bytes(147), ('{}', 51820))\n",
        peer1.underlay_v4,
        lab.gateway().underlay_v4
    );
    let status = Lab::command(&peer1.namespace, venv().join("bin/python3"))
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());

    let unknown = |daemon: &Daemon| daemon.interfaces()[0]["underlay_unknown_source"].as_u64();
    let deadline = Instant::now() + WAIT;
    while unknown(&daemon) != Some(9) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(SETTLE);
    assert_eq!(unknown(&daemon), Some(9));
    let after = settled(&daemon, SETTLE, |peers| peer(peers, peer1).messages.clone());
    assert_eq!(after, before, "peer1's messages must not move");
}

/// An underlay without a link-layer header: peer1's WireGuard datagrams travel through an outer
/// WireGuard tunnel (a TUN device, whose packets start with the IP header). wgtel finds that
/// device by the route to peer1's endpoint, parses it from the IP header, and counts exactly
/// the pings' transport data on peer1 each way (20 requests out, the answered replies in), and
/// no invalid message.
#[test]
fn an_underlay_without_ethernet_header_is_parsed_from_the_ip_header() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let outer = lab.carry_over_outer_tunnel("peer1").unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let peer1 = lab.peer("peer1").unwrap();
    daemon.wait_for(WAIT, "peer1's endpoint behind the outer tunnel", |peers| {
        let host = peer1.underlay_v4.octets()[3];
        peer(peers, peer1).endpoint.as_deref()
            == Some(format!("198.18.{}.{}:51820", lab.number(), 200 + u16::from(host)).as_str())
    });
    let underlay = || {
        let log = daemon.log();
        log.contains(&format!("watching underlay {outer} (IP, no link-layer header)"))
    };
    let deadline = Instant::now() + WAIT;
    while !underlay() {
        assert!(Instant::now() < deadline, "the outer tunnel is never watched:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = settled(&daemon, SETTLE, |peers| messages(peers, peer1, "transport_data"));

    // 20 requests go out; each reply ping counts came back through the tunnel (on a loaded
    // machine a reply may miss its second: ping's own count is the ground truth).
    let answered = u64::from(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 20).unwrap());
    assert!(answered >= 15, "only {answered} of 20 pings answered");
    daemon.wait_for(WAIT, "the pings' transport data each way", |peers| {
        messages(peers, peer1, "transport_data") == (before.0 + answered, before.1 + 20)
    });
    let (data, invalid) = settled(&daemon, SETTLE, |peers| {
        (messages(peers, peer1, "transport_data"), messages(peers, peer1, "invalid"))
    });
    assert_eq!(data, (before.0 + answered, before.1 + 20));
    assert_eq!(invalid, (0, 0));
}
