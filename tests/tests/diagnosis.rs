//! Diagnosis in the lab: each failure injected names its code on the right peer or interface
//! within three intervals (after the evidence exists), with its numbers, and on no other; the
//! code clears once the evidence ends. Healthy peers under iperf3 both ways and pings carry
//! no code, nor does an idle peer.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};
use wgtel::{
    events::Event,
    export::api::ApiInterface,
    lab::{Lab, LabNode, LabOptions, WIREGUARD_PORT},
    model::Code,
};
use wgtel_tests::{
    Daemon,
    diagnosis::{
        INTERVAL, THREE_INTERVALS, WAIT, codes, nft, others_clean, spawn_ping, start,
        start_with_alerts, wait_for_code,
    },
    drop_echo_requests_from, peer, wgtel_bin,
};

fn interfaces(daemon: &Daemon) -> Vec<ApiInterface> {
    serde_json::from_value(daemon.interfaces()).unwrap()
}

/// Waits until the gateway's interface carries `code` (or, with `present` false, no longer
/// does); the interface then, and how long it took.
fn wait_for_interface_code(daemon: &Daemon, code: Code, present: bool) -> (ApiInterface, Duration) {
    let started = Instant::now();
    loop {
        let interface = interfaces(daemon).remove(0);
        if codes(&interface.diagnosis).contains(&code) == present {
            return (interface, started.elapsed());
        }
        assert!(started.elapsed() < WAIT, "waited for {code:?} = {present}: {interface:#?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The diagnosis events of `code`, oldest first: (type, peer key).
fn diagnosis_events(daemon: &Daemon, code: Code) -> Vec<(String, Option<String>)> {
    let events: Vec<Event> =
        serde_json::from_str(&daemon.get("/api/v1/events?limit=1000")).unwrap();
    let prefix = format!("{}: ", code.as_str());
    let mut found: Vec<_> = events
        .into_iter()
        .filter(|e| e.kind.starts_with("diagnosis_") && e.detail.starts_with(&prefix))
        .map(|e| (e.kind, e.peer))
        .collect();
    found.reverse();
    found
}

fn wgtel_in_gateway(lab: &Lab, args: &[&str]) -> String {
    let output = Lab::command(&lab.gateway().namespace, wgtel_bin()).args(args).output().unwrap();
    assert!(output.status.success(), "wgtel {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Sends `count` UDP datagrams of `size` bytes from `from` to the gateway's WireGuard port,
/// each from a socket of its own (a new source port each).
fn udp_junk(lab: &Lab, from: &LabNode, count: u32, size: usize) {
    let target = format!("/dev/udp/{}/{WIREGUARD_PORT}", lab.gateway().underlay_v4);
    let script = format!(
        "payload=$(head -c {size} /dev/zero | tr '\\0' x); for i in $(seq 1 {count}); do \
         printf '%s' \"$payload\" > {target}; done"
    );
    let status = Lab::command(&from.namespace, "bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sending junk datagrams");
}

#[test]
fn a_wrong_key_each_way_is_unanswered_from_here_and_rejected_from_there() {
    let lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    let broken = lab.peer("broken").unwrap().clone();
    lab.wait_for_handshakes(WAIT).unwrap();

    // One packet for it: the gateway initiates, and again 5 s later, never answered. The
    // evidence (a second initiation unanswered) exists 5 to 5.33 s after the first.
    let sent = Instant::now();
    assert_eq!(lab.ping(lab.gateway(), broken.tunnel_v4.into(), 1).unwrap(), 0);
    let (peers, _) = wait_for_code(&daemon, &broken, Code::HandshakeUnanswered);
    let elapsed = sent.elapsed();
    assert!(elapsed < Duration::from_millis(5333) + THREE_INTERVALS, "took {elapsed:?}");
    let diagnosis = &peer(&peers, &broken).diagnosis;
    assert_eq!(codes(diagnosis), [Code::HandshakeUnanswered]);
    let endpoint = format!("{}:{WIREGUARD_PORT}", broken.underlay_v4);
    let evidence = &diagnosis[0].evidence;
    assert!(
        evidence.starts_with(&format!("2 handshake initiations sent to {endpoint} in the last "))
            && evidence.contains("none answered (never a handshake"),
        "{evidence}"
    );
    assert_eq!(diagnosis[0].counters["handshake_response.receive"], 0.0);
    others_clean(&peers, &broken);

    // The other way: the broken peer's initiations reach the gateway, which cannot decrypt
    // them (they are encrypted to a key that is not the gateway's) and stays silent.
    let peer_ns = broken.namespace.clone();
    let ping = Lab::command(&peer_ns, "ping")
        .args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(lab.gateway().tunnel_v4.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(!ping.success(), "the broken peer reached the gateway");
    let (peers, took) = wait_for_code(&daemon, &broken, Code::HandshakeRejected);
    assert!(took < Duration::from_millis(5333) + THREE_INTERVALS, "took {took:?}");
    let rejected = peer(&peers, &broken)
        .diagnosis
        .iter()
        .find(|d| d.code == Code::HandshakeRejected)
        .unwrap()
        .clone();
    assert!(
        rejected.evidence.contains(&format!("handshake initiations received from {endpoint}"))
            && rejected.evidence.ends_with("the peer holds a wrong public key for this interface"),
        "{}",
        rejected.evidence
    );
    assert_eq!(rejected.counters["handshake_response.transmit"], 0.0);
    others_clean(&peers, &broken);

    // The same codes in status, explain, /metrics and the events.
    let status = wgtel_in_gateway(&lab, &["status"]);
    // HEALTH says whether the gateway sent to it in the last interval; CAUSE says why it fails.
    let row = status.lines().find(|line| line.contains(" broken ")).unwrap();
    assert!(row.ends_with("  handshake_unanswered"), "{status}");
    let peer1_row = status.lines().find(|line| line.contains(" peer1 ")).unwrap();
    assert!(peer1_row.ends_with("active  -"), "{status}");
    let explained = wgtel_in_gateway(&lab, &["explain", "broken"]);
    assert!(explained.starts_with(&format!("broken {} on ", broken.public_key)), "{explained}");
    for needle in [
        "\nhandshake_unanswered (since ",
        "\n  evidence: ",
        "\n  counters: cookie_reply.receive 0, handshake_initiation.transmit ",
        "\nhandshake_rejected (since ",
    ] {
        assert!(explained.contains(needle), "{needle:?} not in:\n{explained}");
    }
    let metrics = daemon.get("/metrics");
    let interface = &lab.gateway().interface;
    for code in ["handshake_unanswered", "handshake_rejected"] {
        let line = format!(
            "wireguard_peer_diagnosis{{wireguard_interface=\"{interface}\",\
             wireguard_peer_public_key=\"{}\",wireguard_peer_name=\"broken\",\
             wireguard_diagnosis_code=\"{code}\"}} 1",
            broken.public_key
        );
        assert!(metrics.contains(&line), "{line} not in /metrics");
    }
    assert_eq!(metrics.matches("wireguard_peer_diagnosis{").count(), 2, "{metrics}");
    let key = Some(broken.public_key.to_string());
    assert_eq!(
        diagnosis_events(&daemon, Code::HandshakeUnanswered),
        [("diagnosis_started".to_owned(), key.clone())]
    );
}

#[test]
fn traffic_routed_into_the_tunnel_without_a_peer_is_no_peer_route_until_it_stops() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let mut ping = spawn_ping(&lab.gateway().namespace, lab.unrouted_v4(), 5);
    let (_, took) = wait_for_interface_code(&daemon, Code::NoPeerRoute, true);
    assert!(took < THREE_INTERVALS, "took {took:?}; log:\n{}", daemon.log());
    // The five pings leave within 50 ms: the code holds them all before it clears.
    let interface = loop {
        let interface = interfaces(&daemon).remove(0);
        let total = interface.diagnosis.first().map(|d| d.counters["drops.no_peer.total"]);
        if total == Some(5.0) {
            break interface;
        }
        assert!(total.is_some(), "no_peer_route cleared before all 5 were counted");
    };
    let diagnosis = &interface.diagnosis[0];
    assert_eq!(codes(&interface.diagnosis), [Code::NoPeerRoute]);
    assert!(
        diagnosis
            .evidence
            .contains(&format!("packets routed into {} in the last", lab.gateway().interface))
            && diagnosis.evidence.contains("matched no peer's AllowedIPs (5 since wgtel started)")
            && diagnosis.evidence.ends_with(&format!(
                "WireGuard dropped them; top destinations in the last minute: {} (5)",
                lab.unrouted_v4()
            )),
        "{}",
        diagnosis.evidence
    );
    for peer in daemon.peers() {
        assert_eq!(peer.diagnosis, Vec::new(), "{:?}", peer.name);
    }
    let (_, cleared) = wait_for_interface_code(&daemon, Code::NoPeerRoute, false);
    assert!(cleared < THREE_INTERVALS + INTERVAL, "cleared after {cleared:?}");
    assert!(!ping.wait().unwrap().success(), "an unrouted address answered");
    assert_eq!(
        diagnosis_events(&daemon, Code::NoPeerRoute),
        [("diagnosis_started".to_owned(), None), ("diagnosis_cleared".to_owned(), None)]
    );
    let metrics = daemon.get("/metrics");
    assert!(!metrics.contains("wireguard_interface_diagnosis{"), "{metrics}");
}

#[test]
fn a_firewall_rule_dropping_a_peers_packets_is_firewall_drops_on_that_peer() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    drop_echo_requests_from(&lab, &peer1);
    let mut ping = spawn_ping(&peer1.namespace, lab.gateway().tunnel_v4, 5);
    let (_, took) = wait_for_code(&daemon, &peer1, Code::FirewallDrops);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    // The five pings leave within 50 ms: the code holds them all before it clears.
    let peers = loop {
        let peers = daemon.peers();
        let total = peer(&peers, &peer1)
            .diagnosis
            .first()
            .map(|d| d.counters["drops.NETFILTER_DROP.total"]);
        if total == Some(5.0) {
            break peers;
        }
        assert!(total.is_some(), "firewall_drops cleared before all 5 were counted");
    };
    assert!(!ping.wait().unwrap().success(), "the firewall let an echo request through");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::FirewallDrops]);
    assert!(
        diagnosis[0]
            .evidence
            .contains("dropped by a firewall rule (kernel drop reason NETFILTER_DROP)")
            && diagnosis[0].evidence.ends_with(", 5 since wgtel started"),
        "{}",
        diagnosis[0].evidence
    );
    others_clean(&peers, &peer1);
}

#[test]
fn a_small_underlay_mtu_is_mtu_fragmentation_with_the_mtu_to_set() {
    let lab = Lab::build(LabOptions { peers: 1, mtu_peer: true, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let mtu = lab.peer("mtu").unwrap().clone();
    // 1400-byte inner packets fit the tunnel (1420) but, as 1460-byte datagrams, not the
    // peer's 1280-byte underlay.
    let status = Lab::command(&lab.gateway().namespace, "ping")
        .args(["-n", "-q", "-c", "3", "-i", "0.1", "-s", "1372", "-W", "1"])
        .arg(mtu.tunnel_v4.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "big pings through the tunnel");
    let (peers, took) = wait_for_code(&daemon, &mtu, Code::MtuFragmentation);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    let diagnosis = &peer(&peers, &mtu).diagnosis;
    assert_eq!(codes(diagnosis), [Code::MtuFragmentation]);
    assert!(
        diagnosis[0].evidence.ends_with(
            "path MTU 1280 (of the route to the endpoint): set the tunnel MTU to 1220 or less"
        ),
        "{}",
        diagnosis[0].evidence
    );
    assert_eq!(diagnosis[0].counters["mtu_to_set"], 1220.0);
    others_clean(&peers, &mtu);
}

#[test]
fn a_peer_outside_expected_peers_that_handshakes_is_unexpected() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    let peer2 = lab.peer("peer2").unwrap().clone();
    let expected = format!("expected-peers = [\"{}\"]", peer1.public_key);
    let daemon = start_with_alerts(&lab, &expected, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peers, _) = wait_for_code(&daemon, &peer2, Code::UnexpectedPeer);
    let diagnosis = &peer(&peers, &peer2).diagnosis;
    assert_eq!(codes(diagnosis), [Code::UnexpectedPeer]);
    assert!(
        diagnosis[0].evidence.starts_with("peer2 completed a handshake ")
            && diagnosis[0].evidence.ends_with(&format!(
                " s ago on {} and is not among the 1 expected-peers",
                lab.gateway().interface
            )),
        "{}",
        diagnosis[0].evidence
    );
    others_clean(&peers, &peer2);
}

#[test]
fn allowed_ips_covering_an_endpoint_are_named_on_the_peer_whose_endpoint_they_cover() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    let peer1 = lab.peer("peer1").unwrap().clone();
    let peer2 = lab.peer("peer2").unwrap().clone();
    let allowed =
        format!("{}/32,{}/128,{}/32", peer2.tunnel_v4, peer2.tunnel_v6, peer1.underlay_v4);
    let gateway = lab.gateway();
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface, "peer", &peer2.public_key.to_string()])
        .args(["allowed-ips", &allowed])
        .status()
        .unwrap();
    assert!(status.success(), "wg set");
    let (peers, took) = wait_for_code(&daemon, &peer1, Code::AllowedIpsCoverEndpoint);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::AllowedIpsCoverEndpoint]);
    assert_eq!(
        diagnosis[0].evidence,
        format!(
            "endpoint {} lies inside the AllowedIPs of peer2 ({}/32) on {} without a fwmark: \
             routes that follow AllowedIPs send WireGuard's own datagrams to it into the tunnel",
            peer1.underlay_v4, peer1.underlay_v4, gateway.interface
        )
    );
    others_clean(&peers, &peer1);
}

#[test]
fn echo_requests_dropped_on_the_peer_are_high_loss_on_that_peer() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    nft(
        &peer1.namespace,
        &[
            "add table inet wgteltest",
            "add chain inet wgteltest input { type filter hook input priority 0 ; }",
            "add rule inet wgteltest input icmp type echo-request drop",
        ],
    );
    let sent = Instant::now();
    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 20).unwrap(), 0);
    // A round trip is lost once it waited 3 s; the 20 requests went out within 0.3 s.
    // The window also holds the answered pings that made the handshake.
    let peers = daemon.wait_for(WAIT, "all 20 echo requests lost", |peers| {
        peer(peers, &peer1).diagnosis.first().is_some_and(|d| d.counters["probes.lost"] == 20.0)
    });
    let elapsed = sent.elapsed();
    assert!(elapsed < Duration::from_millis(3300) + THREE_INTERVALS, "took {elapsed:?}");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::HighLoss]);
    assert!(
        diagnosis[0].evidence.starts_with(&format!(
            "20 of {} inner round trips (echo, TCP SYN) to the peer unanswered in the last ",
            20.0 + diagnosis[0].counters["probes.answered"]
        )),
        "{}",
        diagnosis[0].evidence
    );
    others_clean(&peers, &peer1);
}

#[test]
fn junk_datagrams_are_unknown_sources_and_a_stalled_receiver_udp_receive_errors() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    udp_junk(&lab, &peer1, 20, 100);
    let (interface, took) = wait_for_interface_code(&daemon, Code::UnknownSources, true);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    assert_eq!(codes(&interface.diagnosis), [Code::UnknownSources]);
    let started = Instant::now();
    while interfaces(&daemon)[0].diagnosis[0].counters["underlay.unknown_source"] < 20.0 {
        assert!(started.elapsed() < THREE_INTERVALS, "{:?}", interfaces(&daemon));
        thread::sleep(Duration::from_millis(50));
    }
    for peer in daemon.peers() {
        assert_eq!(peer.diagnosis, Vec::new(), "{:?}", peer.name);
    }
    wait_for_interface_code(&daemon, Code::UnknownSources, false);

    // The gateway's WireGuard stopped: its socket buffer fills and the kernel drops the rest.
    let pid = i32::try_from(lab.wireguard_pid(lab.gateway()).unwrap()).ok().and_then(Pid::from_raw);
    let pid = pid.expect("the lab's WireGuard pid");
    kill_process(pid, Signal::STOP).expect("stopping WireGuard");
    udp_junk(&lab, &peer1, 10_000, 1400);
    kill_process(pid, Signal::CONT).expect("continuing WireGuard");
    let (interface, took) = wait_for_interface_code(&daemon, Code::UdpReceiveErrors, true);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    let errors = &interface.diagnosis.iter().find(|d| d.code == Code::UdpReceiveErrors).unwrap();
    assert!(errors.counters["udp.socket_drops"] >= 1.0, "{errors:?}");
    assert!(
        errors
            .evidence
            .contains(&format!("datagrams to UDP port {WIREGUARD_PORT} dropped by the kernel")),
        "{errors:?}"
    );
}

/// Polls the daemon until `done`: every code any peer carried, and every code of an
/// interface, as `subject: code: evidence`.
fn codes_seen(daemon: &Daemon, done: &AtomicBool) -> (Vec<String>, Vec<(Code, String)>) {
    let (mut peers_seen, mut interfaces_seen) = (Vec::new(), Vec::new());
    while !done.load(Ordering::Relaxed) {
        for peer in daemon.peers() {
            for d in peer.diagnosis {
                peers_seen.push(format!("{:?}: {:?}: {}", peer.name, d.code, d.evidence));
            }
        }
        for interface in interfaces(daemon) {
            for d in interface.diagnosis {
                interfaces_seen.push((d.code, format!("{}: {}", interface.name, d.evidence)));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    (peers_seen, interfaces_seen)
}

#[test]
fn healthy_peers_under_load_and_an_idle_peer_carry_no_code() {
    let lab = Lab::build(LabOptions { peers: 3, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    let [peer1, peer2, _idle] = [0, 1, 2].map(|i| lab.peers()[i].clone());
    let gateway = lab.gateway();
    // Handshakes with the two busy peers only: the third stays idle, never a handshake.
    for node in [&peer1, &peer2] {
        let deadline = Instant::now() + WAIT;
        while lab.ping(gateway, node.tunnel_v4.into(), 1).unwrap() != 1 {
            assert!(Instant::now() < deadline, "no handshake with {}", node.name);
        }
    }
    // Pings only: nothing anywhere.
    let done = AtomicBool::new(false);
    let (peers_seen, interfaces_seen) = thread::scope(|scope| {
        let watcher = scope.spawn(|| codes_seen(&daemon, &done));
        assert_eq!(lab.ping(gateway, peer2.tunnel_v4.into(), 100).unwrap(), 100);
        assert_eq!(lab.ping(&peer1, gateway.tunnel_v4.into(), 100).unwrap(), 100);
        thread::sleep(Duration::from_secs(2));
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!((peers_seen, interfaces_seen), (Vec::new(), Vec::new()));

    // iperf3 both ways (TCP), UDP over IPv6, pings: no peer carries a code. The interface may
    // carry udp_receive_errors only if the kernel itself counted WireGuard's socket dropping
    // datagrams (a userspace implementation behind under bulk load on a shared host).
    let before = lab.udp_counters(gateway).unwrap().rcvbuf_errors;
    let done = AtomicBool::new(false);
    let (peers_seen, interfaces_seen) = thread::scope(|scope| {
        let watcher = scope.spawn(|| codes_seen(&daemon, &done));
        lab.iperf3(gateway, peer1.tunnel_v4.into(), false, 3, None).unwrap();
        lab.iperf3(gateway, peer1.tunnel_v4.into(), true, 3, None).unwrap();
        lab.iperf3(&peer2, gateway.tunnel_v6.into(), false, 3, Some(20_000_000)).unwrap();
        assert_eq!(lab.ping(gateway, peer2.tunnel_v4.into(), 50).unwrap(), 50);
        // Long enough for any window to see the end of the load.
        thread::sleep(Duration::from_secs(4));
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!(peers_seen, Vec::<String>::new());
    let rcvbuf_errors = lab.udp_counters(gateway).unwrap().rcvbuf_errors - before;
    for (code, evidence) in &interfaces_seen {
        assert_eq!(*code, Code::UdpReceiveErrors, "{evidence}");
        assert!(rcvbuf_errors > 0, "{evidence}, yet RcvbufErrors did not grow");
    }
    let peers = daemon.peers();
    assert_eq!(peers.len(), 3);
    assert!(peers.iter().all(|p| p.diagnosis.is_empty()), "{peers:#?}");
}

#[test]
fn a_hub_that_does_not_forward_between_two_peers_is_forwarding_disabled() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap().clone(), lab.peer("peer2").unwrap().clone());
    let sysctl = |name: &str| {
        let output =
            Lab::command(&lab.gateway().namespace, "sysctl").args(["-n", name]).output().unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let forwarding = format!("net.ipv4.conf.{}.forwarding", lab.gateway().interface);
    assert_eq!(sysctl(&forwarding), "0", "a new namespace does not forward");
    // peer1 routes the whole tunnel subnet to the gateway, which would have to forward.
    let mut ping = spawn_ping(&peer1.namespace, peer2.tunnel_v4, 5);
    let (_, took) = wait_for_code(&daemon, &peer1, Code::ForwardingDisabled);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    let peers = loop {
        let peers = daemon.peers();
        let counted = peer(&peers, &peer1)
            .diagnosis
            .iter()
            .find(|d| d.code == Code::ForwardingDisabled)
            .map(|d| d.counters["drops.IP_INADDRERRORS"]);
        if counted == Some(5.0) {
            break peers;
        }
        assert!(counted.is_some(), "forwarding_disabled cleared before all 5 were counted");
    };
    assert!(!ping.wait().unwrap().success(), "the gateway forwarded");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::ForwardingDisabled]);
    assert!(
        diagnosis[0].evidence.starts_with("5 packets from the peer to addresses not on this host")
            && diagnosis[0].evidence.ends_with(&format!(
                "(kernel drop reason IP_INADDRERRORS) while {forwarding} = 0 and \
                 net.ipv6.conf.all.forwarding = 0: this host does not forward"
            )),
        "{}",
        diagnosis[0].evidence
    );
    others_clean(&peers, &peer1);
}
