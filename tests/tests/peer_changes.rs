//! Peers added to or removed from WireGuard while the daemon runs.

use std::time::{Duration, Instant};

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::Daemon;

const INTERVAL: Duration = Duration::from_secs(1);

fn allowed_ip_entries(daemon: &Daemon) -> u64 {
    daemon.interfaces()[0]["allowed_ip_entries"].as_u64().expect("allowed_ip_entries is a number")
}

/// Polls until `done` holds and returns how long that took; fails after three intervals.
fn time_until(what: &str, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < 3 * INTERVAL, "{what} did not happen within three intervals");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn a_peer_added_or_removed_while_running_shows_within_two_intervals_with_its_lpm_entries() {
    let mut lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "1s"]);
    time_until("the first peer", || daemon.peers().len() == 1);
    // One IPv4 /32 and one IPv6 /128 per peer.
    assert_eq!(allowed_ip_entries(&daemon), 2);

    let added = lab.add_peer().unwrap().public_key.to_string();
    let took = time_until("the added peer", || daemon.peer(&added).is_some());
    assert!(took <= 2 * INTERVAL, "the added peer took {took:?}");
    assert_eq!(allowed_ip_entries(&daemon), 4);
    let peer = daemon.peer(&added).unwrap();
    let peer2 = lab.peer("peer2").unwrap();
    assert_eq!(
        peer.allowed_ips,
        vec![format!("{}/32", peer2.tunnel_v4), format!("{}/128", peer2.tunnel_v6)]
    );

    // Its traffic is counted at once.
    assert_eq!(lab.ping(lab.gateway(), peer2.tunnel_v4.into(), 5).unwrap(), 5);
    time_until("peer2's pings", || {
        daemon.peer(&added).is_some_and(|p| p.tx_packets == 5 && p.rx_packets == 5)
    });

    lab.remove_peer("peer2").unwrap();
    let took = time_until("the removed peer to disappear", || daemon.peer(&added).is_none());
    assert!(took <= 2 * INTERVAL, "the removed peer took {took:?} to disappear");
    assert_eq!(allowed_ip_entries(&daemon), 2);
    assert_eq!(daemon.peers().len(), 1);
}

/// The ids of the maps the process `pid` holds open, from its `/proc/PID/fdinfo` (`map_id:`).
fn map_ids(pid: u32) -> Vec<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {dir}: {error}"))
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines().find_map(|line| line.strip_prefix("map_id:")?.trim().parse().ok())
        })
        .collect()
}

/// The peer ids the daemon's `SESSIONS` map holds (its values), read from the kernel.
fn session_peers(daemon: &Daemon) -> std::collections::BTreeSet<u32> {
    let id = map_ids(daemon.pid())
        .into_iter()
        .find(|&id| {
            aya::maps::MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some("SESSIONS"))
        })
        .expect("the daemon holds its SESSIONS map");
    let map = aya::maps::MapData::from_id(id).expect("opening SESSIONS by id");
    let sessions: aya::maps::HashMap<_, collector_common::maps::SessionKey, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("SESSIONS is a hash");
    sessions.iter().map(|entry| entry.expect("reading SESSIONS").1).collect()
}

/// A peer that is removed takes what the kernel learned about it along: the session indices
/// of its handshakes are gone from `SESSIONS`, so that its id, given to the next new peer, does
/// not tie that peer to the old one's sessions.
#[test]
fn a_removed_peers_sessions_leave_the_kernel_with_it() {
    let mut lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "1s"]);
    time_until("both peers", || daemon.peers().len() == 2);
    // The gateway initiates both handshakes: each leaves its session index in SESSIONS.
    lab.wait_for_handshakes(Duration::from_secs(10)).unwrap();
    time_until("both peers' sessions", || session_peers(&daemon).len() == 2);

    let removed = lab.remove_peer("peer1").unwrap().public_key.to_string();
    time_until("the removed peer to disappear", || daemon.peer(&removed).is_none());
    time_until("its sessions to leave SESSIONS", || session_peers(&daemon).len() == 1);
    // peer2's session stays, and its traffic is still its own.
    let peer2 = lab.peer("peer2").unwrap();
    assert_eq!(lab.ping(lab.gateway(), peer2.tunnel_v4.into(), 3).unwrap(), 3);
    assert_eq!(session_peers(&daemon).len(), 1);
}
