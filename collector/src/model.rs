//! One [`Snapshot`] per interval: every watched interface and peer, WireGuard's own state
//! merged with the eBPF counters. Sources produce snapshots; exporters and health only read
//! them.

use std::{collections::BTreeMap, net::SocketAddr, time::SystemTime};

use collector_common::underlay::{MESSAGE_TYPES, MessageType};
use serde::Serialize;

use crate::wg::{AllowedIp, Implementation, PublicKey};

/// Drop reason of a packet routed into the tunnel that no peer's AllowedIPs accept.
pub const DROP_REASON_NO_PEER: &str = "no_peer";

/// Drop reason of every kernel drop on a kernel that gives none (before 5.17).
pub const DROP_REASON_UNKNOWN: &str = "unknown";

/// A peer is `active` while its last handshake is younger than this: WireGuard rekeys every
/// 120 s (`REKEY_AFTER_TIME`) and gives up on a session after 180 s (`REJECT_AFTER_TIME`).
pub const ACTIVE_HANDSHAKE_AGE_SECS: u64 = 180;

/// Everything collected in one interval.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// When collection of this snapshot finished.
    #[serde(with = "unix_seconds")]
    pub taken_at: SystemTime,
    /// How long this collection took, in seconds (wgtel's own cost per interval).
    pub collection_seconds: f64,
    /// The watched interfaces, sorted by name.
    pub interfaces: Vec<InterfaceSnapshot>,
    /// The latest operational events, newest first (at most `EVENT_LOG_CAPACITY`).
    pub events: Vec<crate::events::Event>,
    /// Events per type since the daemon started.
    pub event_counts: BTreeMap<String, u64>,
    /// The host: CPU, memory, NICs, UDP, softnet, userspace WireGuard processes.
    pub host: crate::host::HostSnapshot,
    /// The alerts firing, by rule and subject.
    pub alerts: Vec<crate::rules::Alert>,
    /// Inserts the eBPF programs could not make since they were loaded, by map (a full map
    /// loses that entry): `(map name, count)`.
    pub ebpf_map_errors: Vec<(&'static str, u64)>,
    /// The diagnosis codes holding, per peer and per interface (derived by the `diagnosis`
    /// module, which reads snapshots: this one holds only its results).
    pub diagnoses: Vec<SubjectDiagnosis>,
    /// What the running kernel cannot give, found when the programs were loaded.
    pub unavailable: Vec<Unavailable>,
    /// The synthetic checks' latest results, each tied to the peer that carries it.
    pub checks: Vec<crate::checks::CheckResult>,
}

/// Something of wgtel's that depends on the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// tcx links (6.6+), which the kernel releases when wgtel dies; else clsact filters.
    Tcx,
    /// The reason of each kernel drop (5.17+); else drops counted as [`DROP_REASON_UNKNOWN`].
    DropReasons,
    /// Kernel drops at all (BTF, the `skb:kfree_skb` tracepoint, `CAP_PERFMON`); else the
    /// peers' `drops` are absent, not empty.
    KernelDrops,
}

impl Feature {
    /// The `feature` value in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::DropReasons => "drop_reasons",
            Self::KernelDrops => "kernel_drops",
        }
    }
}

/// A [`Feature`] this kernel cannot give, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unavailable {
    /// What is missing.
    pub feature: Feature,
    /// Why, and what wgtel does instead.
    pub reason: String,
}

impl Snapshot {
    /// A snapshot with nothing in it, published before the first collection.
    pub fn empty() -> Self {
        Self {
            taken_at: SystemTime::UNIX_EPOCH,
            collection_seconds: 0.0,
            interfaces: Vec::new(),
            events: Vec::new(),
            event_counts: BTreeMap::new(),
            host: crate::host::HostSnapshot::default(),
            alerts: Vec::new(),
            ebpf_map_errors: Vec::new(),
            unavailable: Vec::new(),
            diagnoses: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// What the metric exporters emit per peer: each peer that keeps series of its own, then
    /// each interface's sum of the others (see [`crate::export::series`]).
    pub fn series(&self) -> impl Iterator<Item = (&InterfaceSnapshot, SeriesPeer<'_>)> {
        self.interfaces.iter().flat_map(|interface| {
            let own = interface.peers.iter().enumerate().filter_map(move |(index, peer)| {
                let aggregated = interface.aggregated.as_ref();
                aggregated
                    .is_none_or(|aggregated| aggregated.own.get(index).copied().unwrap_or(true))
                    .then_some((interface, SeriesPeer { peer, aggregated: None }))
            });
            let others = interface.aggregated.as_ref().filter(|a| a.count > 0).map(|aggregated| {
                (
                    interface,
                    SeriesPeer { peer: &aggregated.totals, aggregated: Some(aggregated.count) },
                )
            });
            own.chain(others)
        })
    }

    /// The codes holding for the peer `key` of `interface`, or for the interface itself
    /// (`key` `None`), first code first.
    pub fn diagnosis(&self, interface: &str, key: Option<&PublicKey>) -> Vec<Diagnosis> {
        self.diagnoses
            .iter()
            .filter(|d| d.interface == interface && d.peer.as_ref() == key)
            .map(|d| d.diagnosis.clone())
            .collect()
    }

    /// Every peer with the interface it belongs to.
    pub fn peers(&self) -> impl Iterator<Item = (&InterfaceSnapshot, &PeerSnapshot)> {
        self.interfaces
            .iter()
            .flat_map(|interface| interface.peers.iter().map(move |peer| (interface, peer)))
    }
}

/// Counts by direction, seen from this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Directional {
    /// Received by this host.
    pub receive: u64,
    /// Sent by this host.
    pub transmit: u64,
}

/// One peer's WireGuard messages by type, every type always there: a field of each peer, so
/// an array rather than a map (no allocation per peer and snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts([Directional; MESSAGE_TYPES]);

impl MessageCounts {
    /// The types in the order of their names, as they are listed everywhere.
    const BY_NAME: [MessageType; MESSAGE_TYPES] = [
        MessageType::CookieReply,
        MessageType::HandshakeInitiation,
        MessageType::HandshakeResponse,
        MessageType::Invalid,
        MessageType::Keepalive,
        MessageType::TransportData,
    ];

    /// The counts of `kind`.
    pub fn get(&self, kind: MessageType) -> Directional {
        self.0[kind as usize]
    }

    /// The counts of `kind`, to change.
    pub fn get_mut(&mut self, kind: MessageType) -> &mut Directional {
        &mut self.0[kind as usize]
    }

    /// Every type's `wireguard.message.type` value and counts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (MessageType, &'static str, Directional)> + '_ {
        Self::BY_NAME.iter().map(|kind| (*kind, kind.as_str(), self.get(*kind)))
    }
}

impl Serialize for MessageCounts {
    /// An object by type name, as a map of them would be.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(_, name, count)| (name, count)))
    }
}

/// What the underlay programs saw of one peer's WireGuard datagrams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerUnderlaySnapshot {
    /// WireGuard messages by `wireguard.message.type`.
    pub messages: MessageCounts,
    /// Outer IP fragments.
    pub fragments: Directional,
    /// ICMP fragmentation-needed / ICMPv6 packet-too-big about this peer's datagrams.
    pub icmp_too_big: Directional,
    /// ICMP destination unreachable about the peer's datagrams (port, host, network,
    /// prohibited), by direction: received by this host, sent by it.
    pub icmp_unreachable: Directional,
    /// The MTU the latest too-big message reported.
    pub path_mtu: Option<u32>,
    /// The MTU of the route to the peer's endpoint (the route's own, else its interface's),
    /// when the underlay was found by route lookup.
    pub route_mtu: Option<u32>,
    /// Handshake initiations this host sent that no response answered (initiations sent
    /// minus responses received).
    pub unanswered_initiations: u64,
}

/// One kind of latency of one peer: the kernel's log2 histogram and what it says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySnapshot {
    /// Samples per log2 bucket since the peer got its id: bucket `b` holds
    /// `[2^b, 2^(b+1))` nanoseconds.
    pub buckets: Vec<u64>,
    /// Samples.
    pub count: u64,
    /// Sum of the samples, seconds.
    pub sum_seconds: f64,
    /// Median, seconds (resolution: the bucket; hdrhistogram over bucket midpoints).
    pub p50: Option<f64>,
    /// 90th percentile, seconds.
    pub p90: Option<f64>,
    /// 99th percentile, seconds.
    pub p99: Option<f64>,
    /// Standard deviation of the samples of the last interval, seconds; `None` below two.
    pub jitter: Option<f64>,
    /// Round trips never answered (lost).
    pub lost: u64,
}

impl LatencySnapshot {
    /// The summary of `buckets` (cumulative) and of their growth since `previous`.
    pub fn from_buckets(
        buckets: Vec<u64>,
        sum_ns: u64,
        lost: u64,
        previous: Option<&[u64]>,
    ) -> Self {
        Self::summarize(&mut LatencyScratch::default(), buckets, sum_ns, lost, previous)
    }

    /// [`LatencySnapshot::from_buckets`] computed in `scratch`'s histograms, which are reset
    /// and kept for the next summary instead of being allocated for each peer and kind.
    pub fn summarize(
        scratch: &mut LatencyScratch,
        buckets: Vec<u64>,
        sum_ns: u64,
        lost: u64,
        previous: Option<&[u64]>,
    ) -> Self {
        let LatencyScratch { all, recent } = scratch;
        fill(all, buckets.iter().copied());
        let quantile = |q: f64| (!all.is_empty()).then(|| all.value_at_quantile(q) as f64 / 1e6);
        fill(
            recent,
            buckets.iter().enumerate().map(|(bucket, count)| {
                count.saturating_sub(previous.and_then(|p| p.get(bucket)).copied().unwrap_or(0))
            }),
        );
        Self {
            count: buckets.iter().sum(),
            sum_seconds: sum_ns as f64 / 1e9,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            jitter: (recent.len() >= 2).then(|| recent.stdev() / 1e6),
            lost,
            buckets,
        }
    }
}

/// The two hdrhistograms (all samples, the last interval's) a latency summary is computed in,
/// kept across peers and intervals.
#[derive(Debug)]
pub struct LatencyScratch {
    all: hdrhistogram::Histogram<u64>,
    recent: hdrhistogram::Histogram<u64>,
}

impl Default for LatencyScratch {
    fn default() -> Self {
        Self { all: bucket_histogram(), recent: bucket_histogram() }
    }
}

/// An empty hdrhistogram in microseconds for the kernel's log2 buckets.
fn bucket_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 20 minutes at 2 significant digits: finer than the kernel's buckets.
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1_200_000_000, 2)
        .expect("constant bounds that hdrhistogram accepts");
    histogram.auto(true);
    histogram
}

/// Resets `histogram` to hold each log2 bucket's count at the bucket's midpoint
/// (1.5 * 2^b ns).
fn fill(histogram: &mut hdrhistogram::Histogram<u64>, counts: impl Iterator<Item = u64>) {
    histogram.reset();
    for (bucket, count) in counts.enumerate() {
        if count > 0 {
            let midpoint_us = ((3u64 << bucket) / 2 / 1000).max(1);
            let _recorded = histogram.record_n(midpoint_us, count);
        }
    }
}

/// The series of one peer, or of an interface's peers summed (`aggregated` of them).
#[derive(Clone, Copy, Debug)]
pub struct SeriesPeer<'a> {
    /// The peer, or the sums (identity fields empty).
    pub peer: &'a PeerSnapshot,
    /// `Some(n)`: the sum of `n` peers without series of their own.
    pub aggregated: Option<usize>,
}

impl std::ops::Deref for SeriesPeer<'_> {
    type Target = PeerSnapshot;

    fn deref(&self) -> &PeerSnapshot {
        self.peer
    }
}

/// The peers of an interface that have no series of their own, summed.
#[derive(Clone, Debug, Serialize)]
pub struct AggregatedPeers {
    /// For each peer of the interface, in order: whether it keeps its own series.
    pub own: Vec<bool>,
    /// How many peers are summed.
    pub count: usize,
    /// Their counters, summed as counters (growth added each collection); gauges absent,
    /// except unanswered initiations, summed as they are now.
    pub totals: PeerSnapshot,
}

/// One WireGuard interface.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceSnapshot {
    /// Interface name.
    pub name: String,
    /// Kernel interface index in its network namespace.
    pub ifindex: u32,
    /// Its network namespace's label (`wireguard.netns`, see [`crate::netns`]); `None` in the
    /// namespace wgtel started in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Which implementation runs it.
    pub implementation: Implementation,
    /// UDP listen port, when listening.
    pub listen_port: Option<u16>,
    /// The mark WireGuard puts on its own datagrams (`fwmark`), when set: wg-quick's
    /// full-tunnel policy routing keeps marked datagrams out of the tunnel.
    pub fwmark: Option<u32>,
    /// The interface's own public key, when it has a private key.
    pub public_key: Option<PublicKey>,
    /// Packets dropped on the interface that no peer can be tied to, by reason: `no_peer` (the
    /// tunnel program's, on every kernel) and the kernel's, when it counts them (see
    /// [`Snapshot::unavailable`]). Cumulative since the daemon attached.
    pub drops: BTreeMap<String, u64>,
    /// Entries this interface holds in the kernel's AllowedIPs trie: one per AllowedIPs
    /// prefix of a peer that has eBPF counters.
    pub allowed_ip_entries: usize,
    /// Datagrams to its listen port from no known peer endpoint or session.
    pub underlay_unknown_source: u64,
    /// The destinations of the `no_peer` packets with their packets since the daemon
    /// attached, as far as the kernel's map remembers them (the 1,024 seen most recently).
    #[serde(skip)]
    pub no_peer_destinations: Vec<(std::net::IpAddr, u64)>,
    /// The sources of the handshake initiations received on its port, with their number since
    /// the daemon attached (the 4,096 seen most recently).
    #[serde(skip)]
    pub initiation_sources: Vec<(std::net::IpAddr, u64)>,
    /// Drops of the UDP sockets bound to its listen port (a full receive buffer, mostly), as
    /// the kernel counts them; `None` when unknown.
    pub udp_socket_drops: Option<u64>,
    /// Whether the host forwards what comes out of the interface: IPv4
    /// (`net.ipv4.conf.IFACE.forwarding`); `None` when unreadable.
    pub ipv4_forwarding: Option<bool>,
    /// ... IPv6 (`net.ipv6.conf.all.forwarding`, which IPv6 goes by).
    pub ipv6_forwarding: Option<bool>,
    /// The interface's peers, in the order WireGuard reports them.
    pub peers: Vec<PeerSnapshot>,
    /// Which peers keep series of their own and the sum of the others; `None`: every peer
    /// keeps its own (no `--top-peers` or `--peer-allowlist`).
    pub aggregated: Option<AggregatedPeers>,
}

/// How a peer is doing, judged from its handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Handshake within the last [`ACTIVE_HANDSHAKE_AGE_SECS`].
    Active,
    /// Had a handshake, but not recently.
    Stale,
    /// Never completed a handshake.
    Never,
}

impl PeerState {
    /// Every state, in the order exporters list them.
    pub const ALL: [Self; 3] = [Self::Active, Self::Stale, Self::Never];

    /// The state of a peer whose last handshake was `age` seconds ago.
    pub fn from_handshake_age(age_seconds: Option<f64>) -> Self {
        match age_seconds {
            None => Self::Never,
            Some(age) if age < ACTIVE_HANDSHAKE_AGE_SECS as f64 => Self::Active,
            Some(_) => Self::Stale,
        }
    }

    /// The `wireguard.peer.state` attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Stale => "stale",
            Self::Never => "never",
        }
    }
}

/// Whether a peer works, told apart from merely being quiet: no exporter that only polls
/// `wg show` can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerHealth {
    /// A fresh handshake ([`PeerState::Active`]).
    Active,
    /// No fresh handshake, and this host sent it nothing in the last interval: quiet, not
    /// down (a peer without traffic and without keepalive looks like this).
    Idle,
    /// No fresh handshake while this host sends to it (inner packets, or handshake
    /// initiations that go unanswered): the tunnel is down whatever `ip link` says.
    Broken,
    /// Never a handshake, and nothing sent to it.
    Never,
}

impl PeerHealth {
    /// The health of a peer in `state` to which this host did or did not send in the last
    /// interval.
    pub const fn judge(state: PeerState, sending: bool) -> Self {
        match (state, sending) {
            (PeerState::Active, _) => Self::Active,
            (PeerState::Stale | PeerState::Never, true) => Self::Broken,
            (PeerState::Stale, false) => Self::Idle,
            (PeerState::Never, false) => Self::Never,
        }
    }

    /// The `health` value in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Idle => "idle",
            Self::Broken => "broken",
            Self::Never => "never",
        }
    }
}

/// One peer of one interface.
#[derive(Clone, Debug, Serialize)]
pub struct PeerSnapshot {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Friendly name from `--names-from` or the config's `[peer_names]`.
    pub name: Option<String>,
    /// Current endpoint, when known.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs.
    pub allowed_ips: Vec<AllowedIp>,
    /// Persistent keepalive interval in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
    /// Seconds since the last handshake when the interface was read; `None` when never.
    pub last_handshake_seconds_ago: Option<f64>,
    /// The last handshake, seconds since the Unix epoch: unlike the age, it does not grow
    /// stale with the snapshot; `None` when never.
    pub last_handshake_unix: Option<f64>,
    /// Judged from the handshake age.
    pub state: PeerState,
    /// Judged from the handshake age and what this host sends to the peer.
    pub health: PeerHealth,
    /// Bytes received, from WireGuard's own counter.
    pub rx_bytes: u64,
    /// Bytes sent, from WireGuard's own counter.
    pub tx_bytes: u64,
    /// Inner packets out of the tunnel from this peer (eBPF), since the daemon attached.
    pub rx_packets: u64,
    /// Inner packets into the tunnel to this peer (eBPF), since the daemon attached.
    pub tx_packets: u64,
    /// Receive rate over the last interval, bytes per second (WireGuard's counter).
    pub rx_bytes_per_second: f64,
    /// Transmit rate over the last interval, bytes per second (WireGuard's counter).
    pub tx_bytes_per_second: f64,
    /// Kernel drops tied to this peer, by reason; `None` when the kernel's drops are not
    /// counted ([`Feature::KernelDrops`] unavailable): unknown, not zero.
    pub drops: Option<BTreeMap<String, u64>>,
    /// Its datagrams on the underlay.
    pub underlay: PeerUnderlaySnapshot,
    /// Latency by kind (`handshake_initiator`, `tcp_round_trip`, `icmp_round_trip`, ...);
    /// kinds without samples or losses are absent.
    pub latency: BTreeMap<&'static str, LatencySnapshot>,
}

impl PeerSnapshot {
    /// A peer with this key and nothing counted, never a handshake: the start of an
    /// interface's running sums (and of a test's peer).
    pub fn zero(public_key: PublicKey) -> Self {
        Self {
            public_key,
            name: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake_seconds_ago: None,
            last_handshake_unix: None,
            state: PeerState::Never,
            health: PeerHealth::Never,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            rx_bytes_per_second: 0.0,
            tx_bytes_per_second: 0.0,
            drops: None,
            underlay: PeerUnderlaySnapshot::default(),
            latency: BTreeMap::new(),
            persistent_keepalive: None,
        }
    }
}

/// A diagnosis code: the cause of a failure, named. Codes are never renamed; their order is
/// the order of precedence (the first code holding is a peer's `CAUSE`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// ICMP destination unreachable comes back for the datagrams sent to the peer's endpoint.
    EndpointUnreachable,
    /// This host initiates handshakes with the peer and no response comes back.
    HandshakeUnanswered,
    /// The peer's initiations reach this host and it never responds.
    HandshakeRejected,
    /// A handshake once, none for longer than the threshold, while traffic goes to the peer.
    HandshakeStale,
    /// The peer's or another peer's AllowedIPs cover the peer's endpoint.
    AllowedIpsCoverEndpoint,
    /// Kernel drops with reason `NETFILTER_DROP` on the peer's traffic.
    FirewallDrops,
    /// The peer's packets to non-local addresses dropped: the host does not forward.
    ForwardingDisabled,
    /// Transport data from the peer that never came out of the tunnel: WireGuard dropped it.
    InnerDrops,
    /// The peer's outer datagrams are fragmented, or ICMP too-big comes back for them.
    MtuFragmentation,
    /// Inner round trips to the peer go unanswered above the threshold.
    HighLoss,
    /// Inner round trips to the peer take several times their usual time.
    LatencyDegraded,
    /// The peer's endpoint port changes after silences and it sends no persistent keepalive.
    KeepaliveNeeded,
    /// A synthetic check whose target the peer's AllowedIPs cover fails.
    CheckFailed,
    /// A peer not in `expected-peers` completed a handshake.
    UnexpectedPeer,
    /// Traffic routed into the tunnel that no peer's AllowedIPs accept (interface).
    NoPeerRoute,
    /// Datagrams to the WireGuard port from no known endpoint (interface).
    UnknownSources,
    /// Handshake initiations from one source far faster than WireGuard sends them (interface).
    HandshakeFlood,
    /// UDP receive-buffer errors growing (interface).
    UdpReceiveErrors,
    /// Host CPU saturated: softirq and the WireGuard process compete for it (interface).
    CpuSaturated,
}

impl Code {
    /// Every code.
    pub const ALL: [Self; 19] = [
        Self::EndpointUnreachable,
        Self::HandshakeUnanswered,
        Self::HandshakeRejected,
        Self::HandshakeStale,
        Self::AllowedIpsCoverEndpoint,
        Self::FirewallDrops,
        Self::ForwardingDisabled,
        Self::InnerDrops,
        Self::MtuFragmentation,
        Self::HighLoss,
        Self::LatencyDegraded,
        Self::KeepaliveNeeded,
        Self::CheckFailed,
        Self::UnexpectedPeer,
        Self::NoPeerRoute,
        Self::UnknownSources,
        Self::HandshakeFlood,
        Self::UdpReceiveErrors,
        Self::CpuSaturated,
    ];

    /// The code's name in the API, metrics, events and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EndpointUnreachable => "endpoint_unreachable",
            Self::HandshakeUnanswered => "handshake_unanswered",
            Self::HandshakeStale => "handshake_stale",
            Self::HandshakeRejected => "handshake_rejected",
            Self::AllowedIpsCoverEndpoint => "allowed_ips_cover_endpoint",
            Self::FirewallDrops => "firewall_drops",
            Self::ForwardingDisabled => "forwarding_disabled",
            Self::InnerDrops => "inner_drops",
            Self::MtuFragmentation => "mtu_fragmentation",
            Self::HighLoss => "high_loss",
            Self::LatencyDegraded => "latency_degraded",
            Self::KeepaliveNeeded => "keepalive_needed",
            Self::CheckFailed => "check_failed",
            Self::UnexpectedPeer => "unexpected_peer",
            Self::NoPeerRoute => "no_peer_route",
            Self::UnknownSources => "unknown_sources",
            Self::HandshakeFlood => "handshake_flood",
            Self::UdpReceiveErrors => "udp_receive_errors",
            Self::CpuSaturated => "cpu_saturated",
        }
    }
}

/// One code holding for a subject.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Diagnosis {
    /// The code.
    pub code: Code,
    /// Since when it holds, seconds since the Unix epoch.
    pub since: f64,
    /// One sentence with the measured numbers behind the code.
    pub evidence: String,
    /// The counters behind it, by name (`handshake_initiation.transmit`, ...), as measured
    /// over the code's window.
    #[serde(default)]
    pub counters: BTreeMap<String, f64>,
}

/// A [`Diagnosis`] with its subject: a peer of an interface, or the interface.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubjectDiagnosis {
    /// The WireGuard interface.
    pub interface: String,
    /// The peer; `None` for an interface-level code.
    pub peer: Option<PublicKey>,
    /// The code and its evidence.
    pub diagnosis: Diagnosis,
}

/// Serialises a `SystemTime` as fractional seconds since the Unix epoch.
mod unix_seconds {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let seconds = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        serializer.serialize_f64(seconds)
    }
}

/// The latest collection's health and when its snapshot was published (monotonic clock), for
/// `/healthz`: a snapshot older than [`STALE_AFTER_INTERVALS`] intervals is stale whatever the
/// health it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedHealth {
    /// The health of the latest collection.
    pub health: CollectionHealth,
    /// When its snapshot was published (when the daemon started, while [`CollectionHealth::Starting`]).
    pub at: std::time::Instant,
}

/// How many collection intervals the newest snapshot may age before `/healthz` calls it stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Whether collection works, for `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectionHealth {
    /// No collection has finished yet.
    Starting,
    /// The last collection succeeded for every watched interface.
    Healthy,
    /// The last collection failed, or failed for some interface; `reason` says which and why.
    Failing {
        /// One line naming what failed.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_counts_list_every_type_once_by_name() {
        let mut counts = MessageCounts::default();
        counts.get_mut(MessageType::TransportData).receive = 7;
        let names: Vec<&str> = counts.iter().map(|(_, name, _)| name).collect();
        assert_eq!(
            names,
            [
                "cookie_reply",
                "handshake_initiation",
                "handshake_response",
                "invalid",
                "keepalive",
                "transport_data"
            ]
        );
        assert_eq!(
            serde_json::to_value(counts).unwrap()["transport_data"],
            serde_json::json!({"receive": 7, "transmit": 0})
        );
    }
}
