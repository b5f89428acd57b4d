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
