//! Diagnosis of what happens on the path to a peer and inside WireGuard: a peer whose
//! WireGuard died while its host answers "port unreachable" (`endpoint_unreachable`, and with
//! traffic past `handshake-stale`, `handshake_stale`), and packets whose inner source address
//! lies outside the sender's AllowedIPs (`inner_drops`: WireGuard decrypts and drops them).
//! Delay added on the path to a peer (`latency_degraded`), a flood of initiations from one
//! source (`handshake_flood`), a new endpoint port after a silence (`keepalive_needed`). Each
//! on the right peer or interface, within three intervals of its evidence, the other peers
//! clean.

use std::{net::Ipv4Addr, time::Duration};

use rustix::process::{Pid, Signal, kill_process};
use wgtel::{
    lab::{Lab, LabOptions},
    model::Code,
};
use wgtel_tests::{
    diagnosis::{
        THREE_INTERVALS, WAIT, codes, others_clean, spawn_ping, start, start_with_alerts,
        wait_for_code,
    },
    peer,
};

#[test]
fn a_dead_peer_whose_host_answers_port_unreachable_is_endpoint_unreachable_then_stale() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = start_with_alerts(&lab, "handshake-stale = \"3s\"", &[]);
    let peer1 = lab.peer("peer1").unwrap().clone();
    let pid = i32::try_from(lab.wireguard_pid(&peer1).unwrap()).unwrap();
    let pid = Pid::from_raw(pid).expect("the lab's WireGuard pid");
    kill_process(pid, Signal::KILL).expect("killing the peer's WireGuard");
    // The gateway's session still holds: its transport data goes to a port nothing listens on.
    let mut ping = spawn_ping(&lab.gateway().namespace, peer1.tunnel_v4, 1500);
    let (peers, took) = wait_for_code(&daemon, &peer1, Code::EndpointUnreachable);
    assert!(took < THREE_INTERVALS + Duration::from_secs(1), "took {took:?}");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    let unreachable = diagnosis.iter().find(|d| d.code == Code::EndpointUnreachable).unwrap();
    let endpoint = format!("{}:51820", peer1.underlay_v4);
    assert!(
        unreachable.evidence.contains(&format!(
            "ICMP destination unreachable came back for datagrams to {endpoint}"
        )) && unreachable.evidence.contains("nothing listens on the peer's WireGuard port"),
        "{}",
        unreachable.evidence
    );
    assert!(unreachable.counters["icmp_unreachable.receive"] >= 1.0, "{unreachable:?}");
    others_clean(&peers, &peer1);

    // Past the 3 s allowed since the last handshake, with pings still going in: stale.
    let (peers, _) = wait_for_code(&daemon, &peer1, Code::HandshakeStale);
    let stale = peer(&peers, &peer1)
        .diagnosis
        .iter()
        .find(|d| d.code == Code::HandshakeStale)
        .unwrap()
        .clone();
    assert!(stale.counters["handshake_age_seconds"] >= 3.0, "{stale:?}");
    assert!(stale.evidence.contains("more than the 3 s allowed, while "), "{}", stale.evidence);
    assert!(stale.evidence.ends_with("they are not delivered"), "{}", stale.evidence);
    assert_eq!(
        codes(&peer(&peers, &peer1).diagnosis)[0],
        Code::EndpointUnreachable,
        "the cause comes first"
    );
    others_clean(&peers, &peer1);
    ping.kill().unwrap();
    ping.wait().unwrap();
}

#[test]
fn packets_from_outside_a_peers_allowed_ips_are_inner_drops_on_that_peer() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    let [a, b, c, _] = lab.gateway().tunnel_v4.octets();
    let outside = Ipv4Addr::new(a, b, c, 250);
    let add = Lab::command(&peer1.namespace, "ip")
        .args(["address", "add", &format!("{outside}/32"), "dev", &peer1.interface])
        .status()
        .unwrap();
    assert!(add.success(), "adding {outside} on peer1");
    // Ten echo requests from an address the gateway's AllowedIPs give no peer: peer1's
    // WireGuard sends them (its AllowedIPs for the gateway cover the destination), the
    // gateway's decrypts and drops them. None is answered.
    let ping = Lab::command(&peer1.namespace, "ping")
        .args(["-n", "-q", "-c", "10", "-i", "0.02", "-W", "1", "-I", &outside.to_string()])
        .arg(lab.gateway().tunnel_v4.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let peers = daemon.wait_for(WAIT, "the ten drops inside WireGuard", |peers| {
        peer(peers, &peer1)
            .diagnosis
            .iter()
            .any(|d| d.code == Code::InnerDrops && d.counters["inner_drops"] == 10.0)
    });
    let summary = String::from_utf8(ping.wait_with_output().unwrap().stdout).unwrap();
    assert!(summary.contains("10 packets transmitted, 0 received"), "{summary}");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::InnerDrops], "{diagnosis:#?}");
    assert!(
        diagnosis[0].evidence.starts_with("10 of ")
            && diagnosis[0].evidence.contains("transport data messages from the peer in the last ")
            && diagnosis[0].evidence.contains("inner source address outside the peer's AllowedIPs"),
        "{}",
        diagnosis[0].evidence
    );
    others_clean(&peers, &peer1);
    // Ordinary traffic afterwards is delivered whole: the code clears.
    assert_eq!(lab.ping(&peer1, lab.gateway().tunnel_v4.into(), 20).unwrap(), 20);
    daemon.wait_for(WAIT, "inner_drops cleared", |peers| peer(peers, &peer1).diagnosis.is_empty());
}

#[test]
fn delay_added_on_the_path_is_latency_degraded_until_it_goes() {
    let lab = Lab::build(LabOptions {
        peers: 1,
        delayed_peer: Some(Duration::from_millis(1)),
        ..LabOptions::default()
    })
    .unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let slow = lab.peer("slow").unwrap().clone();
    let gateway = lab.gateway();
    // The usual: 2 ms there and back through the relay.
    assert_eq!(lab.ping(gateway, slow.tunnel_v4.into(), 30).unwrap(), 30);
    let peers = daemon.peers();
    assert_eq!(peer(&peers, &slow).diagnosis, [], "{peers:#?}");
    // 40 ms each way from now on: 80 ms round trips, forty times the usual.
    lab.set_path_delay(Duration::from_millis(40));
    let mut ping = Lab::command(&gateway.namespace, "ping")
        .args(["-n", "-q", "-c", "40", "-i", "0.1", "-W", "1"])
        .arg(slow.tunnel_v4.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The code shows within three intervals; the mean is all slow once the window holds only
    // slow round trips.
    let (_, took) = wait_for_code(&daemon, &slow, Code::LatencyDegraded);
    assert!(took < THREE_INTERVALS + Duration::from_millis(200), "took {took:?}");
    let peers = daemon.wait_for(WAIT, "a window of slow round trips only", |peers| {
        peer(peers, &slow).diagnosis.iter().any(|d| {
            d.code == Code::LatencyDegraded && d.counters["round_trip_mean_us"] >= 80_000.0
        })
    });
    let degraded = peer(&peers, &slow)
        .diagnosis
        .iter()
        .find(|d| d.code == Code::LatencyDegraded)
        .unwrap()
        .clone();
    let mean = degraded.counters["round_trip_mean_us"];
    let usual = degraded.counters["round_trip_baseline_us"];
    assert!((80_000.0..120_000.0).contains(&mean), "{degraded:?}");
    assert!(usual < 10_000.0, "{degraded:?}");
    assert!(
        degraded.evidence.contains("inner round trips to the peer in the last "),
        "{}",
        degraded.evidence
    );
    assert!(
        degraded.evidence.ends_with("delay on the path or at the peer"),
        "{}",
        degraded.evidence
    );
    others_clean(&peers, &slow);
    assert!(ping.wait().unwrap().success());
    // Back to 1 ms: the code clears once the slow round trips leave the window.
    lab.set_path_delay(Duration::from_millis(1));
    assert_eq!(lab.ping(gateway, slow.tunnel_v4.into(), 30).unwrap(), 30);
    daemon.wait_for(WAIT, "latency_degraded cleared", |peers| {
        peer(peers, &slow).diagnosis.is_empty()
    });
}

#[test]
fn a_flood_of_initiations_from_one_source_is_handshake_flood_naming_it() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    // 200 datagrams shaped as handshake initiations (type 1, 148 bytes) from one socket of
    // peer1's host; their MACs are garbage, so the gateway's WireGuard ignores them.
    let script = format!(
        "import os, socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range(200): s.sendto(b'\\x01\\x00\\x00\\x00' + os.urandom(144), ('{}', 51820))\n",
        lab.gateway().underlay_v4
    );
    let sent = Lab::command(&peer1.namespace, wgtel_tests::venv().join("bin/python3"))
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(sent.success(), "sending the flood");
    let expected = format!(
        "200 handshake initiations from {} (the endpoint address of peer1) to {} in the last ",
        peer1.underlay_v4,
        lab.gateway().interface
    );
    let started = std::time::Instant::now();
    let flood = loop {
        let interfaces = daemon.interfaces();
        let diagnosis = interfaces[0]["diagnosis"].as_array().unwrap().clone();
        if let Some(flood) = diagnosis.iter().find(|d| {
            d["code"] == "handshake_flood" && d["evidence"].as_str().unwrap().starts_with(&expected)
        }) {
            break flood.clone();
        }
        assert!(
            started.elapsed() < WAIT,
            "no handshake_flood naming {}: {diagnosis:#?}",
            peer1.underlay_v4
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let evidence = flood["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("a peer sends one at most every 5 s): a scan, a brute force or a flood"),
        "{evidence}"
    );
    assert_eq!(flood["counters"]["handshake_initiation.receive"], 200.0);
    for peer in daemon.peers() {
        assert_eq!(peer.diagnosis, Vec::new(), "{:?} carries a code", peer.name);
    }
}

/// `wg ARGS` in `namespace`, which must succeed.
fn wg(namespace: &str, args: &[&str]) {
    let status = Lab::command(namespace, "wg").args(args).status().expect("running wg");
    assert!(status.success(), "wg {args:?}");
}

#[test]
fn a_new_endpoint_port_after_a_silence_is_keepalive_needed_until_a_keepalive_is_set() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &[]);
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    let gateway = lab.gateway().clone();
    // Silence longer than a NAT keeps a UDP mapping (the rule's 25 s), then the peer's packets
    // come from a new port, as after a NAT rebinding.
    std::thread::sleep(Duration::from_secs(27));
    wg(&peer1.namespace, &["set", &peer1.interface, "listen-port", "40000"]);
    assert_eq!(lab.ping(&peer1, gateway.tunnel_v4.into(), 3).unwrap(), 3);
    let (peers, took) = wait_for_code(&daemon, &peer1, Code::KeepaliveNeeded);
    assert!(took < THREE_INTERVALS, "took {took:?}");
    let diagnosis = &peer(&peers, &peer1).diagnosis;
    assert_eq!(codes(diagnosis), [Code::KeepaliveNeeded], "{diagnosis:#?}");
    let expected =
        format!("the endpoint moved from {0}:51820 to {0}:40000 after ", peer1.underlay_v4);
    assert!(diagnosis[0].evidence.starts_with(&expected), "{}", diagnosis[0].evidence);
    assert!(diagnosis[0].evidence.ends_with("set PersistentKeepalive = 25 on the peer"));
    assert!(diagnosis[0].counters["idle_seconds"] >= 25.0, "{:?}", diagnosis[0]);
    others_clean(&peers, &peer1);
    // With a persistent keepalive on this side the mapping stays: the code clears.
    let key = peer1.public_key.to_string();
    wg(
        &gateway.namespace,
        &["set", &gateway.interface, "peer", &key, "persistent-keepalive", "25"],
    );
    daemon.wait_for(WAIT, "keepalive_needed cleared", |peers| {
        peer(peers, &peer1).diagnosis.is_empty()
    });
}
