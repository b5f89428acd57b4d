//! Exports reach real receivers: OTLP to the rotel agent over gRPC and HTTP/protobuf,
//! `/metrics` through a real Prometheus parser; and no private key reaches any output.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use wgtel::{
    lab::{Lab, LabOptions},
    wg::PublicKey,
};
use wgtel_tests::{Daemon, ROTEL_GRPC, ROTEL_HTTP, Rotel, venv, wgtel_bin};

const WAIT: Duration = Duration::from_secs(20);

fn lab() -> Lab {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    lab
}

/// What rotel must have received: every contract metric with its unit, and the attributes.
fn expect_contract_metrics(rotel: &Rotel, lab: &Lab) -> String {
    let peer1 = lab.peer("peer1").unwrap();
    rotel.wait_for(
        WAIT,
        &[
            "wireguard.peer.io",
            "wireguard.peer.handshake.age",
            "wireguard.peer.packets",
            "wireguard.interface.drops",
            "wireguard.peers",
            "wireguard.interface",
            "wireguard.peer.public_key",
            &peer1.public_key.to_string(),
            "wireguard.peer.name",
            "peer1",
            "network.io.direction",
            "transmit",
            "receive",
            "wireguard.drop.reason",
            "no_peer",
            "wireguard.peer.state",
            "active",
            &lab.gateway().interface,
            "service.name",
            "wgtel",
        ],
    )
}

/// (name, unit) of every metric descriptor in rotel's debug log.
fn metric_units(log: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    lines
        .iter()
        .enumerate()
        .filter_map(|(index, line)| {
            let name = line.strip_prefix("-> Name: ")?;
            let unit = lines[index..].iter().find_map(|l| l.strip_prefix("-> Unit: "))?;
            Some((name.to_owned(), unit.to_owned()))
        })
        .collect()
}

fn otlp_reaches_rotel(protocol: &str, endpoint: &str) {
    let mut lab = lab();
    let rotel = Rotel::start(&lab);
    let names = lab.write_names_file().unwrap();
    let names = names.to_str().unwrap();
    // A check through the tunnel: its gauge and histogram go out too.
    let check = format!("icmp:{}", lab.peer("peer1").unwrap().tunnel_v4);
    let daemon = Daemon::start_with_env(
        &lab,
        &[
            "--interval",
            "500ms",
            "--names-from",
            names,
            "--otlp-endpoint",
            endpoint,
            "--check",
            &check,
        ],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol), ("OTEL_EXPORTER_OTLP_INSECURE", "true")],
    );
    // Echoes through the tunnel: round-trip samples for the latency histogram.
    assert_eq!(lab.ping(lab.gateway(), lab.peer("peer1").unwrap().tunnel_v4.into(), 5).unwrap(), 5);
    expect_contract_metrics(&rotel, &lab);
    let log = rotel.wait_for(
        WAIT,
        &[
            "wireguard.peer.rtt",
            "wireguard.rtt.kind",
            "icmp_round_trip",
            "wireguard.check.up",
            "wireguard.check.duration",
            check.as_str(),
        ],
    );
    if std::env::var_os("WGTEL_SHOW_ROTEL").is_some() {
        eprintln!("{log}");
    }
    let units = metric_units(&log);
    for (name, unit) in [
        ("wireguard.peer.io", "By"),
        ("wireguard.peer.handshake.age", "s"),
        ("wireguard.peer.packets", "{packet}"),
        ("wireguard.interface.drops", "{packet}"),
        ("wireguard.peers", "{peer}"),
        ("wireguard.peer.rtt", "s"),
        ("wireguard.check.up", "1"),
        ("wireguard.check.duration", "s"),
    ] {
        assert!(units.contains(&(name.to_owned(), unit.to_owned())), "{name} in {unit}? {units:?}");
    }

    // An operational event arrives as a log record with the peer's attributes.
    let added = lab.add_peer().unwrap().public_key.to_string();
    let log = rotel.wait_for(
        WAIT,
        &["wireguard.peer_added", "wireguard.event.type", "peer_added on", added.as_str()],
    );
    if std::env::var_os("WGTEL_SHOW_ROTEL").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(log.matches("wireguard.peer_added").count(), 1, "sent once:\n{log}");
    let (status, daemon_log) = daemon.stop();
    assert!(status.success(), "{daemon_log}");
    assert!(!daemon_log.contains("WARN"), "{daemon_log}");
}

#[test]
fn otlp_over_grpc_reaches_rotel_with_the_contract_names_units_and_attributes() {
    // No scheme: plain gRPC because OTEL_EXPORTER_OTLP_INSECURE says so.
    otlp_reaches_rotel("grpc", ROTEL_GRPC);
}

#[test]
fn otlp_over_http_protobuf_reaches_rotel_with_the_contract_names_units_and_attributes() {
    otlp_reaches_rotel("http/protobuf", &format!("http://{ROTEL_HTTP}"));
}

/// `/metrics` parsed by prometheus_client, printed as `family type sample labels value` lines.
const PARSE_METRICS: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        print(family.name, family.type, sample.name, labels, sample.value)
"#;

#[test]
fn metrics_parse_with_the_prometheus_parser_and_carry_exact_counts() {
    let lab = lab();
    let names = lab.write_names_file().unwrap();
    let daemon =
        Daemon::start(&lab, &["--interval", "500ms", "--names-from", names.to_str().unwrap()]);
    let peer1 = lab.peer("peer1").unwrap();
    let key = peer1.public_key.to_string();
    // The handshakes came before the daemon attached: it has counted nothing yet.
    let before = daemon.peer(&key).unwrap();
    assert_eq!((before.tx_packets, before.rx_packets), (0, 0));
    assert_eq!(lab.ping(lab.gateway(), peer1.tunnel_v4.into(), 10).unwrap(), 10);
    daemon.wait_for(WAIT, "10 packets", |peers| {
        peers.iter().any(|p| p.public_key == key && p.tx_packets == 10)
    });
    let text = daemon.get("/metrics");

    let mut parser = Command::new(venv().join("bin/python3"))
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(output.status.success(), "{}\n{text}", String::from_utf8_lossy(&output.stderr));
    let parsed = String::from_utf8(output.stdout).unwrap();

    let interface = &lab.gateway().interface;
    let labels = format!(
        "wireguard_interface={interface},wireguard_peer_name=peer1,wireguard_peer_public_key={key}"
    );
    let expected = [
        format!(
            "wireguard_peer_packets counter wireguard_peer_packets_total network_io_direction=transmit,{labels} 10.0"
        ),
        format!(
            "wireguard_peer_packets counter wireguard_peer_packets_total network_io_direction=receive,{labels} 10.0"
        ),
        format!(
            "wireguard_peers gauge wireguard_peers wireguard_interface={interface},wireguard_peer_state=active 2.0"
        ),
        format!(
            "wireguard_peers gauge wireguard_peers wireguard_interface={interface},wireguard_peer_state=never 0.0"
        ),
        format!(
            "wireguard_interface_drops counter wireguard_interface_drops_total wireguard_drop_reason=no_peer,wireguard_interface={interface} 0.0"
        ),
    ];
    for line in &expected {
        assert!(parsed.lines().any(|l| l == line), "missing {line:?} in:\n{parsed}");
    }
    for family in ["wireguard_peer_io_bytes counter", "wireguard_peer_handshake_age_seconds gauge"]
    {
        assert!(parsed.lines().any(|l| l.starts_with(family)), "no {family} in:\n{parsed}");
    }
}

/// Every form a private key could leak in: base64 as `wg` prints it, hex as UAPI does.
fn secret_forms(lab: &Lab) -> Vec<String> {
    lab.private_keys()
        .into_iter()
        .flat_map(|key| {
            let hex =
                key.parse::<PublicKey>().expect("a private key is 32 bytes of base64").to_hex();
            [key, hex]
        })
        .collect()
}

#[test]
fn no_private_key_reaches_any_output_log_or_export() {
    let lab = lab();
    let rotel = Rotel::start(&lab);
    let names = lab.write_names_file().unwrap();
    let daemon = Daemon::start_with_env(
        &lab,
        &[
            "--interval",
            "500ms",
            "--names-from",
            names.to_str().unwrap(),
            "--otlp-endpoint",
            &format!("http://{ROTEL_GRPC}"),
        ],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(lab.ping(lab.gateway(), lab.peer("peer1").unwrap().tunnel_v4.into(), 3).unwrap(), 3);
    expect_contract_metrics(&rotel, &lab);
    let mut outputs = vec![
        ("/metrics".to_owned(), daemon.get("/metrics")),
        ("/api/v1/peers".to_owned(), daemon.get("/api/v1/peers")),
        ("/api/v1/interfaces".to_owned(), daemon.get("/api/v1/interfaces")),
        ("/healthz".to_owned(), daemon.get("/healthz")),
    ];
    for args in [&["status"][..], &["status", "--json"]] {
        let output =
            Lab::command(&lab.gateway().namespace, wgtel_bin()).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            printed.contains("peer1")
                || printed.contains(&lab.peer("peer1").unwrap().public_key.to_string()[..8])
        );
        outputs.push((format!("wgtel {args:?}"), printed));
    }
    let (_, log) = daemon.stop();
    outputs.push(("the daemon's log".into(), log));
    outputs.push(("rotel's log".into(), rotel.log()));
    for secret in secret_forms(&lab) {
        for (what, text) in &outputs {
            assert!(!text.contains(&secret), "a private key reached {what}");
        }
    }
}
