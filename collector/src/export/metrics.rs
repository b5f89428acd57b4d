//! The one description of every metric wgtel exports: [`METRICS`].
//!
//! Each [`Metric`] names the metric (the OpenTelemetry name and the Prometheus family it
//! becomes), its instrument, unit, description and attributes, and how to read its points
//! from a [`Snapshot`]. `/metrics` ([`super::prometheus`]), the OTLP request
//! ([`super::otlp_encode`]) and the README's metric table (checked by a test) are all driven
//! by this table, so they cannot drift apart.
//!
//! Points are handed to a [`PointSink`] one at a time, with the [`Subject`] they describe (a
//! peer, an interface, a check, a process...) and their own attributes, borrowed from the
//! snapshot: reading a metric allocates nothing per point.
//!
//! Longer than most modules: it is the table itself, one entry and one reader per metric.

use collector_common::latency::{LATENCY_BUCKETS, LatencyKind};

use crate::{
    checks::{CheckResult, DURATION_BOUNDS},
    host::{NetworkInterfaceCounters, ProcessUsage},
    model::{Directional, InterfaceSnapshot, PeerSnapshot, PeerState, SeriesPeer, Snapshot},
    wg::PublicKey,
};

/// How a metric's points are aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    /// A monotonic sum, cumulative since the series' start.
    Counter,
    /// The current value.
    Gauge,
    /// Bucket counts, their sum and count, cumulative since the series' start.
    Histogram,
}

impl Instrument {
    /// Its name, as the README and Prometheus' `# TYPE` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// What a point describes; its attributes come first, then the point's own.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// The host or wgtel itself: no attributes.
    Host,
    /// A WireGuard interface: `wireguard.interface` (then `wireguard.netns` outside the start
    /// namespace).
    Interface(&'a InterfaceSnapshot),
    /// A peer of `interface`: the interface's attributes, then `wireguard.peer.public_key` (or,
    /// for the sum of the peers without series of their own, `otel.metric.overflow = true`),
    /// then `wireguard.peer.name` when known.
    Peer {
        /// The peer's interface.
        interface: &'a InterfaceSnapshot,
        /// The peer's key; `None` for the overflow sum.
        key: Option<&'a PublicKey>,
        /// The peer's friendly name.
        name: Option<&'a str>,
    },
    /// A synthetic check: `wireguard.check.name`, `wireguard.check.kind`, then the attributes
    /// of the peer whose tunnel carries it, if one does.
    Check(&'a CheckResult),
    /// A userspace WireGuard process: `process.pid`, `process.executable.name`, and
    /// `wireguard.interface` when known.
    Process(&'a ProcessUsage),
}

impl<'a> Subject<'a> {
    /// The subject of a peer's series.
    pub fn peer(interface: &'a InterfaceSnapshot, peer: &SeriesPeer<'a>) -> Self {
        let identity: &'a PeerSnapshot = peer.peer;
        Self::Peer {
            interface,
            key: peer.aggregated.is_none().then_some(&identity.public_key),
            name: identity.name.as_deref(),
        }
    }
}

/// A bucketed distribution: `counts[i]` samples fell at or below `bounds[i]` and above the
/// previous bound; the last count (one more than `bounds`) is the overflow.
#[derive(Clone, Copy, Debug)]
pub struct Distribution<'a> {
    /// Upper bounds of the buckets, ascending, in the metric's unit.
    pub bounds: &'a [f64],
    /// Samples per bucket (not cumulative), `bounds.len() + 1` of them.
    pub counts: &'a [u64],
    /// Sum of the samples.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
}

/// A point's value.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// An integer (counters, most gauges).
    Int(u64),
    /// A floating-point gauge.
    Double(f64),
    /// A histogram.
    Histogram(Distribution<'a>),
}

/// Where [`Metric::read`] puts the points.
pub trait PointSink {
    /// One point of the metric being read.
    fn point(
        &mut self,
        subject: Subject<'_>,
        attributes: &[(&'static str, &str)],
        value: Value<'_>,
    );
}

/// One metric.
#[derive(Debug)]
pub struct Metric {
    /// The OpenTelemetry name.
    pub name: &'static str,
    /// The Prometheus family (the OpenTelemetry name translated: dots to underscores, the
    /// unit as a suffix, `_total` on counters).
    pub prometheus: &'static str,
    /// The instrument.
    pub instrument: Instrument,
    /// The UCUM unit.
    pub unit: &'static str,
    /// What it measures.
    pub description: &'static str,
    /// The attributes of its points beyond those of their subject, as the README lists them.
    pub attributes: &'static str,
    /// Reads its points from a snapshot.
    pub read: fn(&Snapshot, &mut dyn PointSink),
}

const DIRECTIONS: &str = "`network.io.direction` (`receive`, `transmit`)";

/// Every metric, in the order of `/metrics`.
pub static METRICS: &[Metric] = &[
    Metric {
        name: "wireguard.peer.io",
        prometheus: "wireguard_peer_io_bytes_total",
        instrument: Instrument::Counter,
        unit: "By",
        description: "Bytes through the tunnel per peer, as WireGuard counts them",
        attributes: DIRECTIONS,
        read: |s, sink| {
            directional(s, sink, |p| Directional { receive: p.rx_bytes, transmit: p.tx_bytes });
        },
    },
    Metric {
        name: "wireguard.peer.handshake.age",
        prometheus: "wireguard_peer_handshake_age_seconds",
        instrument: Instrument::Gauge,
        unit: "s",
        description: "Seconds since the peer's last handshake; absent when there was none",
        attributes: "",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                if let Some(age) = peer.last_handshake_seconds_ago {
                    sink.point(Subject::peer(interface, &peer), &[], Value::Double(age));
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.packets",
        prometheus: "wireguard_peer_packets_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Inner packets through the tunnel per peer, counted by eBPF on the WireGuard interface",
        attributes: DIRECTIONS,
        read: |s, sink| {
            directional(s, sink, |p| Directional { receive: p.rx_packets, transmit: p.tx_packets });
        },
    },
    Metric {
        name: "wireguard.peer.drops",
        prometheus: "wireguard_peer_drops_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Packets of a peer dropped, by reason",
        attributes: "`wireguard.drop.reason` (`NETFILTER_DROP`, ...; `unknown` before 5.17); no points when the kernel's drops are not counted",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                // None when the kernel's drops are not counted: no points rather than zeros.
                for (reason, count) in peer.drops.iter().flatten() {
                    let attributes = [("wireguard.drop.reason", reason.as_str())];
                    sink.point(Subject::peer(interface, &peer), &attributes, Value::Int(*count));
                }
            }
        },
    },
    Metric {
        name: "wireguard.interface.drops",
        prometheus: "wireguard_interface_drops_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Packets dropped on a WireGuard interface that no peer can be tied to, by reason",
        attributes: "`wireguard.drop.reason` (interface only)",
        read: |s, sink| {
            for interface in &s.interfaces {
                for (reason, count) in &interface.drops {
                    let attributes = [("wireguard.drop.reason", reason.as_str())];
                    sink.point(Subject::Interface(interface), &attributes, Value::Int(*count));
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.fragments",
        prometheus: "wireguard_peer_fragments_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Outer IP fragments of a peer's WireGuard datagrams on the underlay",
        attributes: DIRECTIONS,
        read: |s, sink| directional(s, sink, |p| p.underlay.fragments),
    },
    Metric {
        name: "wireguard.peer.icmp.too_big",
        prometheus: "wireguard_peer_icmp_too_big_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "ICMP fragmentation-needed / packet-too-big about a peer's datagrams",
        attributes: DIRECTIONS,
        read: |s, sink| directional(s, sink, |p| p.underlay.icmp_too_big),
    },
    Metric {
        name: "wireguard.peer.icmp.unreachable",
        prometheus: "wireguard_peer_icmp_unreachable_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "ICMP destination unreachable (port, host, network, prohibited) about a peer's datagrams",
        attributes: DIRECTIONS,
        read: |s, sink| directional(s, sink, |p| p.underlay.icmp_unreachable),
    },
    Metric {
        name: "wireguard.peer.path.mtu",
        prometheus: "wireguard_peer_path_mtu_bytes",
        instrument: Instrument::Gauge,
        unit: "By",
        description: "The MTU the latest ICMP too-big message about a peer's datagrams reported",
        attributes: "",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                if let Some(mtu) = peer.underlay.path_mtu {
                    sink.point(Subject::peer(interface, &peer), &[], Value::Int(u64::from(mtu)));
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.handshake.unanswered",
        prometheus: "wireguard_peer_handshake_unanswered",
        instrument: Instrument::Gauge,
        unit: "{initiation}",
        description: "Handshake initiations sent to a peer that no response answered",
        attributes: "",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                let unanswered = Value::Int(peer.underlay.unanswered_initiations);
                sink.point(Subject::peer(interface, &peer), &[], unanswered);
            }
        },
    },
    Metric {
        name: "wireguard.underlay.messages",
        prometheus: "wireguard_underlay_messages_total",
        instrument: Instrument::Counter,
        unit: "{message}",
        description: "WireGuard messages on the underlay by type and direction",
        attributes: "`wireguard.message.type`, `network.io.direction`",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                for (_, kind, count) in peer.underlay.messages.iter() {
                    for (direction, value) in
                        [("receive", count.receive), ("transmit", count.transmit)]
                    {
                        let attributes =
                            [("wireguard.message.type", kind), ("network.io.direction", direction)];
                        sink.point(Subject::peer(interface, &peer), &attributes, Value::Int(value));
                    }
                }
            }
        },
    },
    Metric {
        name: "wireguard.underlay.unknown_source",
        prometheus: "wireguard_underlay_unknown_source_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Datagrams to a WireGuard port from no known peer endpoint",
        attributes: "(interface only)",
        read: |s, sink| {
            for interface in &s.interfaces {
                let value = Value::Int(interface.underlay_unknown_source);
                sink.point(Subject::Interface(interface), &[], value);
            }
        },
    },
    Metric {
        name: "wireguard.peers",
        prometheus: "wireguard_peers",
        instrument: Instrument::Gauge,
        unit: "{peer}",
        description: "Peers per interface by state (active: handshake within 180 s)",
        attributes: "`wireguard.peer.state` (interface only)",
        read: |s, sink| {
            for interface in &s.interfaces {
                for state in PeerState::ALL {
                    let count = interface.peers.iter().filter(|peer| peer.state == state).count();
                    let attributes = [("wireguard.peer.state", state.as_str())];
                    sink.point(
                        Subject::Interface(interface),
                        &attributes,
                        Value::Int(count as u64),
                    );
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.handshake.duration",
        prometheus: "wireguard_peer_handshake_duration_seconds",
        instrument: Instrument::Histogram,
        unit: "s",
        description: "Handshake initiation to response, by this host's role",
        attributes: "`wireguard.handshake.role` (`initiator`, `responder`); the kernel's log2 buckets",
        read: |s, sink| {
            latency(
                s,
                sink,
                &[
                    (LatencyKind::HandshakeInitiator, "wireguard.handshake.role", "initiator"),
                    (LatencyKind::HandshakeResponder, "wireguard.handshake.role", "responder"),
                ],
            );
        },
    },
    Metric {
        name: "wireguard.peer.rtt",
        prometheus: "wireguard_peer_rtt_seconds",
        instrument: Instrument::Histogram,
        unit: "s",
        description: "Inner round trips through the tunnel (TCP SYN to SYN-ACK, ICMP echo), by kind",
        attributes: "`wireguard.rtt.kind` (`tcp_round_trip`, `tcp_response`, `icmp_round_trip`); the kernel's log2 buckets",
        read: |s, sink| {
            latency(
                s,
                sink,
                &[
                    (LatencyKind::TcpRoundTrip, "wireguard.rtt.kind", "tcp_round_trip"),
                    (LatencyKind::TcpResponse, "wireguard.rtt.kind", "tcp_response"),
                    (LatencyKind::IcmpRoundTrip, "wireguard.rtt.kind", "icmp_round_trip"),
                ],
            );
        },
    },
    Metric {
        name: "wireguard.peer.rtt.jitter",
        prometheus: "wireguard_peer_rtt_jitter_seconds",
        instrument: Instrument::Gauge,
        unit: "s",
        description: "Standard deviation of the last interval's latency samples, by kind",
        attributes: "`wireguard.rtt.kind`",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                for (kind, latency) in &peer.latency {
                    if let Some(jitter) = latency.jitter {
                        let attributes = [("wireguard.rtt.kind", *kind)];
                        sink.point(
                            Subject::peer(interface, &peer),
                            &attributes,
                            Value::Double(jitter),
                        );
                    }
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.probes.lost",
        prometheus: "wireguard_peer_probes_lost_total",
        instrument: Instrument::Counter,
        unit: "{probe}",
        description: "Round trips never answered (TCP SYNs, echo requests), by kind",
        attributes: "`wireguard.rtt.kind`; absent until one is lost",
        read: |s, sink| {
            for (interface, peer) in s.series() {
                for (kind, latency) in &peer.latency {
                    if latency.lost > 0 {
                        let attributes = [("wireguard.rtt.kind", *kind)];
                        let value = Value::Int(latency.lost);
                        sink.point(Subject::peer(interface, &peer), &attributes, value);
                    }
                }
            }
        },
    },
    Metric {
        name: "wireguard.events",
        prometheus: "wireguard_events_total",
        instrument: Instrument::Counter,
        unit: "{event}",
        description: "Operational events by type since wgtel started",
        attributes: "`wireguard.event.type`",
        read: |s, sink| {
            for (kind, count) in &s.event_counts {
                let attributes = [("wireguard.event.type", kind.as_str())];
                sink.point(Subject::Host, &attributes, Value::Int(*count));
            }
        },
    },
    Metric {
        name: "wgtel.series.aggregated_peers",
        prometheus: "wgtel_series_aggregated_peers",
        instrument: Instrument::Gauge,
        unit: "{peer}",
        description: "Peers without series of their own (--top-peers, --peer-allowlist), summed into the otel.metric.overflow series",
        attributes: "(interface only)",
        read: |s, sink| {
            for interface in &s.interfaces {
                if let Some(aggregated) = &interface.aggregated {
                    let value = Value::Int(aggregated.count as u64);
                    sink.point(Subject::Interface(interface), &[], value);
                }
            }
        },
    },
    Metric {
        name: "wireguard.peer.diagnosis",
        prometheus: "wireguard_peer_diagnosis",
        instrument: Instrument::Gauge,
        unit: "1",
        description: "1 while the diagnosis code holds for the peer",
        attributes: "`wireguard.diagnosis.code`; absent while the code does not hold",
        read: |s, sink| diagnosis(s, sink, true),
    },
    Metric {
        name: "wireguard.interface.diagnosis",
        prometheus: "wireguard_interface_diagnosis",
        instrument: Instrument::Gauge,
        unit: "1",
        description: "1 while the diagnosis code holds for the interface",
        attributes: "`wireguard.diagnosis.code` (interface only)",
        read: |s, sink| diagnosis(s, sink, false),
    },
    Metric {
        name: "wireguard.check.up",
        prometheus: "wireguard_check_up",
        instrument: Instrument::Gauge,
        unit: "1",
        description: "1 when the check's latest run succeeded, 0 when it failed",
        attributes: "`wireguard.check.name`, `wireguard.check.kind`, and the peer's attributes when a tunnel carries the check; absent before its first run",
        read: |s, sink| {
            for check in &s.checks {
                if let Some(up) = check.up {
                    sink.point(Subject::Check(check), &[], Value::Int(u64::from(up)));
                }
            }
        },
    },
    Metric {
        name: "wireguard.check.duration",
        prometheus: "wireguard_check_duration_seconds",
        instrument: Instrument::Histogram,
        unit: "s",
        description: "How long each run of the check took (a failed run: until it failed)",
        attributes: "the same as `wireguard.check.up`; buckets 1 ms to 5 s",
        read: |s, sink| {
            for check in &s.checks {
                let distribution = Distribution {
                    bounds: &DURATION_BOUNDS,
                    counts: &check.buckets,
                    sum: check.duration_sum_seconds,
                    count: check.runs,
                };
                sink.point(Subject::Check(check), &[], Value::Histogram(distribution));
            }
        },
    },
    Metric {
        name: "wgtel.alerts",
        prometheus: "wgtel_alerts",
        instrument: Instrument::Gauge,
        unit: "{alert}",
        description: "Alerts firing, by rule",
        attributes: "`alert.rule`",
        read: |s, sink| {
            for rule in crate::rules::Rule::ALL {
                let count = s.alerts.iter().filter(|alert| alert.rule == rule).count();
                let attributes = [("alert.rule", rule.as_str())];
                sink.point(Subject::Host, &attributes, Value::Int(count as u64));
            }
        },
    },
    Metric {
        name: "system.cpu.utilization",
        prometheus: "system_cpu_utilization_ratio",
        instrument: Instrument::Gauge,
        unit: "1",
        description: "CPU time by state over the last interval, all CPUs",
        attributes: "`system.cpu.state`",
        read: |s, sink| {
            for (state, value) in &s.host.cpu_utilization {
                sink.point(Subject::Host, &[("system.cpu.state", state)], Value::Double(*value));
            }
        },
    },
    Metric {
        name: "system.memory.usage",
        prometheus: "system_memory_usage_bytes",
        instrument: Instrument::Gauge,
        unit: "By",
        description: "Memory by state",
        attributes: "`system.memory.state`",
        read: |s, sink| {
            for (state, value) in &s.host.memory_usage {
                sink.point(Subject::Host, &[("system.memory.state", state)], Value::Int(*value));
            }
        },
    },
    Metric {
        name: "system.cpu.load_average.1m",
        prometheus: "system_cpu_load_average_1m",
        instrument: Instrument::Gauge,
        unit: "{thread}",
        description: "Load average over 1 minute",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Double(s.host.load_average[0])),
    },
    Metric {
        name: "system.cpu.load_average.5m",
        prometheus: "system_cpu_load_average_5m",
        instrument: Instrument::Gauge,
        unit: "{thread}",
        description: "Load average over 5 minutes",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Double(s.host.load_average[1])),
    },
    Metric {
        name: "system.cpu.load_average.15m",
        prometheus: "system_cpu_load_average_15m",
        instrument: Instrument::Gauge,
        unit: "{thread}",
        description: "Load average over 15 minutes",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Double(s.host.load_average[2])),
    },
    Metric {
        name: "system.network.io",
        prometheus: "system_network_io_bytes_total",
        instrument: Instrument::Counter,
        unit: "By",
        description: "Bytes through each network interface of wgtel's namespace",
        attributes: "`network.interface.name`, `network.io.direction`",
        read: |s, sink| network(s, sink, |nic| (nic.rx_bytes, nic.tx_bytes)),
    },
    Metric {
        name: "system.network.packets",
        prometheus: "system_network_packets_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Packets through each network interface of wgtel's namespace",
        attributes: "`network.interface.name`, `network.io.direction`",
        read: |s, sink| network(s, sink, |nic| (nic.rx_packets, nic.tx_packets)),
    },
    Metric {
        name: "system.network.errors",
        prometheus: "system_network_errors_total",
        instrument: Instrument::Counter,
        unit: "{error}",
        description: "Errors on each network interface of wgtel's namespace",
        attributes: "`network.interface.name`, `network.io.direction`",
        read: |s, sink| network(s, sink, |nic| (nic.rx_errors, nic.tx_errors)),
    },
    Metric {
        name: "system.network.dropped",
        prometheus: "system_network_dropped_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Packets each network interface of wgtel's namespace dropped",
        attributes: "`network.interface.name`, `network.io.direction`",
        read: |s, sink| network(s, sink, |nic| (nic.rx_dropped, nic.tx_dropped)),
    },
    Metric {
        name: "system.network.udp.errors",
        prometheus: "system_network_udp_errors_total",
        instrument: Instrument::Counter,
        unit: "{datagram}",
        description: "UDP errors (IPv4 and IPv6): a busy WireGuard host loses datagrams in receive_buffer first",
        attributes: "`error.type` (`receive`, `receive_buffer`, `send_buffer`, `no_port`, `checksum`)",
        read: |s, sink| {
            let udp = &s.host.udp;
            for (kind, count) in [
                ("receive", udp.in_errors),
                ("receive_buffer", udp.rcvbuf_errors),
                ("send_buffer", udp.sndbuf_errors),
                ("no_port", udp.no_ports),
                ("checksum", udp.in_csum_errors),
            ] {
                sink.point(Subject::Host, &[("error.type", kind)], Value::Int(count));
            }
        },
    },
    Metric {
        name: "system.network.softnet.dropped",
        prometheus: "system_network_softnet_dropped_total",
        instrument: Instrument::Counter,
        unit: "{packet}",
        description: "Packets dropped from full softnet backlogs, all CPUs",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Int(s.host.softnet.dropped)),
    },
    Metric {
        name: "system.network.softnet.time_squeeze",
        prometheus: "system_network_softnet_time_squeeze_total",
        instrument: Instrument::Counter,
        unit: "{event}",
        description: "Times softirq processing ran out of budget, all CPUs",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Int(s.host.softnet.time_squeeze)),
    },
    Metric {
        name: "process.cpu.utilization",
        prometheus: "process_cpu_utilization_ratio",
        instrument: Instrument::Gauge,
        unit: "1",
        description: "CPU of each userspace WireGuard process, fraction of one CPU",
        attributes: "`process.pid`, `process.executable.name`, `wireguard.interface` when known",
        read: |s, sink| {
            for process in &s.host.userspace_wireguard {
                if let Some(cpu) = process.cpu_utilization {
                    sink.point(Subject::Process(process), &[], Value::Double(cpu));
                }
            }
        },
    },
    Metric {
        name: "process.memory.usage",
        prometheus: "process_memory_usage_bytes",
        instrument: Instrument::Gauge,
        unit: "By",
        description: "Resident memory of each userspace WireGuard process",
        attributes: "the same as `process.cpu.utilization`",
        read: |s, sink| {
            for process in &s.host.userspace_wireguard {
                sink.point(Subject::Process(process), &[], Value::Int(process.rss_bytes));
            }
        },
    },
    Metric {
        name: "wgtel.collection.duration",
        prometheus: "wgtel_collection_duration_seconds",
        instrument: Instrument::Gauge,
        unit: "s",
        description: "How long wgtel's latest collection took",
        attributes: "",
        read: |s, sink| sink.point(Subject::Host, &[], Value::Double(s.collection_seconds)),
    },
    Metric {
        name: "wgtel.ebpf.map_errors",
        prometheus: "wgtel_ebpf_map_errors_total",
        instrument: Instrument::Counter,
        unit: "{insert}",
        description: "Inserts the eBPF programs could not make, by map (a full map loses that entry)",
        attributes: "`map`",
        read: |s, sink| {
            for (map, count) in &s.ebpf_map_errors {
                sink.point(Subject::Host, &[("map", map)], Value::Int(*count));
            }
        },
    },
];

/// A per-peer counter by `network.io.direction`.
fn directional(
    snapshot: &Snapshot,
    sink: &mut dyn PointSink,
    value: fn(&PeerSnapshot) -> Directional,
) {
    for (interface, peer) in snapshot.series() {
        let counts = value(peer.peer);
        for (direction, count) in [("receive", counts.receive), ("transmit", counts.transmit)] {
            let attributes = [("network.io.direction", direction)];
            sink.point(Subject::peer(interface, &peer), &attributes, Value::Int(count));
        }
    }
}

/// `system.network.*`: a counter per interface of wgtel's namespace and direction.
fn network(
    snapshot: &Snapshot,
    sink: &mut dyn PointSink,
    value: fn(&NetworkInterfaceCounters) -> (u64, u64),
) {
    for nic in &snapshot.host.network {
        let (receive, transmit) = value(nic);
        for (direction, count) in [("receive", receive), ("transmit", transmit)] {
            let attributes = [
                ("network.interface.name", nic.name.as_str()),
                ("network.io.direction", direction),
            ];
            sink.point(Subject::Host, &attributes, Value::Int(count));
        }
    }
}

/// Upper bounds of the kernel's log2 latency buckets but the last (which takes everything
/// from 2^39 ns): 2^(b+1) ns, in seconds.
static LATENCY_BOUNDS: std::sync::LazyLock<Vec<f64>> = std::sync::LazyLock::new(|| {
    (0..LATENCY_BUCKETS - 1).map(|bucket| (2u64 << bucket) as f64 / 1e9).collect()
});

/// The latency histograms of `kinds`, each with its attribute; a peer without samples of a
/// kind has no point of it.
fn latency(
    snapshot: &Snapshot,
    sink: &mut dyn PointSink,
    kinds: &[(LatencyKind, &'static str, &str)],
) {
    for (interface, peer) in snapshot.series() {
        for (kind, attribute, value) in kinds {
            let Some(latency) = peer.latency.get(kind.as_str()).filter(|l| l.count > 0) else {
                continue;
            };
            let distribution = Distribution {
                bounds: &LATENCY_BOUNDS,
                counts: &latency.buckets,
                sum: latency.sum_seconds,
                count: latency.count,
            };
            let attributes = [(*attribute, *value)];
            sink.point(
                Subject::peer(interface, &peer),
                &attributes,
                Value::Histogram(distribution),
            );
        }
    }
}

/// `wireguard.peer.diagnosis` (`peers`) or `wireguard.interface.diagnosis`: 1 for each code
/// holding.
fn diagnosis(snapshot: &Snapshot, sink: &mut dyn PointSink, peers: bool) {
    for diagnosis in snapshot.diagnoses.iter().filter(|d| d.peer.is_some() == peers) {
        let Some(interface) = snapshot.interfaces.iter().find(|i| i.name == diagnosis.interface)
        else {
            continue;
        };
        let subject = match &diagnosis.peer {
            None => Subject::Interface(interface),
            Some(key) => Subject::Peer {
                interface,
                key: Some(key),
                name: interface
                    .peers
                    .iter()
                    .find(|peer| peer.public_key == *key)
                    .and_then(|peer| peer.name.as_deref()),
            },
        };
        let attributes = [("wireguard.diagnosis.code", diagnosis.diagnosis.code.as_str())];
        sink.point(subject, &attributes, Value::Int(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metric table, row by row: `| name | instrument, unit | attributes |`.
    fn readme_rows() -> Vec<String> {
        let readme = include_str!("../../../README.md");
        let start =
            readme.find("| metric | Prometheus | kind, unit | attributes |").expect("the table");
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readme_lists_every_metric_as_the_table_describes_it() {
        let expected: Vec<String> = METRICS
            .iter()
            .map(|metric| {
                format!(
                    "| `{}` | `{}` | {}, {} | {} |",
                    metric.name,
                    metric.prometheus,
                    metric.instrument.as_str(),
                    metric.unit,
                    metric.attributes
                )
            })
            .collect();
        assert_eq!(readme_rows(), expected, "README.md's metric table differs from METRICS");
    }

    #[test]
    fn prometheus_names_follow_the_translation_rules() {
        for metric in METRICS {
            let base = metric.name.replace('.', "_");
            let unit = match metric.unit {
                "By" => "_bytes",
                "s" => "_seconds",
                _ => "",
            };
            let total = if metric.instrument == Instrument::Counter { "_total" } else { "" };
            let expected = format!("{base}{unit}{total}");
            // Ratios (unit 1) of utilization get `_ratio`; 0/1 gauges keep their name.
            let ratio = format!("{base}_ratio");
            assert!(
                metric.prometheus == expected || metric.prometheus == ratio,
                "{} -> {}",
                metric.name,
                metric.prometheus
            );
        }
        let mut names: Vec<&str> = METRICS.iter().map(|metric| metric.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric is listed twice");
    }
}
