//! Operational events: what changed between two snapshots. An interface created, destroyed or
//! restarted (same name, new ifindex), its listen port changed; a peer added or removed, its
//! endpoint roaming, its AllowedIPs changed; a watched link down, up or flapping (from
//! [`crate::links`]). Kept in a bounded log, newest last, with a count per type since the
//! daemon started.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use foldhash::HashMap as FastMap;

use serde::{Deserialize, Serialize};

use crate::{
    links::LinkChange,
    model::{InterfaceSnapshot, PeerSnapshot, Snapshot},
    wg::{AllowedIp, PublicKey},
};

/// How many events the log keeps.
pub const EVENT_LOG_CAPACITY: usize = 1000;

/// A link that goes down this many times within [`FLAP_WINDOW`] is flapping.
pub const FLAP_DOWNS: usize = 3;

/// See [`FLAP_DOWNS`].
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);

/// One change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the collection that saw it finished, seconds since the Unix epoch.
    pub at: f64,
    /// `interface_created`, `interface_destroyed`, `interface_restarted`,
    /// `listen_port_changed`, `public_key_changed`, `peer_added`, `peer_removed`, `endpoint_roamed`,
    /// `allowed_ips_changed`, `link_down`, `link_up`, `link_flapping`, `alert_firing`,
    /// `alert_resolved`, `diagnosis_started`, `diagnosis_cleared`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The WireGuard interface (for link events: the link, which may be an underlay NIC).
    pub interface: String,
    /// The peer's public key, for peer events.
    pub peer: Option<String>,
    /// The peer's friendly name, when known.
    pub name: Option<String>,
    /// What changed, e.g. `198.18.1.10:51820 -> 198.18.1.99:40000`.
    pub detail: String,
}

/// The events seen so far and the state they are computed against.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<Event>,
    counts: BTreeMap<String, u64>,
    previous: Option<HashMap<InterfaceKey, InterfaceState>>,
    /// Snapshots compared so far.
    round: u64,
    /// When each link went down, within the last [`FLAP_WINDOW`].
    link_downs: HashMap<String, VecDeque<SystemTime>>,
    /// Links reported flapping whose burst is not over.
    flapping: HashSet<String>,
}

/// An interface's identity between snapshots: its network namespace's label (`None` in the start
/// one) and its name; two namespaces may each hold a `wg0`. An event names the interface, and
/// its detail ends with `(netns NAME)` outside the start namespace.
type InterfaceKey = (Option<String>, String);

/// What an event compares of one interface: typed values, made text only for an event. Kept
/// from one snapshot to the next and changed in place: only what changed is copied.
#[derive(Debug)]
struct InterfaceState {
    ifindex: u32,
    listen_port: Option<u16>,
    public_key: Option<PublicKey>,
    peers: FastMap<PublicKey, PeerState>,
}

#[derive(Debug)]
struct PeerState {
    name: Option<String>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<AllowedIp>,
    /// The last snapshot (by [`EventLog::round`]) that listed the peer.
    seen: u64,
}

/// An event found while comparing, with what orders it: its interface, then the peer's key as
/// text (empty for an interface's own events); events of one subject keep their order.
type Found = (InterfaceKey, String, Event);

impl EventLog {
    /// Compares `snapshot` with the previous one and logs what changed; the first snapshot
    /// only sets the baseline. Returns the new events.
    pub fn observe(&mut self, snapshot: &Snapshot) -> Vec<Event> {
        let at = snapshot
            .taken_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.round += 1;
        let new = match &mut self.previous {
            Some(states) => update(states, snapshot, at, self.round),
            None => {
                let states = snapshot
                    .interfaces
                    .iter()
                    .map(|i| (interface_key(i), interface_state(i, self.round)))
                    .collect();
                self.previous = Some(states);
                Vec::new()
            }
        };
        for event in &new {
            self.record(event.clone());
        }
        new
    }

    /// Turns link state changes into `link_down` / `link_up` events for the links `role` names
    /// (`Some("WireGuard interface")`, `Some("underlay NIC")`; `None`: not watched), and a
    /// `link_flapping` event when a link went down [`FLAP_DOWNS`] times within [`FLAP_WINDOW`]
    /// (once per burst: again only after a quiet window). Returns the new events.
    pub fn observe_links(
        &mut self,
        changes: &[LinkChange],
        role: impl Fn(&str) -> Option<&'static str>,
    ) -> Vec<Event> {
        let mut new = Vec::new();
        for change in changes {
            let Some(role) = role(&change.name) else { continue };
            let at = change
                .seen_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            let event = |kind: &str, detail: String| Event {
                at,
                kind: kind.to_owned(),
                interface: change.name.clone(),
                peer: None,
                name: None,
                detail,
            };
            if change.up {
                new.push(event("link_up", format!("{role} up")));
                continue;
            }
            new.push(event("link_down", format!("{role} down")));
            let downs = self.link_downs.entry(change.name.clone()).or_default();
            downs.push_back(change.seen_at);
            while downs.front().is_some_and(|first| {
                change.seen_at.duration_since(*first).unwrap_or_default() > FLAP_WINDOW
            }) {
                downs.pop_front();
            }
            if downs.len() >= FLAP_DOWNS && !self.flapping.contains(&change.name) {
                self.flapping.insert(change.name.clone());
                let detail = format!(
                    "{role} went down {} times within {}",
                    downs.len(),
                    humantime::format_duration(FLAP_WINDOW)
                );
                new.push(event("link_flapping", detail));
            }
        }
        // A link quiet for a whole window may flap (and be reported) again.
        let now = SystemTime::now();
        let link_downs = &self.link_downs;
        self.flapping.retain(|name| {
            link_downs
                .get(name)
                .and_then(|downs| downs.back())
                .is_some_and(|last| now.duration_since(*last).unwrap_or_default() <= FLAP_WINDOW)
        });
        for event in &new {
            self.record(event.clone());
        }
        new
    }

    /// Logs `event` and counts it: the changes seen here, and events made elsewhere (an alert
    /// firing or resolving).
    pub fn record(&mut self, event: Event) {
        log::info!(
            "event {} on {}{}: {}",
            event.kind,
            event.interface,
            event.peer.as_ref().map_or_else(String::new, |key| format!(
                " peer {}",
                event.name.as_deref().unwrap_or(key)
            )),
            event.detail
        );
        *self.counts.entry(event.kind.clone()).or_default() += 1;
        if self.events.len() == EVENT_LOG_CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The latest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        self.events.iter().rev().take(limit).cloned().collect()
    }

    /// Events per type since the daemon started.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }
}

/// Moves `states` on to `snapshot` (taken at `at`, the `round`th compared); the events that
/// lead there, by interface (namespace, then name), then by the peer's key as text.
fn update(
    states: &mut HashMap<InterfaceKey, InterfaceState>,
    snapshot: &Snapshot,
    at: f64,
    round: u64,
) -> Vec<Event> {
    let mut found: Vec<Found> = Vec::new();
    let mut live = HashSet::with_capacity(snapshot.interfaces.len());
    for interface in &snapshot.interfaces {
        let key = interface_key(interface);
        let mut push = |kind: &str, peer: Option<(&PublicKey, &PeerState)>, detail: String| {
            found.push(found_event(at, &key, kind, peer, detail));
        };
        match states.get_mut(&key) {
            None => {
                push("interface_created", None, format!("ifindex {}", interface.ifindex));
                states.insert(key.clone(), interface_state(interface, round));
            }
            Some(before) => {
                if before.ifindex != interface.ifindex {
                    let detail = format!("ifindex {} -> {}", before.ifindex, interface.ifindex);
                    push("interface_restarted", None, detail);
                }
                if before.listen_port != interface.listen_port {
                    let ports = (port(before.listen_port), port(interface.listen_port));
                    push("listen_port_changed", None, format!("{} -> {}", ports.0, ports.1));
                }
                if before.public_key != interface.public_key {
                    let key = |key: Option<PublicKey>| {
                        key.map_or_else(|| "none".to_owned(), |key| key.to_string())
                    };
                    let detail =
                        format!("{} -> {}", key(before.public_key), key(interface.public_key));
                    push("public_key_changed", None, detail);
                }
                before.ifindex = interface.ifindex;
                before.listen_port = interface.listen_port;
                before.public_key = interface.public_key;
                update_peers(&mut before.peers, interface, round, &mut push);
            }
        }
        live.insert(key);
    }
    states.retain(|key, before| {
        let stays = live.contains(key);
        if !stays {
            let detail = format!("ifindex {}", before.ifindex);
            found.push(found_event(at, key, "interface_destroyed", None, detail));
        }
        stays
    });
    found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    found.into_iter().map(|(_, _, event)| event).collect()
}

/// Moves the peers of one interface on to `interface`'s, pushing their events.
fn update_peers(
    peers: &mut FastMap<PublicKey, PeerState>,
    interface: &InterfaceSnapshot,
    round: u64,
    push: &mut impl FnMut(&str, Option<(&PublicKey, &PeerState)>, String),
) {
    for peer in &interface.peers {
        let Some(old) = peers.get_mut(&peer.public_key) else {
            let state = peer_state(peer, round);
            push("peer_added", Some((&peer.public_key, &state)), joined(&state.allowed_ips));
            peers.insert(peer.public_key, state);
            continue;
        };
        old.seen = round;
        if old.name != peer.name {
            old.name.clone_from(&peer.name);
        }
        let roamed = old.endpoint.is_some() && peer.endpoint.is_some();
        if roamed && old.endpoint != peer.endpoint {
            let endpoint =
                |e: Option<SocketAddr>| e.map_or_else(|| "none".to_owned(), |e| e.to_string());
            let detail = format!("{} -> {}", endpoint(old.endpoint), endpoint(peer.endpoint));
            old.endpoint = peer.endpoint;
            push("endpoint_roamed", Some((&peer.public_key, old)), detail);
        }
        old.endpoint = peer.endpoint;
        if old.allowed_ips != peer.allowed_ips {
            let detail = format!("{} -> {}", joined(&old.allowed_ips), joined(&peer.allowed_ips));
            old.allowed_ips.clone_from(&peer.allowed_ips);
            push("allowed_ips_changed", Some((&peer.public_key, old)), detail);
        }
    }
    peers.retain(|key, state| {
        let stays = state.seen == round;
        if !stays {
            push("peer_removed", Some((key, state)), joined(&state.allowed_ips));
        }
        stays
    });
}

/// An event about `interface` (its key), or one of its peers, ordered as [`Found`] says.
fn found_event(
    at: f64,
    (netns, interface): &InterfaceKey,
    kind: &str,
    peer: Option<(&PublicKey, &PeerState)>,
    detail: String,
) -> Found {
    let text = peer.map(|(key, _)| key.to_string());
    let event = Event {
        at,
        kind: kind.to_owned(),
        interface: interface.clone(),
        peer: text.clone(),
        name: peer.and_then(|(_, state)| state.name.clone()),
        detail: match netns {
            Some(netns) => format!("{detail} (netns {netns})"),
            None => detail,
        },
    };
    ((netns.clone(), interface.clone()), text.unwrap_or_default(), event)
}

fn port(port: Option<u16>) -> String {
    port.map_or_else(|| "none".to_owned(), |port| port.to_string())
}

/// AllowedIPs as `a/n,b/m`.
fn joined(allowed_ips: &[AllowedIp]) -> String {
    allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The key of `interface` in what the log remembers.
fn interface_key(interface: &InterfaceSnapshot) -> InterfaceKey {
    (interface.netns.clone(), interface.name.clone())
}

fn interface_state(interface: &InterfaceSnapshot, round: u64) -> InterfaceState {
    InterfaceState {
        ifindex: interface.ifindex,
        listen_port: interface.listen_port,
        public_key: interface.public_key,
        peers: interface
            .peers
            .iter()
            .map(|peer| (peer.public_key, peer_state(peer, round)))
            .collect(),
    }
}

fn peer_state(peer: &PeerSnapshot, round: u64) -> PeerState {
    PeerState {
        name: peer.name.clone(),
        endpoint: peer.endpoint,
        allowed_ips: peer.allowed_ips.clone(),
        seen: round,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::prometheus::tests::snapshot;

    #[test]
    fn two_namespaces_wg0_are_two_interfaces() {
        let mut log = EventLog::default();
        let mut both = snapshot();
        let mut blue = both.interfaces[0].clone();
        blue.netns = Some("blue".into());
        blue.peers.remove(0);
        both.interfaces.push(blue);
        assert_eq!(log.observe(&both), Vec::new());
        assert_eq!(log.observe(&both), Vec::new(), "no change: no event");
        let mut start_only = both.clone();
        start_only.interfaces.pop();
        let events = log.observe(&start_only);
        let seen: Vec<(&str, &str, &str)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.interface.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(seen, [("interface_destroyed", "wg0", "ifindex 7 (netns blue)")]);
    }

    #[test]
    fn changes_between_snapshots_become_events_newest_first() {
        let mut log = EventLog::default();
        let first = snapshot();
        assert_eq!(log.observe(&first), Vec::new(), "the first snapshot is the baseline");

        let mut second = first.clone();
        second.interfaces[0].peers[0].endpoint =
            Some("198.18.1.99:40000".parse().expect("an endpoint"));
        let removed = second.interfaces[0].peers.remove(1);
        second.interfaces[0].ifindex = 8;
        let kinds: Vec<String> = log.observe(&second).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["interface_restarted", "endpoint_roamed", "peer_removed"]);

        let mut third = second.clone();
        third.interfaces[0].peers.push(removed);
        third.interfaces[0].listen_port = Some(51821);
        third.interfaces[0].public_key = Some(PublicKey([8; 32]));
        let events = log.observe(&third);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].kind, "listen_port_changed");
        assert_eq!(events[0].detail, "51820 -> 51821");
        assert_eq!(events[1].kind, "public_key_changed");
        assert_eq!(events[1].detail, format!("{} -> {}", PublicKey([9; 32]), PublicKey([8; 32])));
        assert_eq!(events[2].kind, "peer_added");

        let mut fourth = third.clone();
        fourth.interfaces.clear();
        assert_eq!(log.observe(&fourth)[0].kind, "interface_destroyed");

        let recent = log.recent(2);
        assert_eq!(recent[0].kind, "interface_destroyed");
        assert_eq!(recent[1].kind, "peer_added");
        assert_eq!(log.counts().get("peer_removed"), Some(&1));
        assert_eq!(log.counts().values().sum::<u64>(), 7);
    }
}
