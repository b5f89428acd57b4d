//! Peer-health rules with hysteresis. Each [`Snapshot`] is measured against every [`Rule`];
//! a condition must hold for the rule's `for` before its alert fires, and be gone for as long
//! before it resolves, so that a single blip neither fires nor resolves anything. Firing and
//! resolving are [`AlertChange`]s: the collector logs them as events and hands them to the
//! webhook.
//!
//! Longer than most modules: a third of it is tests, one per rule and per hysteresis case.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, SystemTime},
};

use foldhash::HashMap as FastMap;
use serde::{Deserialize, Serialize};

use crate::{
    events::Event,
    model::{PeerSnapshot, Snapshot},
    wg::PublicKey,
};

/// The `for` of every rule unless the configuration says otherwise.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(30);
/// A peer whose last handshake is older than this is stale.
pub const DEFAULT_HANDSHAKE_STALE: Duration = Duration::from_secs(600);
/// An always-on peer moving fewer bytes per second than this (both directions) is quiet.
pub const DEFAULT_QUIET_BYTES_PER_SECOND: f64 = 1.0;
/// Drops per second of one peer above this alert.
pub const DEFAULT_DROP_RATE: f64 = 10.0;
/// Host CPU busy fraction (neither idle nor iowait) above this alert.
pub const DEFAULT_CPU_SATURATED: f64 = 0.9;
/// Counter rules (unanswered handshakes, fragments) hold while the counter grew within this.
pub const DEFAULT_GROWTH_WINDOW: Duration = Duration::from_secs(30);

/// One health rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The peer had a handshake, but none for longer than `handshake-stale`.
    HandshakeStale,
    /// A peer under `expected-peers` is not on its interface, or never completed a handshake.
    ExpectedPeerMissing,
    /// A peer under `always-on` moves fewer than `quiet-bytes-per-second`.
    AlwaysOnQuiet,
    /// The peer's packets are dropped faster than `drop-rate` per second.
    DropRate,
    /// Handshake initiations to the peer go unanswered (their count grew within the window).
    HandshakeUnanswered,
    /// The peer's datagrams are fragmented on the underlay (the count grew within the window).
    Fragmentation,
    /// The host's CPUs are busier than `cpu-saturated` (host-wide).
    CpuSaturated,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Self; 7] = [
        Self::HandshakeStale,
        Self::ExpectedPeerMissing,
        Self::AlwaysOnQuiet,
        Self::DropRate,
        Self::HandshakeUnanswered,
        Self::Fragmentation,
        Self::CpuSaturated,
    ];

    /// The rule's name in the API, events, webhook and configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeStale => "handshake_stale",
            Self::ExpectedPeerMissing => "expected_peer_missing",
            Self::AlwaysOnQuiet => "always_on_quiet",
            Self::DropRate => "drop_rate",
            Self::HandshakeUnanswered => "handshake_unanswered",
            Self::Fragmentation => "fragmentation",
            Self::CpuSaturated => "cpu_saturated",
        }
    }

    /// The rule named `name` (`handshake_stale`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rule| rule.as_str() == name)
    }
}

/// A peer that must be there: on `interface`, or on any watched interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPeer {
    /// The interface it must be on; `None`: any watched interface.
    pub interface: Option<String>,
    /// Its public key.
    pub public_key: PublicKey,
    /// Its friendly name, when known.
    pub name: Option<String>,
}

/// Thresholds and windows of the rules (the `[alerts]` table).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    /// How long a condition must hold before its alert fires, and be gone before it resolves.
    pub hold: Duration,
    /// `hold` of single rules.
    pub hold_by_rule: BTreeMap<Rule, Duration>,
    /// A handshake older than this is stale.
    pub handshake_stale: Duration,
    /// An always-on peer below this many bytes per second (both directions) is quiet.
    pub quiet_bytes_per_second: f64,
    /// Drops per second of one peer above this alert.
    pub drop_rate: f64,
    /// Host CPU busy fraction above this alerts.
    pub cpu_saturated: f64,
    /// Counter rules hold while their counter grew within this (at least two intervals).
    pub growth_window: Duration,
    /// Peers that must be there and have handshaken.
    pub expected_peers: Vec<ExpectedPeer>,
    /// Peers that must always move traffic.
    pub always_on: Vec<PublicKey>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            hold: DEFAULT_HOLD,
            hold_by_rule: BTreeMap::new(),
            handshake_stale: DEFAULT_HANDSHAKE_STALE,
            quiet_bytes_per_second: DEFAULT_QUIET_BYTES_PER_SECOND,
            drop_rate: DEFAULT_DROP_RATE,
            cpu_saturated: DEFAULT_CPU_SATURATED,
            growth_window: DEFAULT_GROWTH_WINDOW,
            expected_peers: Vec::new(),
            always_on: Vec::new(),
        }
    }
}

impl AlertConfig {
    /// The `for` of `rule`.
    pub fn hold(&self, rule: Rule) -> Duration {
        self.hold_by_rule.get(&rule).copied().unwrap_or(self.hold)
    }
}

/// An alert that fires (or did, in an [`AlertChange`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule.
    pub rule: Rule,
    /// The WireGuard interface; `null` for host-wide rules and for an expected peer bound to
    /// no interface.
    pub interface: Option<String>,
    /// The peer's public key; `null` for host-wide rules.
    pub peer: Option<String>,
    /// The peer's friendly name, when known.
    pub name: Option<String>,
    /// When it fired, seconds since the Unix epoch.
    pub since: f64,
    /// The measured value: seconds (handshake_stale), bytes per second (always_on_quiet),
    /// drops per second (drop_rate), unanswered initiations, outer fragments, CPU busy
    /// fraction, 1 or 0 (expected_peer_missing).
    pub value: f64,
    /// The measurement in words, e.g. `last handshake 612 s ago (threshold 600 s)`.
    pub detail: String,
}

/// Whether an [`AlertChange`] fires or resolves its alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition held for the rule's `for`.
    Firing,
    /// The condition was gone for the rule's `for`.
    Resolved,
}

/// An alert firing or resolving: what the webhook receives, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertChange {
    /// 1 for the daemon's first change, then one more each (a gap: changes the webhook queue
    /// had no room for).
    pub sequence: u64,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// When the collection that saw it finished, seconds since the Unix epoch.
    pub at: f64,
    /// The alert; on resolving, `value` and `detail` are the latest measurement.
    #[serde(flatten)]
    pub alert: Alert,
}

impl AlertChange {
    /// The change as an operational event (`alert_firing` / `alert_resolved`).
    pub fn to_event(&self) -> Event {
        let kind = match self.status {
            AlertStatus::Firing => "alert_firing",
            AlertStatus::Resolved => "alert_resolved",
        };
        Event {
            at: self.at,
            kind: kind.to_owned(),
            interface: self.alert.interface.clone().unwrap_or_default(),
            peer: self.alert.peer.clone(),
            name: self.alert.name.clone(),
            detail: format!("{}: {}", self.alert.rule.as_str(), self.alert.detail),
        }
    }
}

/// What a rule is about: a peer on an interface, an expected peer, or the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Subject {
    interface: Option<String>,
    peer: Option<PublicKey>,
}

/// One rule's reading of one subject.
#[derive(Clone, Debug)]
struct Measurement {
    holds: bool,
    value: f64,
    detail: String,
    name: Option<String>,
}

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The condition holds since `since`, not yet for `for`.
    Pending { since: SystemTime },
    /// Fired at `since`; the condition is gone since `clear_since`, when it is.
    Firing { since: SystemTime, clear_since: Option<SystemTime> },
}

#[derive(Clone, Debug)]
struct AlertState {
    phase: Phase,
    latest: Measurement,
}

/// A peer's counters at the previous snapshot.
#[derive(Clone, Copy, Debug)]
struct PeerCounters {
    at: SystemTime,
    drops: u64,
    unanswered: u64,
    fragments: u64,
}

/// When a peer's counter last grew.
#[derive(Clone, Copy, Debug, Default)]
struct LastGrowth {
    unanswered: Option<SystemTime>,
    fragments: Option<SystemTime>,
}

/// What the engine keeps of one peer between snapshots.
#[derive(Clone, Copy, Debug)]
struct PeerTrack {
    previous: PeerCounters,
    growth: LastGrowth,
    /// The last measurement that listed the peer.
    round: u64,
}

/// The tracks of one interface's peers, by key.
type InterfaceTracks = FastMap<PublicKey, PeerTrack>;

/// Measures snapshots against the rules and keeps each alert's state.
#[derive(Debug)]
pub struct RuleEngine {
    config: AlertConfig,
    states: BTreeMap<(Rule, Subject), AlertState>,
    /// By interface name, then peer key (a peer is found without making its interface a key
    /// again each collection).
    tracks: FastMap<String, InterfaceTracks>,
    /// Measurements made: a track not listed in the latest is forgotten.
    round: u64,
    sequence: u64,
}

impl RuleEngine {
    /// An engine with no alert pending or firing.
    pub fn new(config: AlertConfig) -> Self {
        Self { config, states: BTreeMap::new(), tracks: FastMap::default(), round: 0, sequence: 0 }
    }

    /// Measures `snapshot` and moves every alert on; the alerts that fired or resolved.
    pub fn evaluate(&mut self, snapshot: &Snapshot) -> Vec<AlertChange> {
        let now = snapshot.taken_at;
        let mut measured = self.measure(snapshot);
        let mut changes = Vec::new();
        let keys: Vec<(Rule, Subject)> = self.states.keys().cloned().collect();
        for key in keys {
            let hold = self.config.hold(key.0);
            let current = measured.remove(&key);
            let Some(state) = self.states.get_mut(&key) else { continue };
            let holds = current.as_ref().is_some_and(|m| m.holds);
            let present = current.is_some();
            if let Some(current) = current {
                state.latest = current;
            }
            match (&mut state.phase, holds) {
                (Phase::Pending { since }, true) => {
                    if elapsed(*since, now) >= hold {
                        state.phase = Phase::Firing { since: now, clear_since: None };
                        changes.push((AlertStatus::Firing, key, now));
                    }
                }
                (Phase::Pending { .. }, false) => {
                    self.states.remove(&key);
                }
                (Phase::Firing { clear_since, .. }, true) => *clear_since = None,
                (Phase::Firing { since, clear_since }, false) => {
                    let fired = *since;
                    let cleared = *clear_since.get_or_insert(now);
                    if !present {
                        "no longer measured: the peer or its interface is gone"
                            .clone_into(&mut state.latest.detail);
                    }
                    if elapsed(cleared, now) >= hold {
                        changes.push((AlertStatus::Resolved, key, fired));
                    }
                }
            }
        }
        for (key, measurement) in measured.into_iter().filter(|(_, m)| m.holds) {
            let phase = if self.config.hold(key.0).is_zero() {
                changes.push((AlertStatus::Firing, key.clone(), now));
                Phase::Firing { since: now, clear_since: None }
            } else {
                Phase::Pending { since: now }
            };
            self.states.insert(key, AlertState { phase, latest: measurement });
        }
        let at = unix_seconds(now);
        changes
            .into_iter()
            .filter_map(|(status, key, since)| {
                let alert = self.states.get(&key).map(|state| alert(&key, state, since))?;
                if status == AlertStatus::Resolved {
                    self.states.remove(&key);
                }
                self.sequence += 1;
                Some(AlertChange { sequence: self.sequence, status, at, alert })
            })
            .collect()
    }

    /// Every firing alert, by rule and subject.
    pub fn firing(&self) -> Vec<Alert> {
        self.states
            .iter()
            .filter_map(|(key, state)| match state.phase {
                Phase::Firing { since, .. } => Some(alert(key, state, since)),
                Phase::Pending { .. } => None,
            })
            .collect()
    }

    /// Keeps `counters` as the peer's latest; its counters at the measurement before (none
    /// the first time) and when they last grew, `counters` included.
    fn track(
        tracks: &mut FastMap<String, InterfaceTracks>,
        round: u64,
        (interface, key): (&str, PublicKey),
        counters: PeerCounters,
    ) -> (Option<PeerCounters>, LastGrowth) {
        let tracks = match tracks.get_mut(interface) {
            Some(tracks) => tracks,
            None => tracks.entry(interface.to_owned()).or_default(),
        };
        let track = tracks.entry(key).or_insert(PeerTrack {
            previous: counters,
            growth: LastGrowth::default(),
            round: 0,
        });
        let previous = (track.round + 1 == round).then_some(track.previous);
        if let Some(previous) = previous {
            if counters.unanswered > previous.unanswered {
                track.growth.unanswered = Some(counters.at);
            }
            if counters.fragments > previous.fragments {
                track.growth.fragments = Some(counters.at);
            }
        }
        *track = PeerTrack { previous: counters, growth: track.growth, round };
        (previous, track.growth)
    }

    /// Every rule's reading of every subject it applies to in `snapshot`.
    fn measure(&mut self, snapshot: &Snapshot) -> BTreeMap<(Rule, Subject), Measurement> {
        let now = snapshot.taken_at;
        let window = self.config.growth_window;
        let mut out = BTreeMap::new();
        self.round += 1;
        let round = self.round;
        // Only a reading that holds, or of a rule already pending or firing, is used: the
        // others (nearly all, on a healthy gateway) get no detail text and no key.
        let tracked: HashSet<(Rule, &str, PublicKey)> = self
            .states
            .keys()
            .filter_map(|(rule, subject)| {
                Some((*rule, subject.interface.as_deref()?, subject.peer?))
            })
            .collect();
        let window_text = humantime::format_duration(window).to_string();
        for (interface, peer) in snapshot.peers() {
            let counters = PeerCounters {
                at: now,
                drops: peer.drops.as_ref().map_or(0, |drops| drops.values().sum()),
                unanswered: peer.underlay.unanswered_initiations,
                fragments: peer.underlay.fragments.receive + peer.underlay.fragments.transmit,
            };
            let (previous, growth) =
                Self::track(&mut self.tracks, round, (&interface.name, peer.public_key), counters);
            let mut put = |rule: Rule, holds: bool, value: f64, detail: &dyn Fn() -> String| {
                if !holds && !tracked.contains(&(rule, interface.name.as_str(), peer.public_key)) {
                    return;
                }
                let subject = Subject {
                    interface: Some(interface.name.clone()),
                    peer: Some(peer.public_key),
                };
                let name = peer.name.clone();
                out.insert((rule, subject), Measurement { holds, value, detail: detail(), name });
            };
            if let Some(age) = peer.last_handshake_seconds_ago {
                let limit = self.config.handshake_stale.as_secs_f64();
                let detail = || format!("last handshake {age:.0} s ago (threshold {limit:.0} s)");
                put(Rule::HandshakeStale, age > limit, age, &detail);
            }
            let recent = |at: Option<SystemTime>| at.is_some_and(|at| elapsed(at, now) <= window);
            put(
                Rule::HandshakeUnanswered,
                recent(growth.unanswered),
                counters.unanswered as f64,
                &|| {
                    format!(
                        "{} initiations unanswered, {} within the last {window_text}",
                        counters.unanswered,
                        if recent(growth.unanswered) { "more" } else { "none" }
                    )
                },
            );
            put(Rule::Fragmentation, recent(growth.fragments), counters.fragments as f64, &|| {
                format!(
                    "{} outer fragments, {} within the last {window_text}",
                    counters.fragments,
                    if recent(growth.fragments) { "more" } else { "none" }
                )
            });
            // Rates need the previous reading of this engine: the snapshot's first rates are 0.
            let Some(previous) = previous else { continue };
            let seconds = elapsed(previous.at, now).as_secs_f64();
            if seconds > 0.0 {
                let rate = counters.drops.saturating_sub(previous.drops) as f64 / seconds;
                let limit = self.config.drop_rate;
                let detail = || format!("{rate:.1} drops/s (threshold {limit}/s)");
                put(Rule::DropRate, rate > limit, rate, &detail);
            }
            if self.config.always_on.contains(&peer.public_key) {
                let rate = peer.rx_bytes_per_second + peer.tx_bytes_per_second;
                let limit = self.config.quiet_bytes_per_second;
                let detail = || format!("{rate:.1} B/s through the tunnel (threshold {limit} B/s)");
                put(Rule::AlwaysOnQuiet, rate < limit, rate, &detail);
            }
        }
        for tracks in self.tracks.values_mut() {
            tracks.retain(|_, track| track.round == round);
        }
        self.tracks.retain(|_, tracks| !tracks.is_empty());
        for expected in &self.config.expected_peers {
            let subject =
                Subject { interface: expected.interface.clone(), peer: Some(expected.public_key) };
            out.insert((Rule::ExpectedPeerMissing, subject), expected_reading(expected, snapshot));
        }
        // The first host reading has no CPU utilization: nothing to measure yet.
        if let Some(busy) = snapshot.host.cpu_busy() {
            let limit = self.config.cpu_saturated;
            let detail = format!("CPU {:.1}% busy (threshold {:.1}%)", busy * 100.0, limit * 100.0);
            let host = Subject { interface: None, peer: None };
            let reading = Measurement { holds: busy > limit, value: busy, detail, name: None };
            out.insert((Rule::CpuSaturated, host), reading);
        }
        out
    }
}

/// Whether `expected` is on its interface (or any) and has handshaken.
fn expected_reading(expected: &ExpectedPeer, snapshot: &Snapshot) -> Measurement {
    let found: Option<(&str, &PeerSnapshot)> = snapshot
        .peers()
        .filter(|(interface, _)| expected.interface.as_ref().is_none_or(|i| *i == interface.name))
        .find(|(_, peer)| peer.public_key == expected.public_key)
        .map(|(interface, peer)| (interface.name.as_str(), peer));
    let (holds, detail) = match found {
        None => (
            true,
            match &expected.interface {
                Some(interface) => format!("not on {interface}"),
                None => "not on any watched interface".to_owned(),
            },
        ),
        Some((interface, peer)) => match peer.last_handshake_seconds_ago {
            None => (true, format!("on {interface}, never a handshake")),
            Some(age) => (false, format!("on {interface}, last handshake {age:.0} s ago")),
        },
    };
    Measurement { holds, value: if holds { 1.0 } else { 0.0 }, detail, name: expected.name.clone() }
}

fn alert((rule, subject): &(Rule, Subject), state: &AlertState, since: SystemTime) -> Alert {
    Alert {
        rule: *rule,
        interface: subject.interface.clone(),
        peer: subject.peer.map(|key| key.to_string()),
        name: state.latest.name.clone(),
        since: unix_seconds(since),
        value: state.latest.value,
        detail: state.latest.detail.clone(),
    }
}

/// `now - since`, zero when the clock went backwards.
fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::export::prometheus::tests::snapshot;

    /// The test gateway (peer 1 active, peer 2 never) at `seconds` after the epoch.
    fn at(seconds: u64) -> Snapshot {
        let mut snapshot = snapshot();
        snapshot.taken_at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        snapshot
    }

    fn engine(config: AlertConfig) -> RuleEngine {
        RuleEngine::new(AlertConfig { hold: Duration::from_secs(3), ..config })
    }

    /// Feeds one snapshot per second from `start`, each changed by `change(second)`; the
    /// (second, status, rule) of every change of `rule`.
    fn run(
        engine: &mut RuleEngine,
        seconds: std::ops::Range<u64>,
        rule: Rule,
        change: impl Fn(u64, &mut Snapshot),
    ) -> Vec<(u64, AlertStatus)> {
        let mut seen = Vec::new();
        for second in seconds {
            let mut snapshot = at(second);
            change(second, &mut snapshot);
            for change in engine.evaluate(&snapshot) {
                if change.alert.rule == rule {
                    seen.push((second, change.status));
                }
            }
        }
        seen
    }

    /// Sets a peer's readings at a second of the test.
    type Condition = fn(u64, &mut PeerSnapshot);

    fn alice(snapshot: &mut Snapshot) -> &mut PeerSnapshot {
        &mut snapshot.interfaces[0].peers[0]
    }

    #[test]
    fn a_condition_fires_after_for_and_resolves_after_for_without_flapping_on_blips() {
        let mut engine = engine(AlertConfig::default());
        // Stale from 10 to 19, except a one-second blip at 13; a one-second relapse at 22.
        let stale = |second: u64| (10..20).contains(&second) && second != 13 || second == 22;
        let seen = run(&mut engine, 0..30, Rule::HandshakeStale, |second, snapshot| {
            alice(snapshot).last_handshake_seconds_ago =
                Some(if stale(second) { 700.0 } else { 5.0 });
        });
        // Pending from 14 (the blip reset it), fires at 17; gone from 20 (22 does not count),
        // so the clock restarts at 23 and it resolves at 26.
        assert_eq!(seen, [(17, AlertStatus::Firing), (26, AlertStatus::Resolved)]);
        assert!(engine.firing().is_empty());
    }

    #[test]
    fn each_peer_rule_fires_on_its_condition_and_resolves_when_it_ends() {
        let key = PublicKey([1; 32]);
        let config = AlertConfig {
            always_on: vec![key],
            growth_window: Duration::from_secs(2),
            drop_rate: 10.0,
            ..AlertConfig::default()
        };
        let cases: [(Rule, Condition); 5] = [
            (Rule::HandshakeStale, |s, p| {
                p.last_handshake_seconds_ago = Some(if (5..15).contains(&s) { 601.0 } else { 1.0 });
            }),
            (Rule::AlwaysOnQuiet, |s, p| {
                let rate = if (5..15).contains(&s) { 0.5 } else { 100.0 };
                (p.rx_bytes_per_second, p.tx_bytes_per_second) = (rate, 0.0);
            }),
            (Rule::DropRate, |s, p| {
                // 20 drops a second from 5 to 14, then none.
                p.drops = Some(BTreeMap::from([("NETFILTER_DROP".into(), s.clamp(5, 15) * 20)]));
            }),
            (Rule::HandshakeUnanswered, |s, p| {
                // One more unanswered initiation every second second from 5 to 14.
                p.underlay.unanswered_initiations = s.clamp(5, 15) / 2;
            }),
            (Rule::Fragmentation, |s, p| {
                p.underlay.fragments.transmit = s.clamp(5, 15) / 2 * 3;
            }),
        ];
        for (rule, condition) in cases {
            let mut engine = engine(config.clone());
            let seen = run(&mut engine, 0..30, rule, |second, snapshot| {
                condition(second, alice(snapshot));
            });
            assert_eq!(seen.len(), 2, "{rule:?}: {seen:?}");
            let ((fired, firing), (resolved, resolving)) = (seen[0], seen[1]);
            assert_eq!((firing, resolving), (AlertStatus::Firing, AlertStatus::Resolved));
            // Holds from 5 or 6 (rates and growth need a previous reading), fires 3 s later;
            // gone from 15 (counter rules: their 2 s window later), resolves 3 s after that.
            assert!((8..=9).contains(&fired), "{rule:?}: {seen:?}");
            let gone = if matches!(rule, Rule::HandshakeUnanswered | Rule::Fragmentation) {
                17
            } else {
                15
            };
            assert!((gone + 3..=gone + 4).contains(&resolved), "{rule:?}: {seen:?}");
        }
    }

    #[test]
    fn an_expected_peer_fires_while_missing_or_never_handshaken() {
        let absent = PublicKey([9; 32]);
        let config = AlertConfig {
            expected_peers: vec![
                ExpectedPeer { interface: None, public_key: absent, name: Some("carol".into()) },
                ExpectedPeer {
                    interface: Some("wg0".into()),
                    public_key: PublicKey([2; 32]),
                    name: None,
                },
                ExpectedPeer { interface: None, public_key: PublicKey([1; 32]), name: None },
            ],
            ..AlertConfig::default()
        };
        let mut engine = engine(config);
        let mut fired = Vec::new();
        for second in 0..10 {
            let mut snapshot = at(second);
            if second >= 5 {
                // carol joins with a handshake; peer 2 is still without one.
                let mut carol = snapshot.interfaces[0].peers[0].clone();
                carol.public_key = absent;
                carol.last_handshake_seconds_ago = Some(4.0);
                snapshot.interfaces[0].peers.push(carol);
            }
            fired.extend(
                engine
                    .evaluate(&snapshot)
                    .into_iter()
                    .map(|change| (second, change.status, change.alert.peer, change.alert.detail)),
            );
        }
        let carol = Some(absent.to_string());
        let two = Some(PublicKey([2; 32]).to_string());
        assert_eq!(
            fired,
            [
                (3, AlertStatus::Firing, carol.clone(), "not on any watched interface".into()),
                (3, AlertStatus::Firing, two, "on wg0, never a handshake".into()),
                (8, AlertStatus::Resolved, carol, "on wg0, last handshake 4 s ago".into()),
            ]
        );
        let firing = engine.firing();
        assert_eq!(firing.len(), 1);
        assert_eq!(
            (firing[0].rule, firing[0].since, firing[0].value),
            (Rule::ExpectedPeerMissing, 3.0, 1.0)
        );
    }

    #[test]
    fn cpu_saturation_is_host_wide_and_changes_become_events() {
        let mut engine = engine(AlertConfig::default());
        let mut changes = Vec::new();
        for second in 0..12 {
            let mut snapshot = at(second);
            let idle = if (2..6).contains(&second) { 0.05 } else { 0.5 };
            snapshot.host.cpu_utilization = BTreeMap::from([("idle", idle), ("user", 1.0 - idle)]);
            changes.extend(engine.evaluate(&snapshot));
        }
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!((changes[0].sequence, changes[1].sequence), (1, 2));
        let alert = &changes[0].alert;
        assert_eq!(
            (alert.rule, alert.interface.as_deref(), alert.peer.as_deref()),
            (Rule::CpuSaturated, None, None)
        );
        assert!((alert.value - 0.95).abs() < 1e-9);
        let event = changes[0].to_event();
        assert_eq!(
            (event.kind.as_str(), event.detail.as_str()),
            ("alert_firing", "cpu_saturated: CPU 95.0% busy (threshold 90.0%)")
        );
        assert_eq!(changes[1].to_event().kind, "alert_resolved");
        assert_eq!(changes[1].alert.since, 5.0, "since: when it fired");
        let json = serde_json::to_value(&changes[1]).unwrap_or_default();
        assert_eq!(json["status"], "resolved");
        assert_eq!(json["rule"], "cpu_saturated");
        assert_eq!(json["sequence"], 2);
    }

    #[test]
    fn a_peer_that_goes_away_resolves_its_alerts_and_zero_for_fires_at_once() {
        let config = AlertConfig { hold: Duration::ZERO, ..AlertConfig::default() };
        let mut engine = RuleEngine::new(config);
        let mut stale = at(0);
        alice(&mut stale).last_handshake_seconds_ago = Some(900.0);
        assert_eq!(engine.evaluate(&stale)[0].status, AlertStatus::Firing);
        let mut gone = at(1);
        gone.interfaces[0].peers.remove(0);
        let resolved = engine.evaluate(&gone);
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert_eq!(
            resolved[0].alert.detail,
            "no longer measured: the peer or its interface is gone"
        );
    }
}
