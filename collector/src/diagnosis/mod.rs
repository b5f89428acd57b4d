//! Diagnosis: each snapshot (and the few before it) read for the causes of failure, named by
//! a [`Code`] with one sentence of evidence and the counters behind it.
//!
//! Codes are present while their evidence holds: every rule looks at the growth of counters
//! over a short window of recent snapshots ([`WINDOW_SNAPSHOTS`], longer where WireGuard's own
//! timers need it), so a code appears at the first snapshot that shows its evidence and clears
//! within three intervals after the evidence ends. Hysteresis belongs to the alert rules, not
//! here. Each rule lives next to its documentation in a file per family: [`handshake`]
//! (handshakes and who may make them), [`packets`] (what happens to a peer's packets),
//! [`interface`] (interface- and host-level codes), [`routing`] (AllowedIPs against
//! endpoints, forwarding).
//!
//! The engine keeps, per peer and per interface, the last few samples of the counters its
//! rules read (at least four, and enough to span the longest window), and since when each code
//! holds; a code that starts or clears is a `diagnosis_started` / `diagnosis_cleared` event.

mod addresses;
mod checks;
mod handshake;
mod history;
mod interface;
mod keepalive;
mod latency;
mod packets;
mod routing;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::SystemTime,
};

use collector_common::{latency::LatencyKind, underlay::MessageType};

use self::{
    addresses::InterfaceAddresses,
    history::{History, Window, low32},
};

use crate::{
    events::Event,
    model::{Code, Diagnosis, InterfaceSnapshot, PeerSnapshot, Snapshot, SubjectDiagnosis},
    rules::ExpectedPeer,
    wg::PublicKey,
};

/// Growth codes compare the newest snapshot with the one this many snapshots before it: the
/// evidence shows at the next snapshot and is gone three intervals after it ends.
pub const WINDOW_SNAPSHOTS: usize = 3;

/// What the rules need besides the snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagnosisConfig {
    /// `expected-peers`: when set, any other peer that completes a handshake is unexpected.
    pub expected_peers: Vec<ExpectedPeer>,
    /// `handshake_stale` holds past this handshake age (`[alerts] handshake-stale`).
    pub handshake_stale: std::time::Duration,
    /// `cpu_saturated` holds above this host CPU busy fraction (`[alerts] cpu-saturated`).
    pub cpu_saturated: f64,
}

impl Default for DiagnosisConfig {
    /// No `expected-peers`; the alert rules' default `handshake-stale`.
    fn default() -> Self {
        Self {
            expected_peers: Vec::new(),
            handshake_stale: crate::rules::DEFAULT_HANDSHAKE_STALE,
            cpu_saturated: crate::rules::DEFAULT_CPU_SATURATED,
        }
    }
}

/// The counters of one peer that the rules over the last snapshots read, at one snapshot:
/// each counter's low 32 bits (see [`history`]).
#[derive(Clone, Copy, Debug, Default)]
struct PeerSample {
    fragments_received: u32,
    fragments_sent: u32,
    too_big: u32,
    /// Inner packets from the peer that came out of the tunnel.
    tunnel_received: u32,
    /// Transport data messages (keepalives apart) received from the peer on the underlay.
    transport_received: u32,
    netfilter_drops: u32,
    /// Drops for a destination this host neither owns nor forwards to.
    address_error_drops: u32,
    /// Inner round trips this host opened (echo, TCP SYN) that were answered.
    round_trips: u32,
    /// Datagrams the interface's UDP sockets dropped before WireGuard read them (all peers);
    /// `None` when not known.
    socket_drops: Option<u32>,
    /// ... and the sum of the answered round trips' durations, seconds.
    round_trip_seconds: f64,
}

/// The counters of one peer that the rules over a span of seconds read (handshakes, loss), at
/// one snapshot: each counter's low 32 bits.
#[derive(Clone, Copy, Debug, Default)]
struct SpanSample {
    initiations_sent: u32,
    initiations_received: u32,
    responses_sent: u32,
    responses_received: u32,
    cookies_sent: u32,
    cookies_received: u32,
    /// ICMP destination unreachable received about datagrams this host sent the peer.
    unreachable_received: u32,
    /// Inner packets this host sent into the tunnel to the peer.
    tunnel_sent: u32,
    /// Inner round trips this host opened (echo, TCP SYN) that were answered.
    round_trips: u32,
    /// ... and that never were.
    round_trips_lost: u32,
}

/// The counters of one interface (and the host) that the rules read, at one snapshot.
#[derive(Clone, Copy, Debug, Default)]
struct InterfaceSample {
    no_peer: u64,
    unknown_source: u64,
    socket_drops: Option<u64>,
    rcvbuf_errors: u64,
    /// Host CPU busy fraction over the last interval (neither idle nor iowait); `None` on the
    /// first host reading.
    cpu_busy: Option<f64>,
    /// ... of it in softirq (where the kernel moves packets).
    cpu_softirq: f64,
    /// The userspace WireGuard process of the interface, CPUs it used (1.0 = one CPU).
    process_cpu: Option<f64>,
}

/// A code a rule found, before the engine gives it its `since`.
#[derive(Clone, Debug, PartialEq)]
struct Finding {
    code: Code,
    evidence: String,
    counters: BTreeMap<String, f64>,
}

impl Finding {
    fn new(code: Code, evidence: String, counters: &[(&str, u64)]) -> Self {
        let counters = counters.iter().map(|(name, value)| ((*name).to_owned(), *value as f64));
        Self { code, evidence, counters: counters.collect() }
    }
}

/// Whom a code is about: a peer of an interface, or the interface.
type Subject = (String, Option<PublicKey>);

/// Derives the codes of each snapshot; keeps what the windows need and since when each code
/// holds.
#[derive(Debug, Default)]
pub struct DiagnosisEngine {
    config: DiagnosisConfig,
    /// What the rules remember of each peer, by interface then key (a peer is found without
    /// making its interface a key again each collection).
    peers: HashMap<InterfaceKey, foldhash::HashMap<PublicKey, PeerMemory>>,
    /// Each interface's `no_peer` destinations over the last minute (`no_peer_route`), and
    /// the sources of its handshake initiations over the last seconds (`handshake_flood`).
    addresses: HashMap<InterfaceKey, InterfaceAddresses>,
    interfaces: HashMap<InterfaceKey, History<InterfaceSample>>,
    active: BTreeMap<(Subject, Code), Diagnosis>,
    /// Collections observed: a peer's memory not seen in the latest is forgotten.
    round: u64,
}

/// An interface's identity in what the engine remembers: its network namespace's label (`None`
/// in the start one) and its name. Two namespaces may each hold a `wg0`: their histories stay
/// apart (the codes found name the interface only).
type InterfaceKey = (Option<String>, String);

/// The key of `interface`.
fn interface_key(interface: &InterfaceSnapshot) -> InterfaceKey {
    (interface.netns.clone(), interface.name.clone())
}

/// What the rules remember of one peer.
#[derive(Debug, Default)]
struct PeerMemory {
    /// The last snapshots.
    history: History<PeerSample>,
    /// The last [`history::LONGEST_WINDOW_SECONDS`], at least as many snapshots.
    span: History<SpanSample>,
    /// What `keepalive_needed` remembers.
    keepalive: keepalive::KeepaliveState,
    /// The inner round-trip baseline, for `latency_degraded`.
    baseline: latency::Baseline,
    /// The last round that listed the peer.
    seen: u64,
}

impl DiagnosisEngine {
    /// An engine that has seen nothing yet.
    pub fn new(config: DiagnosisConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Reads `snapshot`: every code holding now, and the `diagnosis_started` /
    /// `diagnosis_cleared` events of the codes that started or ended.
    pub fn observe(&mut self, snapshot: &Snapshot) -> (Vec<SubjectDiagnosis>, Vec<Event>) {
        let at = snapshot.taken_at;
        let seconds_at = unix_seconds(at);
        self.round += 1;
        let mut found: Vec<(Subject, Finding)> = Vec::new();
        for interface in &snapshot.interfaces {
            let sample = interface_sample(interface, snapshot);
            let key = interface_key(interface);
            let history = self.interfaces.entry(key.clone()).or_default();
            history.remember(seconds_at, sample, history::LONGEST_WINDOW_SECONDS);
            let recent = self
                .addresses
                .entry(key.clone())
                .or_insert_with(InterfaceAddresses::new)
                .observe(at, interface);
            if let Some(window) = history.window(0.0) {
                for finding in interface::diagnose(&self.config, interface, &window, &recent) {
                    found.push(((interface.name.clone(), None), finding));
                }
            }
            let allowed_ips = routing::AllowedIpsIndex::new(interface);
            let memories = self.peers.entry(key).or_default();
            for peer in &interface.peers {
                let memory = memories.entry(peer.public_key).or_default();
                memory.seen = self.round;
                let (sample, span) = peer_samples(interface, peer);
                memory.history.remember(seconds_at, sample, 0.0);
                memory.span.remember(seconds_at, span, history::LONGEST_WINDOW_SECONDS);
                let mut findings =
                    diagnose_peer(&self.config, (interface, &allowed_ips), peer, memory);
                if let Some(window) = memory.history.window(0.0) {
                    findings.extend(latency::degraded(&mut memory.baseline, &window));
                }
                findings.extend(memory.keepalive.observe(peer, at));
                let subject = || (interface.name.clone(), Some(peer.public_key));
                found.extend(findings.into_iter().map(|finding| (subject(), finding)));
            }
        }
        found.extend(checks::diagnose(&snapshot.checks));
        self.forget_vanished(snapshot);
        let events = self.update(snapshot, found);
        let diagnoses = self
            .active
            .iter()
            .map(|(((interface, peer), _), diagnosis)| SubjectDiagnosis {
                interface: interface.clone(),
                peer: *peer,
                diagnosis: diagnosis.clone(),
            })
            .collect();
        (diagnoses, events)
    }

    /// Drops the history of peers and interfaces no longer in `snapshot`.
    fn forget_vanished(&mut self, snapshot: &Snapshot) {
        let round = self.round;
        for memories in self.peers.values_mut() {
            memories.retain(|_, memory| memory.seen == round);
        }
        self.peers.retain(|_, memories| !memories.is_empty());
        let live: HashSet<InterfaceKey> = snapshot.interfaces.iter().map(interface_key).collect();
        self.interfaces.retain(|key, _| live.contains(key));
        self.addresses.retain(|key, _| live.contains(key));
    }

    /// Moves the codes holding to `found`: new ones start now, gone ones clear; the events.
    fn update(&mut self, snapshot: &Snapshot, found: Vec<(Subject, Finding)>) -> Vec<Event> {
        let at = unix_seconds(snapshot.taken_at);
        let mut now: BTreeMap<(Subject, Code), Diagnosis> = BTreeMap::new();
        let mut events = Vec::new();
        for (subject, finding) in found {
            let key = (subject, finding.code);
            let since = self.active.get(&key).map(|d| d.since);
            if since.is_none() {
                events.push(event(
                    snapshot,
                    at,
                    "diagnosis_started",
                    &key.0,
                    &finding.evidence,
                    finding.code,
                ));
            }
            let diagnosis = Diagnosis {
                code: finding.code,
                since: since.unwrap_or(at),
                evidence: finding.evidence,
                counters: finding.counters,
            };
            now.insert(key, diagnosis);
        }
        for (key, diagnosis) in &self.active {
            if !now.contains_key(key) {
                let detail = format!("no longer holds; was: {}", diagnosis.evidence);
                events.push(event(snapshot, at, "diagnosis_cleared", &key.0, &detail, key.1));
            }
        }
        self.active = now;
        events
    }
}

/// Every rule about one peer, over its history.
fn diagnose_peer(
    config: &DiagnosisConfig,
    (interface, allowed_ips): (&InterfaceSnapshot, &routing::AllowedIpsIndex),
    peer: &PeerSnapshot,
    PeerMemory { history, span, .. }: &PeerMemory,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(window) = span.window(handshake::WINDOW_SECONDS) {
        out.extend(handshake::unanswered(peer, &window));
        out.extend(handshake::rejected(peer, &window));
        out.extend(handshake::endpoint_unreachable(peer, &window));
        out.extend(handshake::stale(config, peer, &window));
    }
    out.extend(routing::allowed_ips_cover_endpoint(interface, allowed_ips, peer));
    if let Some(window) = history.window(0.0) {
        out.extend(packets::firewall_drops(peer, &window));
        out.extend(packets::mtu_fragmentation(peer, &window));
        if let Some(previous) = history.previous() {
            out.extend(packets::inner_drops(&window, previous));
        }
        out.extend(routing::forwarding_disabled(interface, &window));
    }
    if let Some(window) = span.window(packets::LOSS_WINDOW_SECONDS) {
        out.extend(packets::high_loss(peer, &window));
    }
    out.extend(handshake::unexpected_peer(config, interface, peer));
    out
}

/// A `diagnosis_started` / `diagnosis_cleared` event.
fn event(
    snapshot: &Snapshot,
    at: f64,
    kind: &str,
    subject: &Subject,
    detail: &str,
    code: Code,
) -> Event {
    let (interface, peer) = subject;
    let name = peer.and_then(|key| {
        snapshot.peers().find(|(i, p)| i.name == *interface && p.public_key == key)?.1.name.clone()
    });
    Event {
        at,
        kind: kind.to_owned(),
        interface: interface.clone(),
        peer: peer.map(|key| key.to_string()),
        name,
        detail: format!("{}: {detail}", code.as_str()),
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What the rules remember of `peer` at this snapshot.
fn peer_samples(interface: &InterfaceSnapshot, peer: &PeerSnapshot) -> (PeerSample, SpanSample) {
    let messages = |kind| peer.underlay.messages.get(kind);
    let initiations = messages(MessageType::HandshakeInitiation);
    let responses = messages(MessageType::HandshakeResponse);
    let cookies = messages(MessageType::CookieReply);
    let probes = [LatencyKind::IcmpRoundTrip, LatencyKind::TcpRoundTrip];
    let latency = || probes.iter().filter_map(|kind| peer.latency.get(kind.as_str()));
    let round_trips = low32(latency().map(|l| l.count).sum());
    let sample = PeerSample {
        fragments_received: low32(peer.underlay.fragments.receive),
        fragments_sent: low32(peer.underlay.fragments.transmit),
        too_big: low32(peer.underlay.icmp_too_big.receive + peer.underlay.icmp_too_big.transmit),
        tunnel_received: low32(peer.rx_packets),
        transport_received: low32(messages(MessageType::TransportData).receive),
        netfilter_drops: low32(drop_count(peer, packets::NETFILTER_DROP)),
        address_error_drops: low32(drop_count(peer, routing::IP_INADDRERRORS)),
        round_trips,
        socket_drops: interface.udp_socket_drops.map(low32),
        round_trip_seconds: latency().map(|l| l.sum_seconds).sum(),
    };
    let span = SpanSample {
        initiations_sent: low32(initiations.transmit),
        initiations_received: low32(initiations.receive),
        responses_sent: low32(responses.transmit),
        responses_received: low32(responses.receive),
        cookies_sent: low32(cookies.transmit),
        cookies_received: low32(cookies.receive),
        unreachable_received: low32(peer.underlay.icmp_unreachable.receive),
        tunnel_sent: low32(peer.tx_packets),
        round_trips,
        round_trips_lost: low32(latency().map(|l| l.lost).sum()),
    };
    (sample, span)
}

/// The peer's kernel drops with `reason`; 0 when there are none or drops are not counted here.
fn drop_count(peer: &PeerSnapshot, reason: &str) -> u64 {
    peer.drops.as_ref().and_then(|drops| drops.get(reason)).copied().unwrap_or(0)
}

fn interface_sample(interface: &InterfaceSnapshot, snapshot: &Snapshot) -> InterfaceSample {
    InterfaceSample {
        no_peer: interface.drops.get(crate::model::DROP_REASON_NO_PEER).copied().unwrap_or(0),
        unknown_source: interface.underlay_unknown_source,
        socket_drops: interface.udp_socket_drops,
        rcvbuf_errors: snapshot.host.udp.rcvbuf_errors,
        cpu_busy: snapshot.host.cpu_busy(),
        cpu_softirq: snapshot.host.cpu_utilization.get("softirq").copied().unwrap_or(0.0),
        process_cpu: snapshot
            .host
            .userspace_wireguard
            .iter()
            .find(|process| process.interface.as_deref() == Some(interface.name.as_str()))
            .and_then(|process| process.cpu_utilization),
    }
}

/// How a peer is named in evidence: its name, else its key.
fn peer_label(peer: &PeerSnapshot) -> String {
    peer.name.clone().unwrap_or_else(|| peer.public_key.to_string())
}

/// `12.3 s` for evidence.
fn seconds(value: f64) -> String {
    format!("{value:.1} s")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{export::prometheus::tests::snapshot, model::Directional};

    /// The test snapshot `n` intervals of 1 s in, the never-handshaken peer having sent
    /// `sent` initiations and received `answered` responses, the interface `no_peer` drops.
    fn at(n: u64, sent: u64, answered: u64, no_peer: u64) -> Snapshot {
        let mut snapshot = snapshot();
        snapshot.taken_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + n);
        let interface = &mut snapshot.interfaces[0];
        interface.drops.insert(crate::model::DROP_REASON_NO_PEER.to_owned(), no_peer);
        let messages = &mut interface.peers[1].underlay.messages;
        *messages.get_mut(MessageType::HandshakeInitiation) =
            Directional { receive: 0, transmit: sent };
        *messages.get_mut(MessageType::HandshakeResponse) =
            Directional { receive: answered, transmit: 0 };
        snapshot
    }

    fn codes(diagnoses: &[SubjectDiagnosis]) -> Vec<(Option<u8>, Code)> {
        diagnoses.iter().map(|d| (d.peer.map(|key| key.0[0]), d.diagnosis.code)).collect()
    }

    #[test]
    fn two_namespaces_wg0_keep_apart_histories() {
        // The same interface twice: in the start namespace with 3 `no_peer` drops, in `blue`
        // with 100, neither growing. One history for both would see them grow and fall.
        let mut engine = DiagnosisEngine::default();
        for n in 0..10 {
            let mut snapshot = at(n, 1, 1, 3);
            let mut blue = snapshot.interfaces[0].clone();
            blue.netns = Some("blue".into());
            blue.drops.insert(crate::model::DROP_REASON_NO_PEER.to_owned(), 100);
            snapshot.interfaces.push(blue);
            assert_eq!(codes(&engine.observe(&snapshot).0), [], "round {n}");
        }
        assert_eq!(engine.interfaces.len(), 2);
    }

    #[test]
    fn a_code_holds_while_its_evidence_does_and_starts_and_clears_once() {
        let mut engine = DiagnosisEngine::default();
        let (found, events) = engine.observe(&at(0, 0, 0, 3));
        assert_eq!((codes(&found), events), (Vec::new(), Vec::new()));
        // One initiation, answered at once: healthy.
        for n in 1..=3 {
            assert_eq!(codes(&engine.observe(&at(n, 1, 1, 3)).0), []);
        }
        // One more without an answer proves nothing yet (its response may be on its way);
        // a retry 5 s later, still unanswered, does.
        assert_eq!(codes(&engine.observe(&at(14, 2, 1, 3)).0), []);
        let (found, events) = engine.observe(&at(19, 3, 1, 4));
        // Interface codes first, then each peer's.
        assert_eq!(
            codes(&found),
            [(None, Code::NoPeerRoute), (Some(2), Code::HandshakeUnanswered)]
        );
        assert_eq!(found[1].diagnosis.since, 1019.0);
        assert_eq!(found[1].diagnosis.counters["handshake_initiation.transmit"], 2.0);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["diagnosis_started", "diagnosis_started"]);
        assert!(events[0].detail.starts_with("no_peer_route: 1 packets routed into wg0"));
        assert_eq!(events[1].peer, Some(PublicKey([2; 32]).to_string()));
        // The no_peer drops stop: the third snapshot after them has no code; `since` stays.
        let (found, events) = engine.observe(&at(20, 3, 1, 4));
        assert_eq!((found[1].diagnosis.since, events), (1019.0, Vec::new()));
        assert_eq!(codes(&engine.observe(&at(21, 3, 1, 4)).0).len(), 2);
        let (found, events) = engine.observe(&at(22, 3, 1, 4));
        assert_eq!(codes(&found), [(Some(2), Code::HandshakeUnanswered)]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "diagnosis_cleared");
        // A response comes: the handshake code clears at once.
        let (found, events) = engine.observe(&at(23, 3, 2, 4));
        assert_eq!((codes(&found), events.len()), (Vec::new(), 1));
    }
}
