//! Cardinality control: which peers get metric series of their own.
//!
//! A gateway with 10k peers has about 40 series per peer; most backends bill by series. With
//! `--top-peers N` only the N busiest peers (bytes over the last interval) and the peers of
//! `--peer-allowlist` keep series of their own; the others are summed, per interface, into one
//! series marked `otel.metric.overflow = true`, the attribute the OpenTelemetry specification
//! gives the series that collects what a cardinality limit keeps out. `--top-peers 0` without
//! an allowlist leaves per-interface aggregates only.
//!
//! The sums stay counters: each collection adds what the aggregated peers' counters grew by
//! since the previous one, so a peer that leaves or joins the top N neither rewinds the sum
//! (which a backend would read as a counter reset) nor counts twice. `/api/v1/peers` always
//! lists every peer.

use std::collections::{BTreeMap, HashMap};

use foldhash::HashMap as FastMap;

use crate::{
    model::{AggregatedPeers, Directional, LatencySnapshot, MessageCounts, PeerSnapshot, Snapshot},
    wg::PublicKey,
};

/// Which peers get series of their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesLimits {
    /// Keep series of their own for the this many busiest peers, over all interfaces; `None`:
    /// no limit (unless an allowlist is given, which alone means 0).
    pub top_peers: Option<usize>,
    /// Peers (public key in base64, or friendly name) that always keep their own series.
    pub allowlist: Vec<String>,
}

impl SeriesLimits {
    /// Whether every peer keeps its own series.
    pub fn unlimited(&self) -> bool {
        self.top_peers.is_none() && self.allowlist.is_empty()
    }

    fn allows(&self, peer: &PeerSnapshot) -> bool {
        self.allowlist.iter().any(|entry| {
            peer.name.as_deref() == Some(entry.as_str())
                || entry.parse::<PublicKey>().is_ok_and(|key| key == peer.public_key)
        })
    }
}

/// Applies [`SeriesLimits`] to each snapshot, keeping the aggregates' running sums.
#[derive(Debug, Default)]
pub struct SeriesSelector {
    limits: SeriesLimits,
    /// Every peer's counters at the previous snapshot, by interface name and key, updated in
    /// place (at 10,000 peers a copy of every peer made each interval beside the last was
    /// most of an exporting daemon's memory peak).
    previous: HashMap<String, FastMap<PublicKey, Counters>>,
    /// The running sums, by interface name.
    totals: HashMap<String, PeerSnapshot>,
    /// Snapshots applied: each peer's entry carries the last that listed it.
    round: u64,
}

/// What [`add_growth`] reads of a peer: its counters, without its identity and addresses.
#[derive(Debug, Default)]
struct Counters {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    drops: Option<BTreeMap<String, u64>>,
    fragments: Directional,
    icmp_too_big: Directional,
    icmp_unreachable: Directional,
    messages: MessageCounts,
    latency: BTreeMap<&'static str, LatencySnapshot>,
    /// The [`SeriesSelector::round`] that last listed the peer.
    round: u64,
}

impl Counters {
    /// Keeps `peer`'s counters, as seen in `round`.
    fn keep(&mut self, peer: &PeerSnapshot, round: u64) {
        self.rx_bytes = peer.rx_bytes;
        self.tx_bytes = peer.tx_bytes;
        self.rx_packets = peer.rx_packets;
        self.tx_packets = peer.tx_packets;
        self.drops.clone_from(&peer.drops);
        self.fragments = peer.underlay.fragments;
        self.icmp_too_big = peer.underlay.icmp_too_big;
        self.icmp_unreachable = peer.underlay.icmp_unreachable;
        self.messages = peer.underlay.messages;
        self.latency.clone_from(&peer.latency);
        self.round = round;
    }
}

impl SeriesSelector {
    /// A selector applying `limits`.
    pub fn new(limits: SeriesLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Marks which peers of `snapshot` keep their own series and sums the others per interface
    /// (into [`crate::model::InterfaceSnapshot::aggregated`]). Does nothing without limits.
    pub fn apply(&mut self, snapshot: &mut Snapshot) {
        if self.limits.unlimited() {
            return;
        }
        let own = self.own_series(snapshot);
        self.round += 1;
        let round = self.round;
        for (interface, own) in snapshot.interfaces.iter_mut().zip(own) {
            let totals = self
                .totals
                .entry(interface.name.clone())
                .or_insert_with(|| PeerSnapshot::zero(PublicKey([0; 32])));
            let previous = match self.previous.get_mut(&interface.name) {
                Some(previous) => previous,
                None => self.previous.entry(interface.name.clone()).or_default(),
            };
            let mut count = 0;
            for (peer, own) in interface.peers.iter().zip(&own) {
                // Every entry kept is of the previous round (the others go below); a new one
                // is of round 0, and one of this round is a key listed twice (counted once).
                let before = previous.entry(peer.public_key).or_default();
                let seen = before.round;
                if !own && seen != round {
                    count += 1;
                    add_growth(totals, peer, (seen != 0).then_some(&*before));
                }
                before.keep(peer, round);
            }
            let mut totals = totals.clone();
            // A gauge, not a counter: the current sum over the aggregated peers.
            totals.underlay.unanswered_initiations = interface
                .peers
                .iter()
                .zip(&own)
                .filter(|(_, own)| !**own)
                .map(|(peer, _)| peer.underlay.unanswered_initiations)
                .sum();
            interface.aggregated = Some(AggregatedPeers { own, count, totals });
        }
        for peers in self.previous.values_mut() {
            peers.retain(|_, counters| counters.round == round);
        }
        self.previous.retain(|_, peers| !peers.is_empty());
        let names: Vec<&String> = snapshot.interfaces.iter().map(|i| &i.name).collect();
        self.totals.retain(|name, _| names.contains(&name));
    }

    /// For each interface, for each of its peers: whether it keeps its own series.
    fn own_series(&self, snapshot: &Snapshot) -> Vec<Vec<bool>> {
        let mut own: Vec<Vec<bool>> = snapshot
            .interfaces
            .iter()
            .map(|interface| interface.peers.iter().map(|peer| self.limits.allows(peer)).collect())
            .collect();
        let top = self.limits.top_peers.unwrap_or(0);
        if top > 0 {
            let mut ranked: Vec<(usize, usize, &PeerSnapshot)> = snapshot
                .interfaces
                .iter()
                .enumerate()
                .flat_map(|(i, interface)| {
                    interface.peers.iter().enumerate().map(move |(p, peer)| (i, p, peer))
                })
                .filter(|(i, p, _)| !own[*i][*p])
                .collect();
            // Busiest over the last interval first; then by bytes since WireGuard counted
            // them, then by key, so that the choice is stable among idle peers.
            ranked.sort_by(|(_, _, a), (_, _, b)| {
                let rate = |p: &PeerSnapshot| p.rx_bytes_per_second + p.tx_bytes_per_second;
                let total = |p: &PeerSnapshot| p.rx_bytes.saturating_add(p.tx_bytes);
                rate(b)
                    .total_cmp(&rate(a))
                    .then(total(b).cmp(&total(a)))
                    .then(a.public_key.0.cmp(&b.public_key.0))
            });
            for (i, p, _) in ranked.into_iter().take(top) {
                own[i][p] = true;
            }
        }
        own
    }
}

/// Adds to `totals` what `peer`'s counters grew by since `before` (all of them for a peer not
/// seen before). A counter that went down (the interface was recreated) adds nothing.
fn add_growth(totals: &mut PeerSnapshot, peer: &PeerSnapshot, before: Option<&Counters>) {
    let grown = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
    let directional = |total: &mut Directional, now: Directional, then: Option<Directional>| {
        total.receive += grown(now.receive, then.map(|t| t.receive));
        total.transmit += grown(now.transmit, then.map(|t| t.transmit));
    };
    totals.rx_bytes += grown(peer.rx_bytes, before.map(|b| b.rx_bytes));
    totals.tx_bytes += grown(peer.tx_bytes, before.map(|b| b.tx_bytes));
    totals.rx_packets += grown(peer.rx_packets, before.map(|b| b.rx_packets));
    totals.tx_packets += grown(peer.tx_packets, before.map(|b| b.tx_packets));
    totals.rx_bytes_per_second += peer.rx_bytes_per_second;
    totals.tx_bytes_per_second += peer.tx_bytes_per_second;
    // The sum has drops when some peer's are counted (the kernel counts all or none).
    if let Some(drops) = &peer.drops {
        let sums = totals.drops.get_or_insert_default();
        for (reason, count) in drops {
            let then = before.and_then(|b| b.drops.as_ref()?.get(reason).copied());
            *sums.entry(reason.clone()).or_default() += grown(*count, then);
        }
    }
    let underlay = &mut totals.underlay;
    directional(&mut underlay.fragments, peer.underlay.fragments, before.map(|b| b.fragments));
    directional(
        &mut underlay.icmp_too_big,
        peer.underlay.icmp_too_big,
        before.map(|b| b.icmp_too_big),
    );
    directional(
        &mut underlay.icmp_unreachable,
        peer.underlay.icmp_unreachable,
        before.map(|b| b.icmp_unreachable),
    );
    for (kind, _, count) in peer.underlay.messages.iter() {
        let then_count = before.map(|b| b.messages.get(kind));
        directional(underlay.messages.get_mut(kind), count, then_count);
    }
    for (kind, latency) in &peer.latency {
        let then = before.and_then(|b| b.latency.get(kind));
        let total = totals.latency.entry(kind).or_default();
        total.buckets.resize(total.buckets.len().max(latency.buckets.len()), 0);
        for (bucket, count) in latency.buckets.iter().enumerate() {
            let then_count = then.and_then(|t| t.buckets.get(bucket).copied());
            total.buckets[bucket] += grown(*count, then_count);
        }
        total.count = total.buckets.iter().sum();
        total.sum_seconds += (latency.sum_seconds - then.map_or(0.0, |t| t.sum_seconds)).max(0.0);
        total.lost += grown(latency.lost, then.map(|t| t.lost));
    }
}

#[cfg(test)]
mod tests {
    use collector_common::underlay::MessageType;

    use super::*;
    use crate::export::prometheus::{render, tests::snapshot};

    /// The test gateway with three peers: 1 (named alice), 2 and 3, moving `rates` bytes per
    /// second and having `bytes` received.
    fn gateway(rates: [f64; 3], bytes: [u64; 3]) -> Snapshot {
        let mut snapshot = snapshot();
        let template = snapshot.interfaces[0].peers[1].clone();
        snapshot.interfaces[0]
            .peers
            .push(PeerSnapshot { public_key: PublicKey([3; 32]), ..template });
        for ((peer, rate), bytes) in snapshot.interfaces[0].peers.iter_mut().zip(rates).zip(bytes) {
            peer.rx_bytes_per_second = rate;
            peer.tx_bytes_per_second = 0.0;
            peer.rx_bytes = bytes;
            *peer.underlay.messages.get_mut(MessageType::TransportData) =
                Directional { receive: bytes, transmit: 1 };
        }
        snapshot
    }

    fn own(snapshot: &Snapshot) -> Vec<bool> {
        snapshot.interfaces[0].aggregated.as_ref().map(|a| a.own.clone()).unwrap_or_default()
    }

    fn aggregate(snapshot: &Snapshot) -> &PeerSnapshot {
        &snapshot.interfaces[0].aggregated.as_ref().expect("aggregated").totals
    }

    #[test]
    fn without_limits_every_peer_keeps_its_series() {
        let mut snapshot = gateway([1.0, 2.0, 3.0], [10, 20, 30]);
        SeriesSelector::new(SeriesLimits::default()).apply(&mut snapshot);
        assert!(snapshot.interfaces[0].aggregated.is_none());
        assert_eq!(snapshot.series().count(), 3);
    }

    #[test]
    fn the_busiest_peers_keep_series_and_the_rest_sum_as_counters() {
        let mut selector =
            SeriesSelector::new(SeriesLimits { top_peers: Some(1), allowlist: Vec::new() });
        let mut first = gateway([5.0, 9.0, 1.0], [100, 200, 300]);
        selector.apply(&mut first);
        assert_eq!(own(&first), [false, true, false]);
        assert_eq!(aggregate(&first).rx_bytes, 400, "peers 1 and 3 whole, at first sight");
        assert_eq!(
            aggregate(&first).underlay.messages.get(MessageType::TransportData).receive,
            400
        );
        assert_eq!(first.interfaces[0].aggregated.as_ref().map(|a| a.count), Some(2));

        // Peer 1 becomes the busiest: its series is its own again, peer 2 joins the sum with
        // only what it grew by (250 - 200), and the sum never goes down.
        let mut second = gateway([9.0, 5.0, 1.0], [150, 250, 330]);
        selector.apply(&mut second);
        assert_eq!(own(&second), [true, false, false]);
        assert_eq!(aggregate(&second).rx_bytes, 400 + 50 + 30);
        assert_eq!(
            aggregate(&second).underlay.messages.get(MessageType::TransportData).transmit,
            2
        );

        let text = render(&second);
        assert!(
            text.lines().any(|line| line
                == r#"wireguard_peer_io_bytes_total{wireguard_interface="wg0",otel_metric_overflow="true",network_io_direction="receive"} 480"#),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == r#"wgtel_series_aggregated_peers{wireguard_interface="wg0"} 2"#)
        );
        assert!(text.contains(&PublicKey([1; 32]).to_string()), "peer 1 has series again");
        assert!(!text.contains(&PublicKey([2; 32]).to_string()), "peer 2 has no series now");
    }

    #[test]
    fn allowlisted_peers_keep_series_by_name_or_key_and_zero_leaves_only_the_sums() {
        let limits = SeriesLimits {
            top_peers: None,
            allowlist: vec!["al\"ice\\".into(), PublicKey([3; 32]).to_string()],
        };
        let mut snapshot = gateway([1.0, 9.0, 1.0], [1, 2, 3]);
        SeriesSelector::new(limits).apply(&mut snapshot);
        assert_eq!(own(&snapshot), [true, false, true]);
        assert_eq!(aggregate(&snapshot).rx_bytes, 2);

        let mut snapshot = gateway([1.0, 9.0, 1.0], [1, 2, 3]);
        SeriesSelector::new(SeriesLimits { top_peers: Some(0), allowlist: Vec::new() })
            .apply(&mut snapshot);
        assert_eq!(own(&snapshot), [false, false, false]);
        assert_eq!(aggregate(&snapshot).rx_bytes, 6);
        let series: Vec<Option<usize>> =
            snapshot.series().map(|(_, peer)| peer.aggregated).collect();
        assert_eq!(series, [Some(3)], "one series per interface");
        assert!(!render(&snapshot).contains("wireguard_peer_public_key="));
    }
}
