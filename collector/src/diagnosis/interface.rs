//! Codes of an interface and of the host under it: `no_peer_route`, `unknown_sources`,
//! `udp_receive_errors`, `cpu_saturated`, `handshake_flood`.

use std::net::IpAddr;

use super::{
    DiagnosisConfig, Finding, InterfaceSample, Window, addresses::RecentAddresses, seconds,
};
use crate::model::{Code, InterfaceSnapshot};

/// Every interface-level rule.
pub(super) fn diagnose(
    config: &DiagnosisConfig,
    interface: &InterfaceSnapshot,
    window: &Window<'_, InterfaceSample>,
    recent: &RecentAddresses,
) -> Vec<Finding> {
    [
        no_peer_route(interface, window, &recent.destinations),
        handshake_flood(interface, recent),
        unknown_sources(interface, window),
        udp_receive_errors(interface, window),
        cpu_saturated(config, interface, window),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `no_peer_route`: packets routed into the interface that no peer's AllowedIPs accept.
///
/// Signals: the tunnel egress program's `no_peer` count (the longest-prefix match over the
/// interface's AllowedIPs found no peer), grown over the window, and the destinations of
/// those packets with the most packets over the last minute (the kernel's LRU map of them).
/// WireGuard drops such a packet without a trace: a route into the tunnel is wider than the
/// AllowedIPs behind it, or a peer lacks an AllowedIPs entry; the destinations say which.
fn no_peer_route(
    interface: &InterfaceSnapshot,
    window: &Window<'_, InterfaceSample>,
    top: &[(IpAddr, u64)],
) -> Option<Finding> {
    let dropped = window.growth(|s| s.no_peer);
    if dropped == 0 {
        return None;
    }
    let destinations = if top.is_empty() {
        String::new()
    } else {
        let named: Vec<String> =
            top.iter().map(|(address, packets)| format!("{address} ({packets})")).collect();
        format!("; top destinations in the last minute: {}", named.join(", "))
    };
    let evidence = format!(
        "{dropped} packets routed into {} in the last {} matched no peer's AllowedIPs \
         ({} since wgtel started): WireGuard dropped them{destinations}",
        interface.name,
        seconds(window.seconds),
        window.now.no_peer
    );
    let counters = [("drops.no_peer", dropped), ("drops.no_peer.total", window.now.no_peer)];
    Some(Finding::new(Code::NoPeerRoute, evidence, &counters))
}

/// `unknown_sources`: datagrams to the interface's listen port from no known peer endpoint
/// or session.
///
/// Signals: the underlay programs' unknown-source count, grown over the window: scans, a
/// peer that roamed before WireGuard learned its new endpoint, or a peer this interface does
/// not know.
fn unknown_sources(
    interface: &InterfaceSnapshot,
    window: &Window<'_, InterfaceSample>,
) -> Option<Finding> {
    let datagrams = window.growth(|s| s.unknown_source);
    if datagrams == 0 {
        return None;
    }
    let port = interface.listen_port.map_or_else(|| "-".to_owned(), |port| port.to_string());
    let evidence = format!(
        "{datagrams} datagrams to {} (port {port}) from no known peer endpoint in the last {}",
        interface.name,
        seconds(window.seconds)
    );
    let counters = [("underlay.unknown_source", datagrams)];
    Some(Finding::new(Code::UnknownSources, evidence, &counters))
}

/// `udp_receive_errors`: the sockets bound to the interface's listen port drop datagrams.
///
/// Signals: the drops of those sockets (`/proc/net/udp`, `udp6`: a full receive buffer,
/// mostly) grown over the window, and the namespace's `RcvbufErrors` beside them. Per socket,
/// so another application's full buffer (an iperf3 server's) is not WireGuard's: the host
/// drops WireGuard datagrams before WireGuard reads them (a userspace implementation that
/// cannot keep up, or a buffer too small for the rate).
fn udp_receive_errors(
    interface: &InterfaceSnapshot,
    window: &Window<'_, InterfaceSample>,
) -> Option<Finding> {
    let dropped = window.growth(|s| s.socket_drops.unwrap_or(0));
    if dropped == 0 || window.then.socket_drops.is_none() {
        return None;
    }
    let port = interface.listen_port.unwrap_or(0);
    let evidence = format!(
        "{dropped} datagrams to UDP port {port} dropped by the kernel before {} read them in the \
         last {} (socket receive buffer full; {} in all; RcvbufErrors of the namespace grew by \
         {}): raise the socket buffer (net.core.rmem_max) or give WireGuard more CPU",
        interface.name,
        seconds(window.seconds),
        window.now.socket_drops.unwrap_or(0),
        window.growth(|s| s.rcvbuf_errors)
    );
    let counters =
        [("udp.socket_drops", dropped), ("udp.rcvbuf_errors", window.growth(|s| s.rcvbuf_errors))];
    Some(Finding::new(Code::UdpReceiveErrors, evidence, &counters))
}

/// `cpu_saturated`: the host's CPUs were busy above `cpu-saturated` over the last interval.
///
/// Signals: the host's CPU utilization (`/proc/stat`: busy is neither idle nor iowait) of the
/// newest snapshot, the share of it in softirq (where the kernel moves packets, and where
/// kernel WireGuard encrypts) and the CPU of the interface's userspace WireGuard process. A
/// gateway out of CPU delays and drops WireGuard's packets whatever the tunnel's state; every
/// interface of the host carries the code, since each one suffers it.
fn cpu_saturated(
    config: &DiagnosisConfig,
    interface: &InterfaceSnapshot,
    window: &Window<'_, InterfaceSample>,
) -> Option<Finding> {
    let busy = window.now.cpu_busy.filter(|busy| *busy > config.cpu_saturated)?;
    let process = window.now.process_cpu.map_or_else(String::new, |cpu| {
        format!(", {}'s WireGuard process {:.0}% of a CPU", interface.name, cpu * 100.0)
    });
    let evidence = format!(
        "host CPU {:.1}% busy over the last interval, above the {:.0}% threshold (softirq \
         {:.1}%{process}): WireGuard's packets wait for CPU and queues overflow",
        busy * 100.0,
        config.cpu_saturated * 100.0,
        window.now.cpu_softirq * 100.0
    );
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a fraction 0..1 in per mille"
    )]
    let per_mille = |fraction: f64| (fraction * 1000.0).round() as u64;
    let mut counters = vec![
        ("cpu.busy_per_mille", per_mille(busy)),
        ("cpu.softirq_per_mille", per_mille(window.now.cpu_softirq)),
    ];
    if let Some(cpu) = window.now.process_cpu {
        counters.push(("process.cpu_per_mille", per_mille(cpu)));
    }
    Some(Finding::new(Code::CpuSaturated, evidence, &counters))
}

/// Fewest initiations from one source in the span for `handshake_flood` ...
const FLOOD_MIN: u64 = 20;

/// ... and fewest per second: a peer sends one at most every 5 s (WireGuard's `REKEY_TIMEOUT`),
/// so even 25 peers behind one NAT, all failing, stay below.
const FLOOD_PER_SECOND: f64 = 5.0;

/// `handshake_flood`: handshake initiations from one source address arrive far faster than
/// WireGuard ever sends them.
///
/// Signals: the underlay ingress program's count of initiations received on the interface's
/// port by source address (an LRU map of the 4,096 sources seen most recently), grown over the
/// last 10 s; the top source must have sent at least [`FLOOD_MIN`] and [`FLOOD_PER_SECOND`] per
/// second. A scan, a brute force, or a denial of service: WireGuard answers with cookies under
/// load, and the initiations cost it a Diffie-Hellman each when their MAC is valid.
fn handshake_flood(interface: &InterfaceSnapshot, recent: &RecentAddresses) -> Option<Finding> {
    let (source, count) = *recent.sources.first()?;
    let span = recent.sources_seconds;
    if count < FLOOD_MIN || span <= 0.0 || (count as f64) / span < FLOOD_PER_SECOND {
        return None;
    }
    let known = interface.peers.iter().find(|peer| peer.endpoint.is_some_and(|e| e.ip() == source));
    let whose = known.map_or_else(
        || "no peer's endpoint".to_owned(),
        |peer| format!("the endpoint address of {}", super::peer_label(peer)),
    );
    let others: Vec<String> = recent
        .sources
        .iter()
        .skip(1)
        .map(|(address, count)| format!("{address} ({count})"))
        .collect();
    let others =
        if others.is_empty() { String::new() } else { format!("; then {}", others.join(", ")) };
    let evidence = format!(
        "{count} handshake initiations from {source} ({whose}) to {} in the last {} ({:.0} per \
         second; a peer sends one at most every 5 s): a scan, a brute force or a flood{others}",
        interface.name,
        seconds(span),
        count as f64 / span
    );
    let counters = [("handshake_initiation.receive", count)];
    Some(Finding::new(Code::HandshakeFlood, evidence, &counters))
}
