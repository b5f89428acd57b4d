//! `wgtel explain PEER`: every diagnosis code of one peer with its evidence and the counters
//! behind it, read from a running daemon's HTTP API; the codes of its interface too.

use std::fmt::Write as _;

use crate::{
    export::api::{ApiInterface, ApiPeer},
    model::Diagnosis,
    status::{StatusError, fetch_interfaces, fetch_peers},
};

/// Flags of `wgtel explain`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExplainArgs {
    /// The peer: its name, its public key, or the start of its public key.
    pub peer: String,
    /// Only peers of this WireGuard interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// The daemon's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:9587", value_name = "URL")]
    pub endpoint: String,
}

/// Why `wgtel explain` could not explain the peer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Daemon(#[from] StatusError),
    /// No peer has that name, key or key prefix.
    #[error("no peer is named {0:?} or has a public key starting with it")]
    NoSuchPeer(String),
    /// More than one peer matches.
    #[error("{peer:?} matches {} peers: {}; give more of the key or --interface", .matches.len(), .matches.join(", "))]
    Ambiguous {
        /// What was asked.
        peer: String,
        /// `interface:key (name)` of each match.
        matches: Vec<String>,
    },
}

/// Prints the explanation of `args.peer`.
pub fn run(args: &ExplainArgs) -> Result<(), ExplainError> {
    let peers = fetch_peers(&args.endpoint)?;
    let interfaces = fetch_interfaces(&args.endpoint)?;
    let peer = find(&peers, &args.peer, args.interface.as_deref())?;
    let interface = interfaces.iter().find(|interface| interface.name == peer.interface);
    print!("{}", render(peer, interface));
    Ok(())
}

/// The one peer that `wanted` names (exact name or key first, else a key prefix).
pub fn find<'a>(
    peers: &'a [ApiPeer],
    wanted: &str,
    interface: Option<&str>,
) -> Result<&'a ApiPeer, ExplainError> {
    let candidates: Vec<&ApiPeer> =
        peers.iter().filter(|peer| interface.is_none_or(|name| peer.interface == name)).collect();
    let exact: Vec<&ApiPeer> = candidates
        .iter()
        .copied()
        .filter(|peer| peer.name.as_deref() == Some(wanted) || peer.public_key == wanted)
        .collect();
    let matches = if exact.is_empty() {
        candidates.into_iter().filter(|peer| peer.public_key.starts_with(wanted)).collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [] => Err(ExplainError::NoSuchPeer(wanted.to_owned())),
        [peer] => Ok(peer),
        more => Err(ExplainError::Ambiguous {
            peer: wanted.to_owned(),
            matches: more
                .iter()
                .map(|peer| {
                    let name = peer.name.as_ref().map_or_else(String::new, |n| format!(" ({n})"));
                    format!("{}:{}{name}", peer.interface, peer.public_key)
                })
                .collect(),
        }),
    }
}

/// The explanation: who the peer is, each code with its evidence and counters, then the
/// interface's codes.
pub fn render(peer: &ApiPeer, interface: Option<&ApiInterface>) -> String {
    let mut out = String::new();
    let name = peer.name.as_ref().map_or_else(String::new, |name| format!("{name} "));
    let endpoint = peer.endpoint.as_deref().unwrap_or("no endpoint");
    let _infallible = writeln!(
        out,
        "{name}{} on {}, {endpoint}, health {}",
        peer.public_key, peer.interface, peer.health
    );
    if peer.diagnosis.is_empty() {
        out.push_str("no diagnosis: nothing wrong found\n");
    }
    for diagnosis in &peer.diagnosis {
        code(&mut out, diagnosis);
    }
    if let Some(interface) = interface.filter(|interface| !interface.diagnosis.is_empty()) {
        let _infallible = writeln!(out, "interface {}:", interface.name);
        for diagnosis in &interface.diagnosis {
            code(&mut out, diagnosis);
        }
    }
    out
}

fn code(out: &mut String, diagnosis: &Diagnosis) {
    let since = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(diagnosis.since.max(0.0)),
    );
    let _infallible = writeln!(out, "{} (since {since})", diagnosis.code.as_str());
    let _infallible = writeln!(out, "  evidence: {}", diagnosis.evidence);
    if !diagnosis.counters.is_empty() {
        let counters: Vec<String> =
            diagnosis.counters.iter().map(|(name, value)| format!("{name} {value}")).collect();
        let _infallible = writeln!(out, "  counters: {}", counters.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Code;

    fn peer(interface: &str, key: &str, name: Option<&str>) -> ApiPeer {
        let json = serde_json::json!({
            "interface": interface, "public_key": key, "name": name, "endpoint": "198.18.1.11:51820",
            "allowed_ips": [], "persistent_keepalive": null, "last_handshake_seconds_ago": null,
            "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0,
            "rx_bytes_per_second": 0.0, "tx_bytes_per_second": 0.0, "drops": {},
            "fragments": {"receive": 0, "transmit": 0}, "messages": {},
            "unanswered_initiations": 0, "icmp_too_big": {"receive": 0, "transmit": 0},
            "icmp_unreachable": {"receive": 0, "transmit": 0},
            "path_mtu": null, "handshake_rtt_ms": null, "handshake_response_ms": null,
            "icmp_rtt_ms": null, "tcp_response_ms": null, "tcp_rtt_ms": null, "health": "broken",
        });
        serde_json::from_value(json).expect("a peer")
    }

    #[test]
    fn a_peer_is_found_by_name_key_or_unique_key_prefix() {
        let peers = [
            peer("wg0", "AAAAkey1=", Some("alice")),
            peer("wg0", "AAABkey2=", None),
            peer("wg1", "AAAAkey1=", Some("alice")),
        ];
        assert_eq!(find(&peers, "AAAB", None).expect("unique").public_key, "AAABkey2=");
        assert_eq!(find(&peers, "alice", Some("wg1")).expect("on wg1").interface, "wg1");
        assert!(matches!(find(&peers, "carol", None), Err(ExplainError::NoSuchPeer(_))));
        let Err(ExplainError::Ambiguous { matches, .. }) = find(&peers, "AAA", Some("wg0")) else {
            panic!("two peers start with AAA on wg0");
        };
        assert_eq!(matches, ["wg0:AAAAkey1= (alice)", "wg0:AAABkey2="]);
    }

    #[test]
    fn every_code_is_printed_with_its_evidence_and_counters() {
        let mut broken = peer("wg0", "AAAAkey1=", Some("carol"));
        broken.diagnosis = vec![Diagnosis {
            code: Code::HandshakeUnanswered,
            since: 1_800_000_000.0,
            evidence: "3 handshake initiations sent, none answered".into(),
            counters: BTreeMap::from([("handshake_initiation.transmit".to_owned(), 3.0)]),
        }];
        assert_eq!(
            render(&broken, None),
            "carol AAAAkey1= on wg0, 198.18.1.11:51820, health broken\n\
             handshake_unanswered (since 2027-01-15T08:00:00Z)\n  \
             evidence: 3 handshake initiations sent, none answered\n  \
             counters: handshake_initiation.transmit 3\n"
        );
        assert_eq!(
            render(&peer("wg0", "B=", None), None),
            "B= on wg0, 198.18.1.11:51820, health broken\nno diagnosis: nothing wrong found\n"
        );
    }
}
