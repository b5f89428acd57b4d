//! Latency from the packets themselves: handshakes, TCP SYN to SYN-ACK and ICMP echo through
//! the tunnel, counted sample by sample, and round trips never answered counted as lost.

use std::time::Duration;

use wgtel::{
    export::api::LatencySummary,
    lab::{Lab, LabOptions},
};
use wgtel_tests::{Daemon, peer, settled, venv};

const WAIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_millis(1200);

/// (samples, lost) of one summary; (0, 0) when absent.
fn counts(summary: Option<LatencySummary>) -> (u64, u64) {
    summary.map_or((0, 0), |s| (s.count, s.lost))
}

#[test]
fn the_first_handshake_is_one_initiator_sample_and_no_responder_sample() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    // The daemon watches before any traffic: the first ping makes the first handshake.
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let peer1 = lab.peer("peer1").unwrap();
    daemon.wait_for(WAIT, "the peer", |peers| peers.len() == 1);
    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 3).unwrap(), 3);
    daemon.wait_for(WAIT, "a handshake sample", |peers| {
        counts(peer(peers, peer1).handshake_rtt_ms).0 == 1
    });
    let handshake = settled(&daemon, SETTLE, |peers| peer(peers, peer1).handshake_rtt_ms).unwrap();
    assert_eq!((handshake.count, handshake.lost), (1, 0));
    // Inside one host: wireguard-go's crypto on both ends, a few milliseconds at most.
    assert!(handshake.p99.unwrap() < 16.77, "{handshake:?}");
    // This host initiated: it did not respond to any initiation.
    let peers = daemon.peers();
    assert_eq!(counts(peer(&peers, peer1).handshake_response_ms), (0, 0));
}

#[test]
fn n_tcp_connections_give_n_round_trip_samples_on_that_peer() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    const CONNECTIONS: u64 = 7;

    let listen = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{}', 7000))\ns.listen(64)\nprint('ready', flush=True)\n\
         for _ in range({CONNECTIONS}): s.accept()[0].close()\n",
        peer1.tunnel_v4
    );
    let mut server = Lab::command(&peer1.namespace, venv().join("bin/python3"))
        .args(["-c", &listen])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 5];
    std::io::Read::read_exact(server.stdout.as_mut().unwrap(), &mut ready).unwrap();
    let connect = format!(
        "import socket\nfor _ in range({CONNECTIONS}):\n    c = socket.create_connection(('{}', 7000), timeout=5)\n    c.close()\n",
        peer1.tunnel_v4
    );
    let status = Lab::command(&lab.gateway().namespace, venv().join("bin/python3"))
        .args(["-c", &connect])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait().unwrap().success());

    daemon.wait_for(WAIT, "7 TCP samples", |peers| {
        counts(peer(peers, peer1).tcp_rtt_ms).0 == CONNECTIONS
    });
    let (on_peer1, on_peer2) = settled(&daemon, SETTLE, |peers| {
        (counts(peer(peers, peer1).tcp_rtt_ms), counts(peer(peers, peer2).tcp_rtt_ms))
    });
    assert_eq!(on_peer1, (CONNECTIONS, 0));
    assert_eq!(on_peer2, (0, 0));
    // The peer answered: no SYN came from it for this host to answer.
    assert_eq!(counts(peer(&daemon.peers(), peer1).tcp_response_ms), (0, 0));
}

#[test]
fn n_echoes_give_n_samples_and_echoes_nobody_answers_are_lost() {
    let lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (peer1, broken) = (lab.peer("peer1").unwrap(), lab.peer("broken").unwrap());

    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 25).unwrap(), 25);
    assert_eq!(lab.ping(lab.gateway(), broken.tunnel_v4.into(), 6).unwrap(), 0);

    // Lost once unanswered for the probe timeout (3 s), seen at the next collection.
    daemon
        .wait_for(WAIT, "6 lost echoes", |peers| counts(peer(peers, broken).icmp_rtt_ms) == (0, 6));
    let (answered, silent) = settled(&daemon, SETTLE, |peers| {
        (counts(peer(peers, peer1).icmp_rtt_ms), counts(peer(peers, broken).icmp_rtt_ms))
    });
    assert_eq!(answered, (25, 0));
    assert_eq!(silent, (0, 6));
}

#[test]
fn a_peer_behind_20ms_lands_in_the_20ms_bucket_and_a_local_ones_echoes_below_2ms() {
    let lab = Lab::build(LabOptions {
        peers: 1,
        delayed_peer: Some(Duration::from_millis(10)),
        ..LabOptions::default()
    })
    .unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let (slow, peer1) = (lab.peer("slow").unwrap(), lab.peer("peer1").unwrap());
    daemon.wait_for(WAIT, "both peers", |peers| peers.len() == 2);
    for node in [slow, peer1] {
        // One echo to make the handshake, then ten that find the tunnel up.
        assert_eq!(lab.ping(lab.gateway(), node.tunnel_v4.into(), 1).unwrap(), 1);
        assert_eq!(lab.ping(lab.gateway(), node.tunnel_v4.into(), 10).unwrap(), 10);
    }
    daemon.wait_for(WAIT, "handshakes and echoes", |peers| {
        [slow, peer1].iter().all(|node| {
            let p = peer(peers, node);
            counts(p.handshake_rtt_ms).0 == 1 && counts(p.icmp_rtt_ms).0 == 11
        })
    });
    let peers = daemon.peers();
    // The log2 bucket holding 20 ms is [2^24, 2^25) ns = [16.8, 33.6) ms.
    let in_20ms_bucket = |ms: f64| (16.77..33.56).contains(&ms);
    let slow_peer = peer(&peers, slow);
    let handshake = slow_peer.handshake_rtt_ms.unwrap();
    assert!(in_20ms_bucket(handshake.p99.unwrap()), "{handshake:?}");
    // The first echo also waited for the handshake (about 40 ms); the other ten took 20 ms.
    let echo = slow_peer.icmp_rtt_ms.unwrap();
    assert!(in_20ms_bucket(echo.p50.unwrap()) && in_20ms_bucket(echo.p90.unwrap()), "{echo:?}");
    let local = peer(&peers, peer1);
    let echo = local.icmp_rtt_ms.unwrap();
    assert!(echo.p90.unwrap() < 2.0, "{echo:?}");
    // A handshake costs wireguard-go's Go crypto on both ends (1 to 4 ms on this 2-core
    // machine): below the delayed peer's bucket, not below 2 ms.
    let handshake = local.handshake_rtt_ms.unwrap();
    assert!(handshake.p99.unwrap() < 16.77, "{handshake:?}");
}

#[test]
fn a_handshake_the_peer_starts_is_one_responder_sample() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "500ms"]);
    let peer1 = lab.peer("peer1").unwrap();
    daemon.wait_for(WAIT, "the peer", |peers| peers.len() == 1);
    // The peer sends first: it initiates, the gateway responds.
    assert_eq!(lab.ping(peer1, lab.gateway().tunnel_v4.into(), 2).unwrap(), 2);
    daemon.wait_for(WAIT, "a responder sample", |peers| {
        counts(peer(peers, peer1).handshake_response_ms).0 == 1
    });
    let (responder, initiator) = settled(&daemon, SETTLE, |peers| {
        let p = peer(peers, peer1);
        (counts(p.handshake_response_ms), counts(p.handshake_rtt_ms))
    });
    assert_eq!(responder, (1, 0));
    assert_eq!(initiator, (0, 0));
}
