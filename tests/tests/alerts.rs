//! Peer-health rules in the lab: each fires under the condition it names and resolves when
//! the condition ends, exactly once each way, as events, in `/api/v1/alerts` and the peers'
//! `alerts`; and the webhook loses nothing that fits its queue while its receiver is down.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use wgtel::{
    events::Event,
    lab::{self, Lab, LabNode, LabOptions, WIREGUARD_PORT},
    rules::{Alert, AlertChange, AlertStatus, Rule},
    wg::PublicKey,
};
use wgtel_tests::{Daemon, drop_echo_requests_from, peer};

/// The daemon's collection interval in milliseconds (`--interval 300ms`).
const INTERVAL_MS: u64 = 300;
const INTERVAL: Duration = Duration::from_millis(INTERVAL_MS);
const INTERVAL_ARG: &str = "300ms";
/// How long a condition may take to show: WireGuard retries a handshake only every 5 s, and the
/// rules hold a condition for `for` = 1 s (over 60 intervals in all).
const WAIT: Duration = Duration::from_millis(INTERVAL_MS * 66);
/// How long "nothing more comes" is watched: seven intervals, each of which could have
/// fired again.
const QUIET: Duration = Duration::from_millis(INTERVAL_MS * 7);

/// Fast rules: `for` 1 s, counters looked back at for 8 s (WireGuard retries a handshake
/// every 5 s), the CPU rule off unless `extra` sets it.
fn config(lab: &Lab, name: &str, extra: &str) -> PathBuf {
    let path = lab.dir().join(format!("{name}.toml"));
    let mut text = format!("[alerts]\nfor = \"1s\"\ngrowth-window = \"8s\"\n{extra}\n");
    if !extra.contains("cpu-saturated") {
        text.push_str("cpu-saturated = 1.0\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn start(lab: &Lab, config: &Path) -> Daemon {
    Daemon::start(lab, &["--interval", INTERVAL_ARG, "--config", config.to_str().unwrap()])
}

fn alerts(daemon: &Daemon) -> Vec<Alert> {
    serde_json::from_str(&daemon.get("/api/v1/alerts")).unwrap()
}

/// The alert events of `rule` on peer `key`, oldest first: (type, detail).
fn alert_events(daemon: &Daemon, rule: Rule, key: &PublicKey) -> Vec<(String, String)> {
    let events: Vec<Event> =
        serde_json::from_str(&daemon.get("/api/v1/events?limit=1000")).unwrap();
    let prefix = format!("{}: ", rule.as_str());
    let key = key.to_string();
    let mut found: Vec<(String, String)> = events
        .into_iter()
        .filter(|e| e.kind.starts_with("alert_") && e.peer.as_deref() == Some(&key))
        .filter_map(|e| Some((e.kind, e.detail.strip_prefix(&prefix)?.to_owned())))
        .collect();
    found.reverse();
    found
}

/// Waits until the alert events of `rule` on `key` number `count`; their types.
fn wait_for_events(daemon: &Daemon, rule: Rule, key: &PublicKey, count: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = alert_events(daemon, rule, key);
        if events.len() >= count {
            return events.into_iter().map(|(kind, _)| kind).collect();
        }
        assert!(
            Instant::now() < deadline,
            "waited for {count} {rule:?} events on {key}, have {events:?}; log:\n{}",
            daemon.log()
        );
        thread::sleep(INTERVAL / 3);
    }
}

fn firing_on(daemon: &Daemon, node: &LabNode) -> Vec<String> {
    peer(&daemon.peers(), node).alerts.clone()
}

#[test]
fn unanswered_handshakes_to_the_broken_peer_fire_and_resolve_when_it_is_removed() {
    let mut lab =
        Lab::build(LabOptions { peers: 1, broken_peer: true, ..LabOptions::default() }).unwrap();
    let daemon = start(&lab, &config(&lab, "unanswered", ""));
    let broken = lab.peer("broken").unwrap().clone();
    let peer1 = lab.peer("peer1").unwrap().public_key;
    daemon.wait_for(WAIT, "both peers", |peers| peers.len() == 2);

    // One packet for it: the gateway initiates and retries every 5 s, never answered.
    assert_eq!(lab.ping(lab.gateway(), broken.tunnel_v4.into(), 1).unwrap(), 0);
    let kinds = wait_for_events(&daemon, Rule::HandshakeUnanswered, &broken.public_key, 1);
    assert_eq!(kinds, ["alert_firing"]);
    assert_eq!(firing_on(&daemon, &broken), ["handshake_unanswered"]);
    let listed = alerts(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].rule, Rule::HandshakeUnanswered);
    assert_eq!(listed[0].interface.as_deref(), Some(lab.gateway().interface.as_str()));
    assert!(listed[0].value >= 1.0, "{listed:?}");

    lab.remove_peer("broken").unwrap();
    let kinds = wait_for_events(&daemon, Rule::HandshakeUnanswered, &broken.public_key, 2);
    assert_eq!(kinds, ["alert_firing", "alert_resolved"]);
    assert_eq!(alerts(&daemon), Vec::new());
    // Nothing more comes, and the working peer never alerted.
    thread::sleep(QUIET);
    assert_eq!(alert_events(&daemon, Rule::HandshakeUnanswered, &broken.public_key).len(), 2);
    assert_eq!(alert_events(&daemon, Rule::HandshakeUnanswered, &peer1), Vec::new());
    let metrics = daemon.get("/metrics");
    assert!(metrics.contains("wireguard_events_total{wireguard_event_type=\"alert_firing\"} 1"));
    assert!(metrics.contains("wireguard_events_total{wireguard_event_type=\"alert_resolved\"} 1"));
    assert!(metrics.contains("wgtel_alerts{alert_rule=\"handshake_unanswered\"} 0"));
}

fn wg(lab: &Lab, args: &[&str]) {
    let gateway = lab.gateway();
    let status = Lab::command(&gateway.namespace, "wg")
        .args(["set", &gateway.interface])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "wg set {args:?}");
}

#[test]
fn an_expected_peer_fires_until_its_handshake_and_again_while_removed_from_the_gateway() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    let key = peer1.public_key;
    let config = config(&lab, "expected", &format!("expected-peers = [\"{key}\"]"));
    let daemon = start(&lab, &config);

    // Never a handshake yet: missing.
    assert_eq!(wait_for_events(&daemon, Rule::ExpectedPeerMissing, &key, 1), ["alert_firing"]);
    assert_eq!(firing_on(&daemon, &peer1), ["expected_peer_missing"]);
    lab.wait_for_handshakes(WAIT).unwrap();
    wait_for_events(&daemon, Rule::ExpectedPeerMissing, &key, 2);

    wg(&lab, &["peer", &key.to_string(), "remove"]);
    wait_for_events(&daemon, Rule::ExpectedPeerMissing, &key, 3);
    let allowed = format!("{}/32,{}/128", peer1.tunnel_v4, peer1.tunnel_v6);
    let endpoint = format!("{}:{WIREGUARD_PORT}", peer1.underlay_v4);
    wg(&lab, &["peer", &key.to_string(), "allowed-ips", &allowed, "endpoint", &endpoint]);
    lab.wait_for_handshakes(WAIT).unwrap();
    wait_for_events(&daemon, Rule::ExpectedPeerMissing, &key, 4);
    thread::sleep(QUIET);

    let interface = &lab.gateway().interface;
    let events = alert_events(&daemon, Rule::ExpectedPeerMissing, &key);
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["alert_firing", "alert_resolved", "alert_firing", "alert_resolved"]);
    assert_eq!(events[0].1, format!("on {interface}, never a handshake"));
    assert!(events[1].1.starts_with(&format!("on {interface}, last handshake ")), "{events:?}");
    assert_eq!(events[2].1, "not on any watched interface");
    assert_eq!(firing_on(&daemon, &peer1), Vec::<String>::new());
}

#[test]
fn big_pings_to_the_mtu_peer_fire_fragmentation_on_that_peer_only() {
    let lab = Lab::build(LabOptions { peers: 1, mtu_peer: true, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let config = config(&lab, "fragments", "");
    let daemon = start(&lab, &config);
    let (mtu, peer1) = (lab.peer("mtu").unwrap(), lab.peer("peer1").unwrap());

    // 3 s of 1400-byte pings: every one fragmented on the 1280 path, each way.
    let output = Lab::command(&lab.gateway().namespace, "ping")
        .args(["-n", "-q", "-c", "60", "-i", "0.05", "-W", "1", "-s", "1400"])
        .arg(mtu.tunnel_v4.to_string())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("60 received"), "{output:?}");
    assert_eq!(wait_for_events(&daemon, Rule::Fragmentation, &mtu.public_key, 1), ["alert_firing"]);
    // Fragments stopped: resolved after the 8 s window and 1 s.
    assert_eq!(
        wait_for_events(&daemon, Rule::Fragmentation, &mtu.public_key, 2),
        ["alert_firing", "alert_resolved"]
    );
    let events = alert_events(&daemon, Rule::Fragmentation, &mtu.public_key);
    assert!(events[0].1.ends_with("outer fragments, more within the last 8s"), "{events:?}");
    assert_eq!(alert_events(&daemon, Rule::Fragmentation, &peer1.public_key), Vec::new());
}

#[test]
fn a_quiet_always_on_peer_fires_resolves_under_pings_and_fires_again_when_they_stop() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap().clone(), lab.peer("peer2").unwrap());
    let key = peer1.public_key;
    // By name: the names file says which key `peer1` is.
    let names = lab.write_names_file().unwrap();
    let config =
        config(&lab, "always-on", "always-on = [\"peer1\"]\nquiet-bytes-per-second = 100.0");
    let daemon = Daemon::start(
        &lab,
        &[
            "--interval",
            INTERVAL_ARG,
            "--config",
            config.to_str().unwrap(),
            "--names-from",
            names.to_str().unwrap(),
        ],
    );
    assert_eq!(wait_for_events(&daemon, Rule::AlwaysOnQuiet, &key, 1), ["alert_firing"]);
    assert_eq!(firing_on(&daemon, &peer1), ["always_on_quiet"]);

    // 5 s of pings, 10 a second of 1000 bytes: well above 100 B/s.
    let pinging = {
        let namespace = lab.gateway().namespace.clone();
        let target = peer1.tunnel_v4.to_string();
        thread::spawn(move || {
            Lab::command(&namespace, "ping")
                .args(["-n", "-q", "-c", "50", "-i", "0.1", "-s", "1000", &target])
                .output()
                .unwrap()
        })
    };
    assert_eq!(
        wait_for_events(&daemon, Rule::AlwaysOnQuiet, &key, 2),
        ["alert_firing", "alert_resolved"]
    );
    assert!(!pinging.is_finished(), "resolved while the pings still ran");
    pinging.join().unwrap();
    assert_eq!(
        wait_for_events(&daemon, Rule::AlwaysOnQuiet, &key, 3),
        ["alert_firing", "alert_resolved", "alert_firing"]
    );
    assert_eq!(alert_events(&daemon, Rule::AlwaysOnQuiet, &peer2.public_key), Vec::new());
    let listed = alerts(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name.as_deref(), Some("peer1"));
}

/// A webhook receiver: answers every POST with 200 and keeps the bodies, in order.
fn receive(listener: &TcpListener, bodies: &Arc<Mutex<Vec<String>>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let bodies = Arc::clone(bodies);
        thread::spawn(move || serve_connection(stream, &bodies));
    }
}

fn serve_connection(mut stream: TcpStream, bodies: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut length = 0;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if first {
                assert!(line.starts_with("POST /hook?token=s3cr3t "), "{line}");
                first = false;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        bodies.lock().unwrap().push(String::from_utf8(body).unwrap());
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
    }
}

#[test]
fn a_webhook_that_is_down_gets_every_change_once_in_order_when_it_comes_back() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let namespace = lab.gateway().namespace.clone();
    // A free port in the gateway's namespace, closed until the receiver comes up.
    let port = lab::in_namespace(&namespace, || {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    })
    .unwrap();
    let missing: Vec<PublicKey> = (1..=5).map(|i| PublicKey([i; 32])).collect();
    let expected = missing.iter().map(|key| format!("\"{key}\"")).collect::<Vec<_>>().join(", ");
    let config = config(
        &lab,
        "webhook",
        &format!(
            "for-rule = {{ expected_peer_missing = \"0s\" }}\nexpected-peers = [{expected}]\n\
             webhook = \"http://127.0.0.1:{port}/hook?token=s3cr3t\"\nwebhook-queue = 10"
        ),
    );
    let daemon = start(&lab, &config);
    let peer1 = lab.peer("peer1").unwrap();

    // The receiver is down: collection goes on, and so does the traffic it counts.
    let before = peer(&daemon.peers(), peer1).rx_packets;
    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 5).unwrap(), 5);
    daemon.wait_for(WAIT, "peer1's pings counted", |peers| {
        peer(peers, peer1).rx_packets >= before + 5
    });
    assert_eq!(daemon.try_get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(alerts(&daemon).len(), 5);
    let metrics = daemon.get("/metrics");
    assert!(metrics.contains("wgtel_webhook_sent_total 0"), "{metrics}");
    assert!(!metrics.contains("wgtel_webhook_failed_attempts_total 0\n"), "{metrics}");
    thread::sleep(QUIET);

    let bodies = Arc::new(Mutex::new(Vec::new()));
    let listener =
        lab::in_namespace(&namespace, move || TcpListener::bind(("127.0.0.1", port))).unwrap();
    {
        let bodies = Arc::clone(&bodies);
        thread::spawn(move || receive(&listener.unwrap(), &bodies));
    }
    let deadline = Instant::now() + WAIT;
    while bodies.lock().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "the webhook never delivered; log:\n{}", daemon.log());
        thread::sleep(INTERVAL / 3);
    }
    thread::sleep(INTERVAL * 3);
    let changes: Vec<AlertChange> =
        bodies.lock().unwrap().iter().map(|body| serde_json::from_str(body).unwrap()).collect();
    let summary: Vec<(u64, AlertStatus, Rule, Option<String>)> = changes
        .iter()
        .map(|c| (c.sequence, c.status, c.alert.rule, c.alert.peer.clone()))
        .collect();
    let wanted: Vec<(u64, AlertStatus, Rule, Option<String>)> = (1..=5)
        .zip(&missing)
        .map(|(sequence, key)| {
            (sequence, AlertStatus::Firing, Rule::ExpectedPeerMissing, Some(key.to_string()))
        })
        .collect();
    assert_eq!(summary, wanted);
    let metrics = daemon.get("/metrics");
    assert!(metrics.contains("wgtel_webhook_sent_total 5"), "{metrics}");
    assert!(metrics.contains("wgtel_webhook_dropped_total 0"), "{metrics}");
    assert!(!daemon.log().contains("s3cr3t"), "the webhook's token leaked into the log");
}

#[test]
fn dropped_pings_over_the_drop_rate_fire_on_that_peer_and_resolve_when_they_stop() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    drop_echo_requests_from(&lab, peer1);
    let daemon = start(&lab, &config(&lab, "drop-rate", "drop-rate = 5.0"));
    daemon.wait_for(WAIT, "both peers", |peers| peers.len() == 2);

    // 3 s of 100 pings a second, every one dropped by the gateway's firewall; peer2's answered.
    assert_eq!(lab.ping(peer1, lab.gateway().tunnel_v4.into(), 300).unwrap(), 0);
    assert_eq!(lab.ping(peer2, lab.gateway().tunnel_v4.into(), 20).unwrap(), 20);
    assert_eq!(
        wait_for_events(&daemon, Rule::DropRate, &peer1.public_key, 2),
        ["alert_firing", "alert_resolved"]
    );
    thread::sleep(QUIET);
    assert_eq!(alert_events(&daemon, Rule::DropRate, &peer1.public_key).len(), 2);
    assert_eq!(alert_events(&daemon, Rule::DropRate, &peer2.public_key), Vec::new());
    let drops = peer(&daemon.peers(), peer1).drops.clone().expect("drops counted");
    assert_eq!(drops.get("NETFILTER_DROP"), Some(&300));
}

#[test]
fn a_handshake_older_than_the_limit_fires_stale_and_a_new_one_resolves_it() {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let peer1 = lab.peer("peer1").unwrap().clone();
    let key = peer1.public_key;
    let daemon = start(&lab, &config(&lab, "stale", "handshake-stale = \"4s\""));

    // No traffic: the handshake ages past 4 s, and 1 s later the alert fires.
    assert_eq!(wait_for_events(&daemon, Rule::HandshakeStale, &key, 1), ["alert_firing"]);
    assert_eq!(firing_on(&daemon, &peer1), ["handshake_stale"]);
    // A fresh handshake: WireGuard only rekeys after 120 s, so make the gateway forget the
    // session (remove the peer and add it back), then send it a packet.
    wg(&lab, &["peer", &key.to_string(), "remove"]);
    let allowed = format!("{}/32,{}/128", peer1.tunnel_v4, peer1.tunnel_v6);
    let endpoint = format!("{}:{WIREGUARD_PORT}", peer1.underlay_v4);
    wg(&lab, &["peer", &key.to_string(), "allowed-ips", &allowed, "endpoint", &endpoint]);
    lab.wait_for_handshakes(WAIT).unwrap();
    assert_eq!(
        wait_for_events(&daemon, Rule::HandshakeStale, &key, 2),
        ["alert_firing", "alert_resolved"]
    );
    let events = alert_events(&daemon, Rule::HandshakeStale, &key);
    assert!(events[0].1.contains("last handshake"), "{events:?}");
}
