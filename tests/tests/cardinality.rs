//! Cardinality controls on a live gateway: `--peer-allowlist` and `--top-peers` decide which
//! peers keep series of their own; the others are summed per interface into the series marked
//! `otel_metric_overflow="true"`, exactly, while `/api/v1/peers` still lists every peer.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::{Duration, Instant};

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabOptions},
};
use wgtel_tests::{Daemon, peer};

const WAIT: Duration = Duration::from_secs(15);

/// The value of the sample of `name` whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
}

/// (receive, transmit) inner packets of the interface's overflow series.
fn overflow_packets(metrics: &str) -> (u64, u64) {
    let direction = |d: &str| {
        let label = format!("network_io_direction=\"{d}\"");
        sample(metrics, "wireguard_peer_packets_total", &["otel_metric_overflow=\"true\"", &label])
            .unwrap_or(0)
    };
    (direction("receive"), direction("transmit"))
}

fn three_peer_lab(args: &[&str]) -> (Lab, Daemon) {
    let lab = Lab::build(LabOptions { peers: 3, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let daemon = Daemon::start(&lab, args);
    daemon.wait_for(WAIT, "three peers listed", |peers| peers.len() == 3);
    (lab, daemon)
}

/// The sum of (rx_packets, tx_packets) of `nodes` in `peers`.
fn packets_of(peers: &[ApiPeer], lab: &Lab, nodes: &[&str]) -> (u64, u64) {
    nodes
        .iter()
        .map(|name| peer(peers, lab.peer(name).unwrap()))
        .fold((0, 0), |(rx, tx), p| (rx + p.rx_packets, tx + p.tx_packets))
}

#[test]
fn an_allowlisted_peer_keeps_its_series_and_the_others_sum_exactly() {
    let lab = Lab::build(LabOptions { peers: 3, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let keep = lab.peer("peer2").unwrap().public_key.to_string();
    let daemon = Daemon::start(&lab, &["--interval", "500ms", "--peer-allowlist", &keep]);
    daemon.wait_for(WAIT, "three peers listed", |peers| peers.len() == 3);

    // Peers 1 and 3 were summed from their first collection on: the sum is theirs exactly.
    let before = daemon.peers();
    let summed_before = packets_of(&before, &lab, &["peer1", "peer3"]);
    assert_eq!(
        lab.ping(lab.gateway(), lab.peer("peer1").unwrap().tunnel_v4.into(), 20).unwrap(),
        20
    );
    assert_eq!(
        lab.ping(lab.gateway(), lab.peer("peer3").unwrap().tunnel_v4.into(), 10).unwrap(),
        10
    );
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let metrics = daemon.get("/metrics");
        if overflow_packets(&metrics) == (summed_before.0 + 30, summed_before.1 + 30) {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "overflow {:?}, expected {summed_before:?} + 30 each way",
            overflow_packets(&metrics)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let after = daemon.peers();
    assert_eq!(after.len(), 3, "the API lists every peer");
    assert_eq!(packets_of(&after, &lab, &["peer1", "peer3"]), overflow_packets(&metrics));

    let kept = peer(&after, lab.peer("peer2").unwrap());
    let kept_label = format!("wireguard_peer_public_key=\"{keep}\"");
    assert_eq!(
        sample(&metrics, "wireguard_peer_packets_total", &[&kept_label, "\"transmit\""]),
        Some(kept.tx_packets)
    );
    for summed in ["peer1", "peer3"] {
        let key = lab.peer(summed).unwrap().public_key.to_string();
        assert!(!metrics.contains(&key), "{summed} has series of its own");
    }
    let interface = &lab.gateway().interface;
    assert_eq!(
        sample(
            &metrics,
            "wgtel_series_aggregated_peers",
            &[&format!("wireguard_interface=\"{interface}\"")]
        ),
        Some(2)
    );
}

#[test]
fn top_peers_follow_the_traffic_and_the_sum_never_goes_down() {
    let (lab, daemon) = three_peer_lab(&["--interval", "500ms", "--top-peers", "1"]);
    let key = |name: &str| lab.peer(name).unwrap().public_key.to_string();
    let own = |metrics: &str| -> Vec<String> {
        ["peer1", "peer2", "peer3"]
            .into_iter()
            .filter(|name| metrics.contains(&key(name)))
            .map(str::to_owned)
            .collect()
    };
    let mut highest = (0, 0);
    let mut watch_until = |owner: &str, pings_to: &str| {
        let address = lab.peer(pings_to).unwrap().tunnel_v4;
        let deadline = Instant::now() + WAIT;
        loop {
            // Keep the peer busy until a collection ranks it first.
            assert_eq!(lab.ping(lab.gateway(), address.into(), 40).unwrap(), 40);
            let metrics = daemon.get("/metrics");
            let overflow = overflow_packets(&metrics);
            assert!(
                overflow.0 >= highest.0 && overflow.1 >= highest.1,
                "the overflow sum went down: {overflow:?} after {highest:?}"
            );
            highest = overflow;
            if own(&metrics) == [owner] {
                return;
            }
            assert!(Instant::now() < deadline, "{owner} never got the only own series");
        }
    };
    watch_until("peer3", "peer3");
    watch_until("peer1", "peer1");
    assert_eq!(daemon.peers().len(), 3, "the API lists every peer");
}
