//! `/metrics`: the Prometheus text exposition (format 0.0.4) of a [`Snapshot`].
//!
//! Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores, the unit
//! becomes a suffix (`By` -> `_bytes`, `s` -> `_seconds`; `{annotations}` are dropped), and
//! counters end in `_total`. Attribute names become labels the same way.
//!
//! Longer than most modules: it lists each metric family by hand, as `otlp.rs` does; one
//! descriptor table driving both (issue 14) is what shortens them.

use std::fmt::Write as _;

use collector_common::latency::LatencyKind;

use crate::model::{InterfaceSnapshot, PeerSnapshot, PeerState, SeriesPeer, Snapshot};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(256 + snapshot.peers().count() * 1024);
    let peers = || snapshot.series();

    family(
        &mut out,
        "wireguard_peer_io_bytes_total",
        "counter",
        "Bytes through the tunnel per peer, as WireGuard counts them.",
    );
    for (interface, peer) in peers() {
        for (direction, value) in [("receive", peer.rx_bytes), ("transmit", peer.tx_bytes)] {
            sample(
                &mut out,
                "wireguard_peer_io_bytes_total",
                &peer_labels(interface, &peer, &[("network_io_direction", direction)]),
                value as f64,
            );
        }
    }

    family(
        &mut out,
        "wireguard_peer_handshake_age_seconds",
        "gauge",
        "Seconds since the peer's last handshake; absent when there was none.",
    );
    for (interface, peer) in peers() {
        if let Some(age) = peer.last_handshake_seconds_ago {
            sample(
                &mut out,
                "wireguard_peer_handshake_age_seconds",
                &peer_labels(interface, &peer, &[]),
                age,
            );
        }
    }

    family(
        &mut out,
        "wireguard_peer_packets_total",
        "counter",
        "Inner packets through the tunnel per peer, counted by eBPF on the WireGuard interface.",
    );
    for (interface, peer) in peers() {
        for (direction, value) in [("receive", peer.rx_packets), ("transmit", peer.tx_packets)] {
            sample(
                &mut out,
                "wireguard_peer_packets_total",
                &peer_labels(interface, &peer, &[("network_io_direction", direction)]),
                value as f64,
            );
        }
    }

    family(
        &mut out,
        "wireguard_peer_drops_total",
        "counter",
        "Packets of a peer dropped, by reason.",
    );
    for (interface, peer) in peers() {
        // None when the kernel's drops are not counted: no series rather than zeros.
        for (reason, value) in peer.drops.iter().flatten() {
            sample(
                &mut out,
                "wireguard_peer_drops_total",
                &peer_labels(interface, &peer, &[("wireguard_drop_reason", reason)]),
                *value as f64,
            );
        }
    }

    family(
        &mut out,
        "wireguard_interface_drops_total",
        "counter",
        "Packets dropped on a WireGuard interface that no peer can be tied to, by reason.",
    );
    for interface in &snapshot.interfaces {
        for (reason, value) in &interface.drops {
            let labels = interface_labels(interface, &[("wireguard_drop_reason", reason)]);
            sample(&mut out, "wireguard_interface_drops_total", &labels, *value as f64);
        }
    }

    directional(
        &mut out,
        snapshot,
        "wireguard_peer_fragments_total",
        "Outer IP fragments of a peer's WireGuard datagrams on the underlay.",
        |peer| peer.underlay.fragments,
    );
    directional(
        &mut out,
        snapshot,
        "wireguard_peer_icmp_too_big_total",
        "ICMP fragmentation-needed / packet-too-big about a peer's datagrams.",
        |peer| peer.underlay.icmp_too_big,
    );
    directional(
        &mut out,
        snapshot,
        "wireguard_peer_icmp_unreachable_total",
        "ICMP destination unreachable (port, host, network, prohibited) about a peer's datagrams.",
        |peer| peer.underlay.icmp_unreachable,
    );

    family(
        &mut out,
        "wireguard_peer_path_mtu_bytes",
        "gauge",
        "The MTU the latest ICMP too-big message about a peer's datagrams reported.",
    );
    for (interface, peer) in peers() {
        if let Some(mtu) = peer.underlay.path_mtu {
            sample(
                &mut out,
                "wireguard_peer_path_mtu_bytes",
                &peer_labels(interface, &peer, &[]),
                f64::from(mtu),
            );
        }
    }

    family(
        &mut out,
        "wireguard_peer_handshake_unanswered",
        "gauge",
        "Handshake initiations sent to a peer that no response answered.",
    );
    for (interface, peer) in peers() {
        sample(
            &mut out,
            "wireguard_peer_handshake_unanswered",
            &peer_labels(interface, &peer, &[]),
            peer.underlay.unanswered_initiations as f64,
        );
    }

    family(
        &mut out,
        "wireguard_underlay_messages_total",
        "counter",
        "WireGuard messages on the underlay by type and direction.",
    );
    for (interface, peer) in peers() {
        for (kind, count) in &peer.underlay.messages {
            for (direction, value) in [("receive", count.receive), ("transmit", count.transmit)] {
                let labels = peer_labels(
                    interface,
                    &peer,
                    &[("wireguard_message_type", kind), ("network_io_direction", direction)],
                );
                sample(&mut out, "wireguard_underlay_messages_total", &labels, value as f64);
            }
        }
    }

    family(
        &mut out,
        "wireguard_underlay_unknown_source_total",
        "counter",
        "Datagrams to a WireGuard port from no known peer endpoint.",
    );
    for interface in &snapshot.interfaces {
        let labels = interface_labels(interface, &[]);
        sample(
            &mut out,
            "wireguard_underlay_unknown_source_total",
            &labels,
            interface.underlay_unknown_source as f64,
        );
    }

    family(
        &mut out,
        "wireguard_peers",
        "gauge",
        "Peers per interface by state (active: handshake within 180 s).",
    );
    for interface in &snapshot.interfaces {
        for state in PeerState::ALL {
            let count = interface.peers.iter().filter(|peer| peer.state == state).count();
            let labels = interface_labels(interface, &[("wireguard_peer_state", state.as_str())]);
            sample(&mut out, "wireguard_peers", &labels, count as f64);
        }
    }

    latency_histograms(
        &mut out,
        snapshot,
        "wireguard_peer_handshake_duration_seconds",
        "Handshake initiation to response, by this host's role.",
        &[
            (LatencyKind::HandshakeInitiator, "wireguard_handshake_role", "initiator"),
            (LatencyKind::HandshakeResponder, "wireguard_handshake_role", "responder"),
        ],
    );
    latency_histograms(
        &mut out,
        snapshot,
        "wireguard_peer_rtt_seconds",
        "Inner round trips through the tunnel (TCP SYN to SYN-ACK, ICMP echo), by kind.",
        &[
            (LatencyKind::TcpRoundTrip, "wireguard_rtt_kind", "tcp_round_trip"),
            (LatencyKind::TcpResponse, "wireguard_rtt_kind", "tcp_response"),
            (LatencyKind::IcmpRoundTrip, "wireguard_rtt_kind", "icmp_round_trip"),
        ],
    );
    family(
        &mut out,
        "wireguard_peer_rtt_jitter_seconds",
        "gauge",
        "Standard deviation of the last interval's latency samples, by kind.",
    );
    for (interface, peer) in peers() {
        for (kind, latency) in &peer.latency {
            if let Some(jitter) = latency.jitter {
                let labels = peer_labels(interface, &peer, &[("wireguard_rtt_kind", kind)]);
                sample(&mut out, "wireguard_peer_rtt_jitter_seconds", &labels, jitter);
            }
        }
    }
    family(
        &mut out,
        "wireguard_peer_probes_lost_total",
        "counter",
        "Round trips never answered (TCP SYNs, echo requests), by kind.",
    );
    for (interface, peer) in peers() {
        for (kind, latency) in &peer.latency {
            if latency.lost > 0 {
                let labels = peer_labels(interface, &peer, &[("wireguard_rtt_kind", kind)]);
                sample(&mut out, "wireguard_peer_probes_lost_total", &labels, latency.lost as f64);
            }
        }
    }

    family(
        &mut out,
        "wireguard_events_total",
        "counter",
        "Operational events by type since wgtel started.",
    );
    for (kind, count) in &snapshot.event_counts {
        sample(
            &mut out,
            "wireguard_events_total",
            &labels(&[("wireguard_event_type", kind)]),
            *count as f64,
        );
    }

    family(
        &mut out,
        "wgtel_series_aggregated_peers",
        "gauge",
        "Peers without series of their own (--top-peers, --peer-allowlist), summed into the otel_metric_overflow series.",
    );
    for interface in &snapshot.interfaces {
        if let Some(aggregated) = &interface.aggregated {
            let labels = interface_labels(interface, &[]);
            sample(&mut out, "wgtel_series_aggregated_peers", &labels, aggregated.count as f64);
        }
    }

    diagnosis(&mut out, snapshot);
    checks(&mut out, snapshot);

    family(&mut out, "wgtel_alerts", "gauge", "Alerts firing, by rule.");
    for rule in crate::rules::Rule::ALL {
        let count = snapshot.alerts.iter().filter(|alert| alert.rule == rule).count();
        sample(&mut out, "wgtel_alerts", &labels(&[("alert_rule", rule.as_str())]), count as f64);
    }

    host(&mut out, &snapshot.host);

    family(
        &mut out,
        "wgtel_collection_duration_seconds",
        "gauge",
        "How long wgtel's latest collection took.",
    );
    sample(&mut out, "wgtel_collection_duration_seconds", "", snapshot.collection_seconds);
    family(
        &mut out,
        "wgtel_ebpf_map_errors_total",
        "counter",
        "Inserts the eBPF programs could not make, by map (a full map loses that entry).",
    );
    for (map, count) in &snapshot.ebpf_map_errors {
        sample(&mut out, "wgtel_ebpf_map_errors_total", &labels(&[("map", map)]), *count as f64);
    }
    out
}

/// wgtel's tokio runtime: the tasks alive (the request being served among them), so that a
/// task leak shows as growth.
pub fn render_runtime(out: &mut String, alive_tasks: usize) {
    family(
        out,
        "wgtel_runtime_tasks",
        "gauge",
        "Tasks alive on wgtel's tokio runtime, the request serving this page among them.",
    );
    sample(out, "wgtel_runtime_tasks", "", alive_tasks as f64);
}

/// wgtel's own OTLP export: the latest export's wall time and the outcomes so far.
pub fn render_otlp_stats(out: &mut String, stats: &crate::export::otlp::ExportStats) {
    family(
        out,
        "wgtel_otlp_export_duration_seconds",
        "gauge",
        "The latest OTLP export: SDK collection, protobuf encoding, sending, the endpoint's answer.",
    );
    sample(out, "wgtel_otlp_export_duration_seconds", "", stats.last_seconds());
    family(out, "wgtel_otlp_exports_total", "counter", "OTLP exports by outcome.");
    let (succeeded, failed) = stats.outcomes();
    for (outcome, count) in [("success", succeeded), ("failure", failed)] {
        sample(out, "wgtel_otlp_exports_total", &labels(&[("outcome", outcome)]), count as f64);
    }
}

/// The alert webhook: changes sent, retried, refused, and dropped from a full queue.
pub fn render_webhook_stats(out: &mut String, stats: &crate::webhook::WebhookStats) {
    for (name, help, value) in [
        ("wgtel_webhook_sent_total", "Alert changes the webhook accepted.", stats.sent()),
        (
            "wgtel_webhook_failed_attempts_total",
            "Webhook POSTs that failed and were retried.",
            stats.failed_attempts(),
        ),
        (
            "wgtel_webhook_rejected_total",
            "Alert changes the webhook refused with a 4xx (not retried).",
            stats.rejected(),
        ),
        (
            "wgtel_webhook_dropped_total",
            "Alert changes dropped because the webhook queue was full.",
            stats.dropped(),
        ),
    ] {
        family(out, name, "counter", help);
        sample(out, name, "", value as f64);
    }
}

/// The host metrics, by the OpenTelemetry `system.*` and `process.*` conventions.
fn host(out: &mut String, host: &crate::host::HostSnapshot) {
    family(
        out,
        "system_cpu_utilization_ratio",
        "gauge",
        "CPU time by state over the last interval, all CPUs.",
    );
    for (state, value) in &host.cpu_utilization {
        sample(
            out,
            "system_cpu_utilization_ratio",
            &labels(&[("system_cpu_state", state)]),
            *value,
        );
    }
    family(out, "system_memory_usage_bytes", "gauge", "Memory by state.");
    for (state, value) in &host.memory_usage {
        sample(
            out,
            "system_memory_usage_bytes",
            &labels(&[("system_memory_state", state)]),
            *value as f64,
        );
    }
    for (window, value) in ["1m", "5m", "15m"].iter().zip(host.load_average) {
        let name = format!("system_cpu_load_average_{window}");
        family(out, &name, "gauge", "Load average.");
        sample(out, &name, "", value);
    }
    for (counter, unit, help, value) in crate::host::NetworkInterfaceCounters::COUNTERS {
        let name = match unit {
            "By" => format!("system_network_{counter}_bytes_total"),
            _ => format!("system_network_{counter}_total"),
        };
        let name = name.as_str();
        family(out, name, "counter", help);
        for interface in &host.network {
            let (receive, transmit) = value(interface);
            for (direction, count) in [("receive", receive), ("transmit", transmit)] {
                let labels = labels(&[
                    ("network_interface_name", &interface.name),
                    ("network_io_direction", direction),
                ]);
                sample(out, name, &labels, count as f64);
            }
        }
    }
    family(
        out,
        "system_network_udp_errors_total",
        "counter",
        "UDP errors (IPv4 and IPv6): a busy WireGuard host loses datagrams in receive_buffer first.",
    );
    for (kind, count) in [
        ("receive", host.udp.in_errors),
        ("receive_buffer", host.udp.rcvbuf_errors),
        ("send_buffer", host.udp.sndbuf_errors),
        ("no_port", host.udp.no_ports),
        ("checksum", host.udp.in_csum_errors),
    ] {
        sample(
            out,
            "system_network_udp_errors_total",
            &labels(&[("error_type", kind)]),
            count as f64,
        );
    }
    family(
        out,
        "system_network_softnet_dropped_total",
        "counter",
        "Packets dropped from full softnet backlogs, all CPUs.",
    );
    sample(out, "system_network_softnet_dropped_total", "", host.softnet.dropped as f64);
    family(
        out,
        "system_network_softnet_time_squeeze_total",
        "counter",
        "Times softirq processing ran out of budget, all CPUs.",
    );
    sample(out, "system_network_softnet_time_squeeze_total", "", host.softnet.time_squeeze as f64);
    family(
        out,
        "process_cpu_utilization_ratio",
        "gauge",
        "CPU of each userspace WireGuard process, fraction of one CPU.",
    );
    family(
        out,
        "process_memory_usage_bytes",
        "gauge",
        "Resident memory of each userspace WireGuard process.",
    );
    for process in &host.userspace_wireguard {
        let pid = process.pid.to_string();
        let interface = process.interface.as_deref().unwrap_or("");
        let labels = labels(&[
            ("process_pid", &pid),
            ("process_executable_name", &process.name),
            ("wireguard_interface", interface),
        ]);
        if let Some(cpu) = process.cpu_utilization {
            sample(out, "process_cpu_utilization_ratio", &labels, cpu);
        }
        sample(out, "process_memory_usage_bytes", &labels, process.rss_bytes as f64);
    }
}

/// A histogram family from the kernel's log2 buckets: `le` bounds are the buckets' upper
/// edges (2^(b+1) ns), up to the highest bucket with samples.
fn latency_histograms(
    out: &mut String,
    snapshot: &Snapshot,
    name: &str,
    help: &str,
    kinds: &[(LatencyKind, &str, &str)],
) {
    family(out, name, "histogram", help);
    for (interface, peer) in snapshot.series() {
        for (kind, label, value) in kinds {
            let Some(latency) = peer.latency.get(kind.as_str()).filter(|l| l.count > 0) else {
                continue;
            };
            let last = latency.buckets.iter().rposition(|count| *count > 0).unwrap_or(0);
            let mut cumulative = 0;
            for (bucket, count) in latency.buckets.iter().enumerate().take(last + 1) {
                cumulative += count;
                let le = format!("{}", (2u64 << bucket) as f64 / 1e9);
                let labels = peer_labels(interface, &peer, &[(label, value), ("le", &le)]);
                sample(out, &format!("{name}_bucket"), &labels, cumulative as f64);
            }
            let labels = peer_labels(interface, &peer, &[(label, value), ("le", "+Inf")]);
            sample(out, &format!("{name}_bucket"), &labels, latency.count as f64);
            let labels = peer_labels(interface, &peer, &[(label, value)]);
            sample(out, &format!("{name}_sum"), &labels, latency.sum_seconds);
            sample(out, &format!("{name}_count"), &labels, latency.count as f64);
        }
    }
}

/// A per-peer counter family by `network_io_direction`.
fn directional(
    out: &mut String,
    snapshot: &Snapshot,
    name: &str,
    help: &str,
    value: impl Fn(&PeerSnapshot) -> crate::model::Directional,
) {
    family(out, name, "counter", help);
    for (interface, peer) in snapshot.series() {
        let counts = value(peer.peer);
        for (direction, count) in [("receive", counts.receive), ("transmit", counts.transmit)] {
            let labels = peer_labels(interface, &peer, &[("network_io_direction", direction)]);
            sample(out, name, &labels, count as f64);
        }
    }
}

/// `wireguard_peer_diagnosis` and `wireguard_interface_diagnosis`: 1 for each code holding.
fn diagnosis(out: &mut String, snapshot: &Snapshot) {
    for (metric, help, peers) in [
        ("wireguard_peer_diagnosis", "1 while the diagnosis code holds for the peer.", true),
        (
            "wireguard_interface_diagnosis",
            "1 while the diagnosis code holds for the interface.",
            false,
        ),
    ] {
        family(out, metric, "gauge", help);
        for diagnosis in snapshot.diagnoses.iter().filter(|d| d.peer.is_some() == peers) {
            let key = diagnosis.peer.map(|key| key.to_string());
            let name = diagnosis.peer.and_then(|key| {
                snapshot
                    .peers()
                    .find(|(i, p)| i.name == diagnosis.interface && p.public_key == key)
                    .and_then(|(_, peer)| peer.name.clone())
            });
            let mut pairs = vec![("wireguard_interface", diagnosis.interface.as_str())];
            if let Some(key) = &key {
                pairs.push(("wireguard_peer_public_key", key));
            }
            if let Some(name) = &name {
                pairs.push(("wireguard_peer_name", name));
            }
            pairs.push(("wireguard_diagnosis_code", diagnosis.diagnosis.code.as_str()));
            sample(out, metric, &labels(&pairs), 1.0);
        }
    }
}

/// `wireguard_check_up` (absent before a check's first run) and
/// `wireguard_check_duration_seconds`, with the check's name and kind and the attributes of
/// the peer that carries it (none when no tunnel does).
fn checks(out: &mut String, snapshot: &Snapshot) {
    let check_labels = |check: &crate::checks::CheckResult, extra: &[(&str, &str)]| {
        let key = check.peer_public_key.map(|key| key.to_string());
        let mut pairs = vec![
            ("wireguard_check_name", check.name.as_str()),
            ("wireguard_check_kind", check.kind.as_str()),
        ];
        if let Some(interface) = &check.interface {
            pairs.push(("wireguard_interface", interface));
        }
        if let Some(key) = &key {
            pairs.push(("wireguard_peer_public_key", key));
        }
        if let Some(name) = &check.peer_name {
            pairs.push(("wireguard_peer_name", name));
        }
        pairs.extend_from_slice(extra);
        labels(&pairs)
    };
    family(
        out,
        "wireguard_check_up",
        "gauge",
        "1 when the check's latest run succeeded, 0 when it failed.",
    );
    for check in &snapshot.checks {
        if let Some(up) = check.up {
            sample(
                out,
                "wireguard_check_up",
                &check_labels(check, &[]),
                if up { 1.0 } else { 0.0 },
            );
        }
    }
    let name = "wireguard_check_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "How long each run of the check took (a failed run: until it failed).",
    );
    for check in &snapshot.checks {
        let mut cumulative = 0;
        for (index, count) in check.buckets.iter().enumerate() {
            cumulative += count;
            let bound = crate::checks::DURATION_BOUNDS
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            sample(
                out,
                &format!("{name}_bucket"),
                &check_labels(check, &[("le", &bound)]),
                cumulative as f64,
            );
        }
        sample(out, &format!("{name}_sum"), &check_labels(check, &[]), check.duration_sum_seconds);
        sample(out, &format!("{name}_count"), &check_labels(check, &[]), check.runs as f64);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _infallible = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _infallible = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    };
}

/// The labels every peer metric carries, then `extra`. The sum of the peers without series
/// of their own carries the interface and `otel_metric_overflow="true"` instead of a key.
fn peer_labels(
    interface: &InterfaceSnapshot,
    peer: &SeriesPeer<'_>,
    extra: &[(&str, &str)],
) -> String {
    let key = peer.public_key.to_string();
    let mut pairs = interface_pairs(interface);
    if peer.aggregated.is_some() {
        pairs.push(("otel_metric_overflow", "true"));
    } else {
        pairs.push(("wireguard_peer_public_key", &key));
    }
    if let Some(name) = &peer.name {
        pairs.push(("wireguard_peer_name", name));
    }
    pairs.extend_from_slice(extra);
    labels(&pairs)
}

/// The labels that name `interface`: `wireguard_interface`, and `wireguard_netns` outside the
/// start namespace.
fn interface_pairs(interface: &InterfaceSnapshot) -> Vec<(&str, &str)> {
    let mut pairs = vec![("wireguard_interface", interface.name.as_str())];
    if let Some(netns) = &interface.netns {
        pairs.push(("wireguard_netns", netns));
    }
    pairs
}

/// The labels that name `interface`, then `extra`.
fn interface_labels(interface: &InterfaceSnapshot, extra: &[(&str, &str)]) -> String {
    let mut pairs = interface_pairs(interface);
    pairs.extend_from_slice(extra);
    labels(&pairs)
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        model::DROP_REASON_NO_PEER,
        wg::{Implementation, PublicKey},
    };

    /// A gateway with one named, active peer and one peer that never had a handshake.
    pub(crate) fn snapshot() -> Snapshot {
        let peer = |key: u8, name: Option<&str>, age: Option<f64>| PeerSnapshot {
            public_key: PublicKey([key; 32]),
            name: name.map(str::to_owned),
            endpoint: Some("198.18.1.10:51820".parse().expect("an endpoint")),
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            last_handshake_seconds_ago: age,
            last_handshake_unix: age.map(|age| 1_796_000_000.0 - age),
            state: PeerState::from_handshake_age(age),
            health: crate::model::PeerHealth::judge(PeerState::from_handshake_age(age), false),
            rx_bytes: 1000,
            tx_bytes: 2000,
            rx_packets: 50,
            tx_packets: 51,
            rx_bytes_per_second: 10.0,
            tx_bytes_per_second: 20.5,
            drops: Some(BTreeMap::new()),
            underlay: crate::model::PeerUnderlaySnapshot::default(),
            latency: BTreeMap::new(),
        };
        Snapshot {
            taken_at: SystemTime::UNIX_EPOCH,
            collection_seconds: 0.25,
            events: Vec::new(),
            event_counts: BTreeMap::from([("peer_added".to_owned(), 2)]),
            host: crate::host::HostSnapshot::default(),
            alerts: Vec::new(),
            ebpf_map_errors: vec![("SESSIONS", 0), ("DROPS", 4)],
            unavailable: Vec::new(),
            diagnoses: Vec::new(),
            checks: Vec::new(),
            interfaces: vec![InterfaceSnapshot {
                netns: None,
                name: "wg0".into(),
                ifindex: 7,
                implementation: Implementation::WireguardGo,
                listen_port: Some(51820),
                fwmark: None,
                public_key: Some(PublicKey([9; 32])),
                drops: BTreeMap::from([(DROP_REASON_NO_PEER.to_owned(), 3)]),
                allowed_ip_entries: 2,
                no_peer_destinations: Vec::new(),
                initiation_sources: Vec::new(),
                underlay_unknown_source: 0,
                udp_socket_drops: None,
                ipv4_forwarding: None,
                ipv6_forwarding: None,
                peers: vec![peer(1, Some("al\"ice\\"), Some(12.5)), peer(2, None, None)],
                aggregated: None,
            }],
        }
    }

    #[test]
    fn renders_every_family_with_exact_samples() {
        let text = render(&snapshot());
        let alice = PublicKey([1; 32]).to_string();
        let never = PublicKey([2; 32]).to_string();
        for line in [
            "# TYPE wireguard_peer_io_bytes_total counter".to_owned(),
            format!(r#"wireguard_peer_io_bytes_total{{wireguard_interface="wg0",wireguard_peer_public_key="{alice}",wireguard_peer_name="al\"ice\\",network_io_direction="receive"}} 1000"#),
            "# TYPE wgtel_ebpf_map_errors_total counter".to_owned(),
            r#"wgtel_ebpf_map_errors_total{map="DROPS"} 4"#.to_owned(),
            r#"wgtel_ebpf_map_errors_total{map="SESSIONS"} 0"#.to_owned(),
            format!(r#"wireguard_peer_packets_total{{wireguard_interface="wg0",wireguard_peer_public_key="{never}",network_io_direction="transmit"}} 51"#),
            format!(r#"wireguard_peer_handshake_age_seconds{{wireguard_interface="wg0",wireguard_peer_public_key="{alice}",wireguard_peer_name="al\"ice\\"}} 12.5"#),
            r#"wireguard_interface_drops_total{wireguard_interface="wg0",wireguard_drop_reason="no_peer"} 3"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="active"} 1"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="stale"} 0"#.to_owned(),
            r#"wireguard_peers{wireguard_interface="wg0",wireguard_peer_state="never"} 1"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\nin\n{text}");
        }
        // No handshake, no age sample.
        assert_eq!(text.matches("wireguard_peer_handshake_age_seconds{").count(), 1);
    }
}
