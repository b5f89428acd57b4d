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
    /// When each link went down, within the last [`FLAP_WINDOW`].
    link_downs: HashMap<String, VecDeque<SystemTime>>,
    /// Links reported flapping whose burst is not over.
    flapping: HashSet<String>,
}

/// An interface's identity between snapshots: its network namespace's label (`None` in the start
/// one) and its name; two namespaces may each hold a `wg0`. An event names the interface, and
/// its detail ends with `(netns NAME)` outside the start namespace.
type InterfaceKey = (Option<String>, String);

/// What an event compares of one interface: typed values, made text only for an event.
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
}

impl PeerState {
    /// Whether `new` is this peer's state after an endpoint roam or an AllowedIPs change.
    fn changed(&self, new: &Self) -> bool {
        self.roamed(new) || self.allowed_ips != new.allowed_ips
    }

    fn roamed(&self, new: &Self) -> bool {
        self.endpoint.is_some() && new.endpoint.is_some() && self.endpoint != new.endpoint
    }
}

impl EventLog {
    /// Compares `snapshot` with the previous one and logs what changed; the first snapshot
    /// only sets the baseline. Returns the new events.
    pub fn observe(&mut self, snapshot: &Snapshot) -> Vec<Event> {
        let at = snapshot
            .taken_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let current: HashMap<InterfaceKey, InterfaceState> = snapshot
            .interfaces
            .iter()
            .map(|i| ((i.netns.clone(), i.name.clone()), interface_state(i)))
            .collect();
        let new =
            self.previous.as_ref().map_or_else(Vec::new, |previous| diff(previous, &current, at));
        self.previous = Some(current);
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

/// The events that lead from `previous` to `current`, interfaces by namespace and name.
fn diff(
    previous: &HashMap<InterfaceKey, InterfaceState>,
    current: &HashMap<InterfaceKey, InterfaceState>,
    at: f64,
) -> Vec<Event> {
    let mut new = Vec::new();
    let mut keys: Vec<&InterfaceKey> = previous.keys().chain(current.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (netns, interface) = key;
        let mut push =
            |kind: &str, interface: &str, peer: Option<(&String, &PeerState)>, detail: String| {
                new.push(Event {
                    at,
                    kind: kind.to_owned(),
                    interface: interface.to_owned(),
                    peer: peer.map(|(key, _)| key.clone()),
                    name: peer.and_then(|(_, state)| state.name.clone()),
                    detail: match netns {
                        Some(netns) => format!("{detail} (netns {netns})"),
                        None => detail,
                    },
                });
            };
        match (previous.get(key), current.get(key)) {
            (None, Some(now)) => {
                push("interface_created", interface, None, format!("ifindex {}", now.ifindex));
            }
            (Some(before), None) => {
                push("interface_destroyed", interface, None, format!("ifindex {}", before.ifindex));
            }
            (Some(before), Some(now)) => {
                if before.ifindex != now.ifindex {
                    let detail = format!("ifindex {} -> {}", before.ifindex, now.ifindex);
                    push("interface_restarted", interface, None, detail);
                }
                if before.listen_port != now.listen_port {
                    let detail =
                        format!("{} -> {}", port(before.listen_port), port(now.listen_port));
                    push("listen_port_changed", interface, None, detail);
                }
                if before.public_key != now.public_key {
                    let key = |key: &Option<PublicKey>| {
                        key.map_or_else(|| "none".to_owned(), |key| key.to_string())
                    };
                    let detail = format!("{} -> {}", key(&before.public_key), key(&now.public_key));
                    push("public_key_changed", interface, None, detail);
                }
                peer_events(interface, before, now, &mut push);
            }
            (None, None) => {}
        }
    }
    new
}

fn port(port: Option<u16>) -> String {
    port.map_or_else(|| "none".to_owned(), |port| port.to_string())
}

fn peer_events(
    interface: &str,
    before: &InterfaceState,
    now: &InterfaceState,
    push: &mut impl FnMut(&str, &str, Option<(&String, &PeerState)>, String),
) {
    // Only the peers with an event are made text, then ordered by key as text.
    let mut keys: Vec<(String, PublicKey)> = before
        .peers
        .keys()
        .chain(now.peers.keys())
        .filter(|key| match (before.peers.get(key), now.peers.get(key)) {
            (Some(old), Some(new)) => old.changed(new),
            _ => true,
        })
        .map(|key| (key.to_string(), *key))
        .collect();
    keys.sort();
    keys.dedup();
    for (text, key) in &keys {
        match (before.peers.get(key), now.peers.get(key)) {
            (None, Some(peer)) => {
                push("peer_added", interface, Some((text, peer)), joined(&peer.allowed_ips));
            }
            (Some(peer), None) => {
                push("peer_removed", interface, Some((text, peer)), joined(&peer.allowed_ips));
            }
            (Some(old), Some(new)) => {
                if old.roamed(new) {
                    let endpoint = |peer: &PeerState| {
                        peer.endpoint.map_or_else(|| "none".to_owned(), |e| e.to_string())
                    };
                    let detail = format!("{} -> {}", endpoint(old), endpoint(new));
                    push("endpoint_roamed", interface, Some((text, new)), detail);
                }
                if old.allowed_ips != new.allowed_ips {
                    let detail =
                        format!("{} -> {}", joined(&old.allowed_ips), joined(&new.allowed_ips));
                    push("allowed_ips_changed", interface, Some((text, new)), detail);
                }
            }
            (None, None) => {}
        }
    }
}

/// AllowedIPs as `a/n,b/m`.
fn joined(allowed_ips: &[AllowedIp]) -> String {
    allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn interface_state(interface: &InterfaceSnapshot) -> InterfaceState {
    InterfaceState {
        ifindex: interface.ifindex,
        listen_port: interface.listen_port,
        public_key: interface.public_key,
        peers: interface.peers.iter().map(|peer| (peer.public_key, peer_state(peer))).collect(),
    }
}

fn peer_state(peer: &PeerSnapshot) -> PeerState {
    PeerState {
        name: peer.name.clone(),
        endpoint: peer.endpoint,
        allowed_ips: peer.allowed_ips.clone(),
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
