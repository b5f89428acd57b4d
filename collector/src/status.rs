//! `wgtel status`: one snapshot of every peer, from a running daemon's HTTP API.
//!
//! Longer than most modules: a third of it is tests of the rendered table, lines and checks.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    checks::CheckResult,
    export::api::{ApiInterface, ApiPeer},
    rules::Alert,
};

/// Flags of `wgtel status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the daemon's JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The daemon's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:9587", value_name = "URL")]
    pub endpoint: String,
}

/// Why `wgtel status` could not show the peers.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing answered at the endpoint.
    #[error("no wgtel daemon answers at {endpoint} (start one with `wgtel run`)")]
    NoDaemon {
        /// The endpoint asked.
        endpoint: String,
        /// Why the request failed.
        #[source]
        source: Box<ureq::Error>,
    },
    /// Something answered, but not with a peer list.
    #[error("{endpoint} answered, but not with wgtel's peer list")]
    BadReply {
        /// The endpoint asked.
        endpoint: String,
        /// What was wrong with the reply.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Prints the peer table (or JSON) of the daemon at `args.endpoint`.
pub fn run(args: &StatusArgs) -> Result<(), StatusError> {
    let peers = fetch_peers(&args.endpoint)?;
    if args.json {
        let json = serde_json::to_string_pretty(&peers).map_err(|source| {
            StatusError::BadReply { endpoint: args.endpoint.clone(), source: source.into() }
        })?;
        println!("{json}");
    } else {
        let interfaces = fetch_interfaces(&args.endpoint)?;
        let alerts = fetch_alerts(&args.endpoint)?;
        let checks: Vec<CheckResult> = fetch(&args.endpoint, "/api/v1/checks")?;
        print!("{}{}", render_view(&peers, &interfaces, &alerts), render_checks(&checks));
    }
    Ok(())
}

/// The interfaces of the daemon at `endpoint`.
pub fn fetch_interfaces(endpoint: &str) -> Result<Vec<ApiInterface>, StatusError> {
    fetch(endpoint, "/api/v1/interfaces")
}

/// One line per interface: its drops that no peer can be tied to; then one line per thing
/// the kernel cannot give (the same for every interface).
pub fn render_interfaces(interfaces: &[ApiInterface]) -> String {
    let lines: String = interfaces
        .iter()
        .map(|interface| {
            let causes: Vec<&str> = interface.diagnosis.iter().map(|d| d.code.as_str()).collect();
            let causes = if causes.is_empty() {
                String::new()
            } else {
                format!(", cause: {}", causes.join(", "))
            };
            format!(
                "{} ({}, port {}): {} peers, drops not tied to a peer: {}{causes}\n",
                place(&interface.name, interface.netns.as_deref()),
                interface.implementation,
                interface.listen_port.map_or_else(|| "-".to_owned(), |port| port.to_string()),
                interface.peers,
                drops(&interface.drops)
            )
        })
        .collect();
    let unavailable = interfaces.first().map_or(&[][..], |interface| &interface.unavailable);
    let notes: String = unavailable
        .iter()
        .map(|missing| format!("unavailable: {}: {}\n", missing.feature.as_str(), missing.reason))
        .collect();
    lines + &notes
}

/// Interface `name`, followed by `@NETNS` outside the start namespace.
fn place(name: &str, netns: Option<&str>) -> String {
    netns.map_or_else(|| name.to_owned(), |netns| format!("{name}@{netns}"))
}

/// The whole view of `wgtel status` (and of the demo): the peer table, one line per interface,
/// one per alert firing.
pub fn render_view(peers: &[ApiPeer], interfaces: &[ApiInterface], alerts: &[Alert]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    format!(
        "{}{}{}",
        render_table(peers),
        render_interfaces(interfaces),
        render_alerts(alerts, peers, now)
    )
}

/// One line per check: name, kind, target, state, the peer that carries it (`(no tunnel)`
/// when none), the latest run's duration and error; nothing when no check is configured.
pub fn render_checks(checks: &[CheckResult]) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 7]> = checks
        .iter()
        .map(|check| {
            let peer = match (&check.interface, &check.peer_name, &check.peer_public_key) {
                (Some(interface), Some(name), _) => format!("{interface}/{name}"),
                (Some(interface), None, Some(key)) => {
                    format!("{interface}/{}", short_key(&key.to_string()))
                }
                _ => "(no tunnel)".to_owned(),
            };
            let state = match check.up {
                Some(true) => "up",
                Some(false) => "down",
                None => "pending",
            };
            let took = check
                .duration_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s * 1e3));
            [
                check.name.clone(),
                check.kind.clone(),
                check.target.clone(),
                state.to_owned(),
                peer,
                took,
                check.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["CHECK", "KIND", "TARGET", "STATE", "PEER", "TOOK", "ERROR"].map(str::to_owned);
    let widths: Vec<usize> = (0..7)
        .map(|column| {
            rows.iter().chain([&header]).map(|row| row[column].chars().count()).max().unwrap_or(0)
        })
        .collect();
    let line = |row: &[String; 7]| {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    std::iter::once(&header).chain(&rows).map(line).collect()
}

/// The alerts firing at the daemon at `endpoint`.
pub fn fetch_alerts(endpoint: &str) -> Result<Vec<Alert>, StatusError> {
    fetch(endpoint, "/api/v1/alerts")
}

/// One line per alert firing at `now` (seconds since the Unix epoch), peers by name where
/// `peers` has one; `no alerts firing` when none.
pub fn render_alerts(alerts: &[Alert], peers: &[ApiPeer], now: f64) -> String {
    if alerts.is_empty() {
        return "no alerts firing\n".to_owned();
    }
    alerts
        .iter()
        .map(|alert| {
            let subject = match (&alert.interface, &alert.peer) {
                (None, None) => "host".to_owned(),
                (interface, Some(key)) => {
                    let name = alert.name.clone().or_else(|| {
                        peers.iter().find(|p| &p.public_key == key).and_then(|p| p.name.clone())
                    });
                    let peer = name.unwrap_or_else(|| short_key(key));
                    match interface {
                        Some(interface) => format!("{interface} peer {peer}"),
                        None => format!("peer {peer}"),
                    }
                }
                (Some(interface), None) => interface.clone(),
            };
            let age = handshake(Some(now - alert.since));
            format!(
                "ALERT {} on {subject}, firing since {age}: {}\n",
                alert.rule.as_str(),
                alert.detail
            )
        })
        .collect()
}

/// The peers of the daemon at `endpoint` (e.g. `http://127.0.0.1:9587`).
pub fn fetch_peers(endpoint: &str) -> Result<Vec<ApiPeer>, StatusError> {
    fetch(endpoint, "/api/v1/peers")
}

fn fetch<T: serde::de::DeserializeOwned>(endpoint: &str, path: &str) -> Result<T, StatusError> {
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().into();
    let mut response = agent.get(&url).call().map_err(|source| match source {
        // Something answered, with an error status: not a daemon of this version, or not wgtel.
        ureq::Error::StatusCode(_) => {
            StatusError::BadReply { endpoint: endpoint.to_owned(), source: source.into() }
        }
        source => StatusError::NoDaemon { endpoint: endpoint.to_owned(), source: Box::new(source) },
    })?;
    let body = response.body_mut().read_to_string().map_err(|source| StatusError::BadReply {
        endpoint: endpoint.to_owned(),
        source: source.into(),
    })?;
    serde_json::from_str(&body).map_err(|source| StatusError::BadReply {
        endpoint: endpoint.to_owned(),
        source: source.into(),
    })
}

const HEADERS: [&str; 15] = [
    "INTERFACE",
    "PEER",
    "ENDPOINT",
    "HANDSHAKE",
    "RX",
    "TX",
    "RX/s",
    "TX/s",
    "PACKETS rx/tx",
    "DROPS",
    "FRAGS rx/tx",
    "UNANSWERED",
    "RTT p50/p99",
    "HEALTH",
    "CAUSE",
];

/// The peer table: one aligned row per peer, human units.
pub fn render_table(peers: &[ApiPeer]) -> String {
    if peers.is_empty() {
        return "no peers\n".to_owned();
    }
    // WireGuard lists peers in no stable order (wireguard-go: a Go map): sort, so that a
    // refreshing view does not shuffle.
    let mut sorted: Vec<&ApiPeer> = peers.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.netns, &a.interface, a.name.is_none(), &a.name, &a.public_key).cmp(&(
            &b.netns,
            &b.interface,
            b.name.is_none(),
            &b.name,
            &b.public_key,
        ))
    });
    let rows: Vec<[String; 15]> = sorted
        .into_iter()
        .map(|peer| {
            [
                place(&peer.interface, peer.netns.as_deref()),
                peer.name.clone().unwrap_or_else(|| short_key(&peer.public_key)),
                peer.endpoint.clone().unwrap_or_else(|| "-".into()),
                handshake(peer.last_handshake_seconds_ago),
                bytes(peer.rx_bytes as f64),
                bytes(peer.tx_bytes as f64),
                format!("{}/s", bytes(peer.rx_bytes_per_second)),
                format!("{}/s", bytes(peer.tx_bytes_per_second)),
                format!("{}/{}", peer.rx_packets, peer.tx_packets),
                peer.drops.as_ref().map_or_else(|| "-".to_owned(), drops),
                format!("{}/{}", peer.fragments.receive, peer.fragments.transmit),
                peer.unanswered_initiations.to_string(),
                round_trip(peer),
                peer.health.clone(),
                peer.diagnosis
                    .first()
                    .map_or_else(|| "-".to_owned(), |d| d.code.as_str().to_owned()),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(widths) {
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count()) + 2));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut HEADERS.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The inner round trip (echo, else TCP, else handshake): `1.2/3.4 ms`, `-` when unmeasured.
fn round_trip(peer: &ApiPeer) -> String {
    [peer.icmp_rtt_ms, peer.tcp_rtt_ms, peer.handshake_rtt_ms]
        .into_iter()
        .flatten()
        .find_map(|rtt| Some(format!("{:.1}/{:.1} ms", rtt.p50?, rtt.p99?)))
        .unwrap_or_else(|| "-".into())
}

/// The first eight characters of a key and an ellipsis.
fn short_key(key: &str) -> String {
    format!("{}…", key.chars().take(8).collect::<String>())
}

/// `12s ago`, `3m 4s ago`, `2h 5m ago`, `3d 1h ago`, `never`.
fn handshake(age: Option<f64>) -> String {
    let Some(age) = age else { return "never".into() };
    let seconds = age.max(0.0).round() as u64;
    let (days, hours, minutes, seconds) =
        (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s ago"),
        (0, 0, _) => format!("{minutes}m {seconds}s ago"),
        (0, _, _) => format!("{hours}h {minutes}m ago"),
        _ => format!("{days}d {hours}h ago"),
    }
}

/// Binary units with one decimal: `0 B`, `512 B`, `1.2 KiB`, `3.4 MiB`.
fn bytes(value: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if value < 1024.0 {
        return format!("{} B", value.max(0.0).round() as u64);
    }
    let mut scaled = value / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if scaled < 1024.0 {
            break;
        }
        scaled /= 1024.0;
        unit = next;
    }
    format!("{scaled:.1} {unit}")
}

/// The total and, when there are any, each reason: `3 (no_peer 3)`.
fn drops(drops: &BTreeMap<String, u64>) -> String {
    let total: u64 = drops.values().sum();
    if total == 0 {
        return "0".into();
    }
    let reasons: Vec<String> = drops
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    format!("{total} ({})", reasons.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Directional;

    fn peer(name: Option<&str>, age: Option<f64>) -> ApiPeer {
        ApiPeer {
            interface: "wg0".into(),
            netns: None,
            public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            name: name.map(str::to_owned),
            endpoint: name.map(|_| "198.18.1.10:51820".into()),
            allowed_ips: vec!["198.19.1.10/32".into()],
            persistent_keepalive: None,
            last_handshake_seconds_ago: age,
            last_handshake_unix: age.map(|age| 1_796_000_000.0 - age),
            rx_bytes: 1_258_291,
            tx_bytes: 512,
            rx_packets: 50,
            tx_packets: 49,
            rx_bytes_per_second: 348_160.0,
            tx_bytes_per_second: 0.0,
            drops: Some(BTreeMap::from([("no_peer".into(), 0), ("NETFILTER_DROP".into(), 2)])),
            fragments: Directional::default(),
            messages: BTreeMap::new(),
            unanswered_initiations: 0,
            icmp_too_big: Directional::default(),
            icmp_unreachable: Directional::default(),
            path_mtu: None,
            handshake_rtt_ms: None,
            handshake_response_ms: None,
            icmp_rtt_ms: None,
            tcp_rtt_ms: None,
            tcp_response_ms: None,
            health: if age.is_some() { "active" } else { "never" }.into(),
            alerts: Vec::new(),
            diagnosis: Vec::new(),
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1024.0), "1.0 KiB");
        assert_eq!(bytes(1_258_291.0), "1.2 MiB");
        assert_eq!(bytes(5.0 * 1024.0 * 1024.0 * 1024.0), "5.0 GiB");
        assert_eq!(handshake(None), "never");
        assert_eq!(handshake(Some(12.4)), "12s ago");
        assert_eq!(handshake(Some(184.0)), "3m 4s ago");
        assert_eq!(handshake(Some(7500.0)), "2h 5m ago");
        assert_eq!(handshake(Some(90_000.0)), "1d 1h ago");
    }

    #[test]
    fn the_table_is_aligned_and_names_or_shortens_peers() {
        let mut alice = peer(Some("alice"), Some(12.0));
        alice.diagnosis = vec![crate::model::Diagnosis {
            code: crate::model::Code::FirewallDrops,
            since: 1000.0,
            evidence: "2 packets".into(),
            counters: BTreeMap::new(),
        }];
        let table = render_table(&[alice, peer(None, None)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("INTERFACE  PEER       ENDPOINT           HANDSHAKE  RX"),
            "{table}"
        );
        assert!(
            lines[1]
                .starts_with("wg0        alice      198.18.1.10:51820  12s ago    1.2 MiB  512 B"),
            "{table}"
        );
        assert!(lines[1].contains("340.0 KiB/s"), "{table}");
        assert!(lines[1].contains("50/49"), "{table}");
        assert!(lines[1].contains("2 (NETFILTER_DROP 2)"), "{table}");
        assert!(lines[2].starts_with("wg0        xTIBA5rb…  -                  never"), "{table}");
        assert!(lines[0].ends_with("HEALTH  CAUSE"), "{table}");
        assert!(lines[1].ends_with("active  firewall_drops"), "{table}");
        assert!(lines[2].ends_with("never   -"), "{table}");
    }

    #[test]
    fn interface_lines_name_their_drops_and_what_the_kernel_cannot_give() {
        let mut interface = ApiInterface {
            name: "wg0".into(),
            ifindex: 3,
            netns: None,
            implementation: "wireguard-go".into(),
            listen_port: Some(51820),
            public_key: None,
            peers: 2,
            drops: BTreeMap::from([("no_peer".into(), 7)]),
            allowed_ip_entries: 4,
            underlay_unknown_source: 0,
            unavailable: Vec::new(),
            diagnosis: vec![crate::model::Diagnosis {
                code: crate::model::Code::NoPeerRoute,
                since: 1000.0,
                evidence: "7 packets".into(),
                counters: BTreeMap::new(),
            }],
        };
        assert_eq!(
            render_interfaces(std::slice::from_ref(&interface)),
            "wg0 (wireguard-go, port 51820): 2 peers, drops not tied to a peer: 7 (no_peer 7), \
             cause: no_peer_route\n"
        );
        interface.unavailable = vec![crate::model::Unavailable {
            feature: crate::model::Feature::Tcx,
            reason: "kernel 6.1.0 has no tcx (6.6+)".into(),
        }];
        let elsewhere = ApiInterface { netns: Some("blue".into()), ..interface.clone() };
        assert_eq!(
            render_interfaces(&[interface, elsewhere]),
            "wg0 (wireguard-go, port 51820): 2 peers, drops not tied to a peer: 7 (no_peer 7), \
             cause: no_peer_route\n\
             wg0@blue (wireguard-go, port 51820): 2 peers, drops not tied to a peer: 7 (no_peer \
             7), cause: no_peer_route\n\
             unavailable: tcx: kernel 6.1.0 has no tcx (6.6+)\n"
        );
    }

    #[test]
    fn a_peer_whose_drops_are_not_counted_shows_a_dash_not_zero() {
        let mut uncounted = peer(Some("alice"), Some(12.0));
        uncounted.drops = None;
        let table = render_table(&[uncounted]);
        let row = table.lines().nth(1).expect("a row");
        assert!(row.contains("50/49          -      0/0  "), "{table}");
    }

    #[test]
    fn alert_lines_name_the_rule_the_subject_and_the_measurement() {
        let alert = |rule, interface: Option<&str>, peer: Option<&str>| Alert {
            rule,
            interface: interface.map(str::to_owned),
            peer: peer.map(str::to_owned),
            name: None,
            since: 1000.0,
            value: 0.95,
            detail: "CPU 95.0% busy (threshold 90.0%)".into(),
        };
        let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let alerts = [
            alert(crate::rules::Rule::CpuSaturated, None, None),
            alert(crate::rules::Rule::DropRate, Some("wg0"), Some(key)),
            alert(
                crate::rules::Rule::ExpectedPeerMissing,
                None,
                Some("TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="),
            ),
        ];
        let text = render_alerts(&alerts, &[peer(Some("alice"), Some(1.0))], 1184.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ALERT cpu_saturated on host, firing since 3m 4s ago: CPU 95.0% busy (threshold 90.0%)",
                "ALERT drop_rate on wg0 peer alice, firing since 3m 4s ago: CPU 95.0% busy (threshold 90.0%)",
                "ALERT expected_peer_missing on peer TrMvSoP4…, firing since 3m 4s ago: CPU 95.0% busy (threshold 90.0%)",
            ]
        );
        assert_eq!(render_alerts(&[], &[], 0.0), "no alerts firing\n");
    }

    #[test]
    fn check_lines_name_the_state_the_peer_and_the_error() {
        let check = |name: &str, up: Option<bool>, peer: Option<&str>, error: Option<&str>| {
            let spec: crate::checks::CheckSpec = "tcp:198.19.0.11:22".parse().unwrap();
            CheckResult {
                name: name.into(),
                up,
                duration_seconds: up.map(|_| 0.0125),
                error: error.map(str::to_owned),
                interface: peer.map(|_| "wg0".to_owned()),
                peer_public_key: peer
                    .map(|_| "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".parse().unwrap()),
                peer_name: peer.filter(|p| !p.is_empty()).map(str::to_owned),
                ..CheckResult::new(&spec)
            }
        };
        let text = render_checks(&[
            check("db", Some(true), Some("alice"), None),
            check(
                "ssh",
                Some(false),
                Some(""),
                Some("connecting: Connection refused (os error 111)"),
            ),
            check("web", None, None, None),
        ]);
        assert_eq!(
            text,
            "CHECK  KIND  TARGET          STATE    PEER           TOOK    ERROR\n\
             db     tcp   198.19.0.11:22  up       wg0/alice      12.5ms\n\
             ssh    tcp   198.19.0.11:22  down     wg0/xTIBA5rb…  12.5ms  connecting: Connection refused (os error 111)\n\
             web    tcp   198.19.0.11:22  pending  (no tunnel)    -\n"
        );
        assert_eq!(render_checks(&[]), "");
    }

    #[test]
    fn no_peers_says_so() {
        assert_eq!(render_table(&[]), "no peers\n");
    }

    /// Answers one request on a loopback port with `reply`; returns the endpoint.
    fn one_reply(reply: &'static str) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let address = listener.local_addr().expect("an address");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 1024];
                let _read = stream.read(&mut request);
                let _written = stream.write_all(reply.as_bytes());
            }
        });
        format!("http://{address}")
    }

    #[test]
    fn something_else_answering_is_a_bad_reply() {
        let not_found = one_reply("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let error = fetch_peers(&not_found).expect_err("a 404");
        assert!(matches!(error, StatusError::BadReply { .. }), "{error:?}");
        let html = one_reply("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>");
        let error = fetch_peers(&html).expect_err("not JSON");
        assert_eq!(error.to_string(), format!("{html} answered, but not with wgtel's peer list"));
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let error = fetch_peers("http://127.0.0.1:9").expect_err("nothing listens there");
        assert!(matches!(error, StatusError::NoDaemon { .. }));
        assert_eq!(
            error.to_string(),
            "no wgtel daemon answers at http://127.0.0.1:9 (start one with `wgtel run`)"
        );
    }
}
