//! Synthetic checks through the tunnel in the lab: each kind up against a service behind
//! peer1 (an ICMP echo, a TCP port, an HTTP server, a DNS responder) and down against peer2
//! (echo requests dropped by its firewall, a closed port, a 404, NXDOMAIN), each tied to the
//! peer whose AllowedIPs cover its target; a check outside every tunnel tied to none;
//! `check_failed` on peer2 only; the results in `/api/v1/checks`, `/metrics` and
//! `wgtel status`.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use wgtel::{
    lab::{Lab, LabNode, LabOptions, stop_child},
    model::Code,
};
use wgtel_tests::{Daemon, peer, venv, wgtel_bin};

const WAIT: Duration = Duration::from_secs(30);

/// The address the lab's DNS responder gives `db.internal`.
const DB_ADDRESS: &str = "198.19.200.7";

/// A DNS responder over UDP on port 53 of `address`: `db.internal` A is [`DB_ADDRESS`], any
/// other name NXDOMAIN. It prints `ready` once bound.
const DNS_RESPONDER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    query, peer = s.recvfrom(512)
    ident = query[:2]
    end = 12
    while query[end] != 0:
        end += 1 + query[end]
    question = query[12:end + 5]
    labels, i = [], 12
    while query[i] != 0:
        labels.append(query[i + 1:i + 1 + query[i]].decode())
        i += 1 + query[i]
    if ".".join(labels) == "db.internal":
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(sys.argv[2])
        s.sendto(ident + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0) + question + answer, peer)
    else:
        s.sendto(ident + b"\x81\x83" + struct.pack(">HHHH", 1, 0, 0, 0) + question, peer)
"#;

/// A service in a lab namespace, stopped (by its own PID) when dropped.
struct Service(Option<Child>);

impl Service {
    /// Starts `program args` in `node`'s namespace and waits for its first line of output.
    fn start(node: &LabNode, args: &[&str], ready: &str) -> Self {
        let mut child = Lab::command(&node.namespace, venv().join("bin/python3"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {args:?}: {error}"));
        let mut line = String::new();
        let read = BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(read > 0 && line.contains(ready), "{args:?} did not start: {line:?}");
        Self(Some(child))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop_child(child);
        }
    }
}

/// An HTTP server on `node`'s tunnel address, port 8080, serving `root`.
fn http_server(node: &LabNode, root: &std::path::Path) -> Service {
    let script = "import http.server, functools, sys\n\
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n\
        server = http.server.HTTPServer((sys.argv[1], 8080), handler)\n\
        print('ready', flush=True)\nserver.serve_forever()\n";
    let address = node.tunnel_v4.to_string();
    Service::start(node, &["-c", script, &address, root.to_str().unwrap()], "ready")
}

fn dns_responder(node: &LabNode) -> Service {
    let address = node.tunnel_v4.to_string();
    Service::start(node, &["-c", DNS_RESPONDER, &address, DB_ADDRESS], "ready")
}

/// Drops every echo request `node` receives (an nft table in its namespace).
fn drop_echo_requests_on(node: &LabNode) {
    for rule in [
        "add table inet wgtelcheck",
        "add chain inet wgtelcheck input { type filter hook input priority 0 ; }",
        "add rule inet wgtelcheck input icmp type echo-request drop",
    ] {
        let status = Lab::command(&node.namespace, "nft").arg(rule).status().unwrap();
        assert!(status.success(), "nft {rule}");
    }
}

fn config(lab: &Lab, peer1: &LabNode, peer2: &LabNode) -> std::path::PathBuf {
    let (p1, p2) = (peer1.tunnel_v4, peer2.tunnel_v4);
    let text = format!(
        r#"interval = "300ms"
[[checks]]
name = "up-icmp"
kind = "icmp"
target = "{p1}"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "up-tcp"
kind = "tcp"
target = "{p1}:8080"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "up-http"
kind = "http"
target = "http://{p1}:8080/health"
expect-status = 200
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "up-dns"
kind = "dns"
server = "{p1}"
query = "db.internal"
expect = "{DB_ADDRESS}"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "down-icmp"
kind = "icmp"
target = "{p2}"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "down-tcp"
kind = "tcp"
target = "{p2}:2222"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "down-http"
kind = "http"
target = "http://{p2}:8080/health"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "down-dns"
kind = "dns"
server = "{p2}"
query = "missing.internal"
interval = "500ms"
timeout = "400ms"
[[checks]]
name = "outside"
kind = "icmp"
target = "{}"
interval = "500ms"
timeout = "400ms"
"#,
        peer1.underlay_v4
    );
    let path = lab.dir().join("checks.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `/api/v1/checks` once every check has run at least twice.
fn checks_after_two_runs(daemon: &Daemon) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let checks: Vec<Value> = serde_json::from_str(&daemon.get("/api/v1/checks")).unwrap();
        if checks.len() == 9 && checks.iter().all(|c| c["runs"].as_u64().unwrap() >= 2) {
            return checks;
        }
        assert!(started.elapsed() < WAIT, "checks never ran twice: {checks:#?}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_check_kind_is_up_behind_one_peer_down_behind_another_and_tied_to_it() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let (peer1, peer2) = (lab.peer("peer1").unwrap(), lab.peer("peer2").unwrap());
    let served = lab.dir().join("served");
    let empty = lab.dir().join("empty");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(served.join("health"), "ok\n").unwrap();
    let _services = [
        http_server(peer1, &served),
        dns_responder(peer1),
        http_server(peer2, &empty),
        dns_responder(peer2),
    ];
    drop_echo_requests_on(peer2);
    let names = lab.write_names_file().unwrap();
    let config = config(&lab, peer1, peer2);
    let daemon = Daemon::start(
        &lab,
        &["--config", config.to_str().unwrap(), "--names-from", names.to_str().unwrap()],
    );

    let checks = checks_after_two_runs(&daemon);
    let gateway_interface = lab.gateway().interface.clone();
    let by_name = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap().clone();
    for (name, kind, node) in [
        ("up-icmp", "icmp", peer1),
        ("up-tcp", "tcp", peer1),
        ("up-http", "http", peer1),
        ("up-dns", "dns", peer1),
        ("down-icmp", "icmp", peer2),
        ("down-tcp", "tcp", peer2),
        ("down-http", "http", peer2),
        ("down-dns", "dns", peer2),
    ] {
        let check = by_name(name);
        assert_eq!(check["kind"], kind, "{check:#}");
        assert_eq!(check["up"], name.starts_with("up-"), "{check:#}");
        assert_eq!(check["interface"], gateway_interface.as_str(), "{check:#}");
        assert_eq!(check["peer_public_key"], node.public_key.to_string(), "{check:#}");
        assert_eq!(check["peer_name"], node.name.as_str(), "{check:#}");
        assert_eq!(check["address"], node.tunnel_v4.to_string(), "{check:#}");
        let runs = check["runs"].as_u64().unwrap();
        let failures = check["failures"].as_u64().unwrap();
        assert_eq!(failures, if name.starts_with("up-") { 0 } else { runs }, "{check:#}");
        let buckets: u64 =
            check["buckets"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).sum();
        assert_eq!(buckets, runs, "every run in one bucket: {check:#}");
    }
    let error = |name: &str| by_name(name)["error"].as_str().unwrap().to_owned();
    assert_eq!(error("down-icmp"), "no answer within 400ms");
    assert!(
        error("down-tcp").starts_with("connecting: Connection refused"),
        "{}",
        error("down-tcp")
    );
    assert_eq!(error("down-http"), "HTTP status 404, expected 2xx");
    assert_eq!(error("down-dns"), "DNS answer Non-Existent Domain");
    let outside = by_name("outside");
    assert_eq!(outside["up"], true, "{outside:#}");
    assert_eq!(
        (outside["interface"].clone(), outside["peer_public_key"].clone()),
        (Value::Null, Value::Null)
    );

    // check_failed on peer2, naming its four failing checks; none on peer1.
    let peers = daemon.peers();
    let on_peer2: Vec<_> =
        peer(&peers, peer2).diagnosis.iter().filter(|d| d.code == Code::CheckFailed).collect();
    assert_eq!(on_peer2.len(), 1, "{peers:#?}");
    for name in ["down-icmp", "down-tcp", "down-http", "down-dns"] {
        assert!(on_peer2[0].evidence.contains(&format!("{name:?}")), "{}", on_peer2[0].evidence);
    }
    assert!(
        on_peer2[0].evidence.starts_with("4 checks through this peer fail: "),
        "{}",
        on_peer2[0].evidence
    );
    assert_eq!(peer(&peers, peer1).diagnosis, [], "{peers:#?}");

    // /metrics: the up gauge per check with the peer's labels, and the duration histogram.
    let metrics = daemon.get("/metrics");
    let key1 = peer1.public_key.to_string();
    assert!(
        metrics.contains(&format!(
            "wireguard_check_up{{wireguard_check_name=\"up-http\",wireguard_check_kind=\"http\",wireguard_interface=\"{gateway_interface}\",wireguard_peer_public_key=\"{key1}\",wireguard_peer_name=\"peer1\"}} 1\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "wireguard_check_up{wireguard_check_name=\"outside\",wireguard_check_kind=\"icmp\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "wireguard_check_up{wireguard_check_name=\"down-dns\",wireguard_check_kind=\"dns\""
        ),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE wireguard_check_duration_seconds histogram\n"), "{metrics}");
    assert!(metrics.contains("wireguard_check_duration_seconds_bucket{wireguard_check_name=\"up-icmp\",wireguard_check_kind=\"icmp\""), "{metrics}");

    // wgtel status lists the checks.
    let status =
        Lab::command(&lab.gateway().namespace, wgtel_bin()).arg("status").output().unwrap();
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.contains("CHECK"), "{text}");
    let line =
        text.lines().find(|line| line.starts_with("down-tcp ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(" down ") && line.contains("peer2") && line.contains("Connection refused"),
        "{line}"
    );
    let line =
        text.lines().find(|line| line.starts_with("outside ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" up ") && line.contains("(no tunnel)"), "{line}");
}

#[test]
fn a_bad_check_stops_the_daemon_with_a_clear_message() {
    let out = Command::new(wgtel_bin()).args(["run", "--check", "icmp:alice"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("icmp check \"alice\": the target must be an IP address"), "{stderr}");
}
