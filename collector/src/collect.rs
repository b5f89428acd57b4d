//! One collection: discover the WireGuard interfaces, attach to new ones and release vanished
//! ones, read each interface's peers from its implementation, sync the eBPF peer table, read
//! the counters, and merge everything into a [`Snapshot`].
//!
//! A failure is reported once when it starts and once when it ends ([`Complaints`]), never
//! once per interval, and never stops the collection of everything else.
//!
//! Longer than most modules: one collection is one sequence (discover, attach, read, merge),
//! and the per-interface merge of WireGuard's state with the eBPF counters is kept whole, so the
//! order of the reads, which decides what each counter means, stays visible in one place.
//! What wgtel keeps of each watched network namespace, and following them, is in [`space`].

mod space;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    error::Error,
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use collector_common::{latency::LatencyKind, maps::PeerCounters, underlay::MessageType};

use self::space::{Memory, PreviousBytes, ProcessNamespaces, Space, held, read_interface, uapi_of};
use crate::{
    checks::{self, CheckBoard, CheckResult},
    config::PeerNames,
    diagnosis::{DiagnosisConfig, DiagnosisEngine},
    ebpf::{
        AttachMode, Drop, EbpfError, KernelHistogram, MapCapacity, PeerSync, PeerUnderlayCounters,
        Probes,
    },
    events::{EVENT_LOG_CAPACITY, EventLog},
    host::{HostSampler, HostSnapshot},
    links::LinkWatcher,
    model::{
        CollectionHealth, DROP_REASON_NO_PEER, Directional, InterfaceSnapshot, LatencyScratch,
        LatencySnapshot, MessageCounts, PeerHealth, PeerSnapshot, PeerState, PeerUnderlaySnapshot,
        Snapshot,
    },
    netns::{self, NetnsSpec, StartNamespace},
    rules::{AlertConfig, RuleEngine},
    udp_sockets, underlay_routes,
    underlay_routes::RouteError,
    webhook::WebhookQueue,
    wg::{
        InterfaceState, PublicKey,
        discovery::{self, DiscoveredInterface, LinkCache},
        netlink::Netlink,
        uapi::Uapi,
    },
};

/// Where userspace WireGuard implementations put their UAPI sockets.
pub const UAPI_SOCKET_DIR: &str = "/var/run/wireguard";

/// What to collect.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Interfaces to watch; empty means every WireGuard interface found.
    pub interfaces: Vec<String>,
    /// Friendly peer names.
    pub names: PeerNames,
    /// Underlay NICs to watch; empty means those that route to the peers' endpoints.
    pub underlays: Vec<String>,
    /// Directory of the UAPI sockets.
    pub uapi_socket_dir: PathBuf,
    /// The health rules' thresholds and windows.
    pub alerts: AlertConfig,
    /// Where alert changes go besides the event log, when a webhook is configured.
    pub webhook: Option<WebhookQueue>,
    /// Where the synthetic checks leave their results, when any are configured.
    pub checks: Option<CheckBoard>,
    /// Other network namespaces to watch (`--netns`); the start namespace always is.
    pub netns: Vec<NetnsSpec>,
    /// How to attach, for the eBPF objects of other namespaces.
    pub attach_mode: AttachMode,
}

/// The map sizes for what the WireGuard interfaces of this namespace hold now (peers and
/// AllowedIPs); an interface that cannot be read counts as empty.
pub fn map_capacity(uapi_socket_dir: &std::path::Path) -> MapCapacity {
    let (peers, allowed_ips) = held(&[Uapi::with_socket_dir(uapi_socket_dir.to_path_buf())]);
    MapCapacity::for_host(peers, allowed_ips)
}

/// Collects one [`Snapshot`] per call.
#[derive(Debug)]
pub struct Collector {
    config: CollectorConfig,
    /// The start namespace first, then the others being watched.
    spaces: Vec<Space>,
    /// The namespace to come back to; `None` without `--netns` (or when it cannot be opened,
    /// complained about at every collection).
    start: Option<Arc<StartNamespace>>,
    netlink: Netlink,
    /// The hdrhistograms every latency summary is computed in.
    latency_scratch: LatencyScratch,
    complaints: Complaints,
    events: EventLog,
    /// Link notifications; `None` when the socket could not be opened (logged once).
    links: Option<LinkWatcher>,
    rules: RuleEngine,
    diagnosis: DiagnosisEngine,
    host: HostSampler,
}

impl Collector {
    /// A collector that attaches through `probes` in the start namespace.
    pub fn new(config: CollectorConfig, probes: Probes) -> Self {
        let uapi = Uapi::with_socket_dir(config.uapi_socket_dir.clone());
        let start = (!config.netns.is_empty())
            .then(|| {
                StartNamespace::current()
                    .inspect_err(|error| {
                        log::error!("opening the start network namespace: {error}");
                    })
                    .ok()
                    .map(Arc::new)
            })
            .flatten();
        Self {
            rules: RuleEngine::new(config.alerts.clone()),
            diagnosis: DiagnosisEngine::new(DiagnosisConfig {
                expected_peers: config.alerts.expected_peers.clone(),
                handshake_stale: config.alerts.handshake_stale,
                cpu_saturated: config.alerts.cpu_saturated,
            }),
            config,
            spaces: vec![Space::start(probes, uapi)],
            start,
            netlink: Netlink::new(),
            latency_scratch: LatencyScratch::default(),
            complaints: Complaints::default(),
            events: EventLog::default(),
            links: LinkWatcher::new()
                .inspect_err(|error| log::warn!("no link up/down events: {error}"))
                .ok(),
            host: HostSampler::new(),
        }
    }

    /// Collects once.
    pub fn collect(&mut self) -> (Snapshot, CollectionHealth) {
        let started = std::time::Instant::now();
        self.complaints.begin_round();
        let mut spaces = std::mem::take(&mut self.spaces);
        let processes = self.follow_namespaces(&mut spaces);
        let mut interfaces = Vec::new();
        for space in &mut spaces {
            interfaces.extend(self.collect_space(space, &processes));
        }
        self.spaces = spaces;
        interfaces.sort_by(|a, b| (&a.netns, &a.name).cmp(&(&b.netns, &b.name)));
        self.complaints.end_round();
        let health = self.complaints.health();
        // Each part of the host reading that fails logs once; only a host without /proc fails
        // as a whole.
        let host = match self.host.sample() {
            Ok(host) => {
                self.complaints.ok("host metrics");
                host
            }
            Err(error) => {
                self.complaints.fail("host metrics", &error);
                HostSnapshot::default()
            }
        };
        let checks = self.checks(&interfaces);
        let mut snapshot = Snapshot {
            taken_at: SystemTime::now(),
            collection_seconds: started.elapsed().as_secs_f64(),
            interfaces,
            events: Vec::new(),
            event_counts: BTreeMap::new(),
            host,
            alerts: Vec::new(),
            ebpf_map_errors: self.map_errors(),
            unavailable: self
                .start_probes()
                .map(|probes| probes.unavailable().to_vec())
                .unwrap_or_default(),
            diagnoses: Vec::new(),
            checks,
        };
        self.events.observe(&snapshot);
        if let Some(links) = &mut self.links {
            let changes = links.changes();
            // The link notifications are the start namespace's.
            let underlay: HashSet<&str> = self
                .spaces
                .first()
                .and_then(|space| space.probes.as_ref())
                .into_iter()
                .flat_map(Probes::underlay_nics)
                .map(|(_, name)| name)
                .chain(self.config.underlays.iter().map(String::as_str))
                .collect();
            let wireguard: HashSet<&str> = snapshot
                .interfaces
                .iter()
                .filter(|i| i.netns.is_none())
                .map(|i| i.name.as_str())
                .collect();
            self.events.observe_links(&changes, |name| {
                if wireguard.contains(name) {
                    Some("WireGuard interface")
                } else if underlay.contains(name) {
                    Some("underlay NIC")
                } else {
                    None
                }
            });
        }
        let (diagnoses, changes) = self.diagnosis.observe(&snapshot);
        snapshot.diagnoses = diagnoses;
        for event in changes {
            self.events.record(event);
        }
        for change in self.rules.evaluate(&snapshot) {
            self.events.record(change.to_event());
            if let Some(webhook) = &self.config.webhook {
                webhook.offer(change);
            }
        }
        snapshot.alerts = self.rules.firing();
        snapshot.events = self.events.recent(EVENT_LOG_CAPACITY);
        snapshot.event_counts = self.events.counts().clone();
        (snapshot, health)
    }

    /// The checks' latest results, each tied to the peer of `interfaces` that carries it.
    fn checks(&self, interfaces: &[InterfaceSnapshot]) -> Vec<CheckResult> {
        let Some(board) = &self.config.checks else { return Vec::new() };
        let mut results = board.results();
        let peers: Vec<checks::RoutedPeer<'_>> = interfaces
            .iter()
            .flat_map(|interface| {
                interface.peers.iter().map(move |peer| {
                    (
                        interface.name.as_str(),
                        peer.public_key,
                        peer.name.as_deref(),
                        &peer.allowed_ips[..],
                    )
                })
            })
            .collect();
        checks::tie(&mut results, &peers);
        results
    }

    /// The programs' failed map inserts, by map, summed over the namespaces; empty (and
    /// complained about once) when the counters cannot be read.
    fn map_errors(&mut self) -> Vec<(&'static str, u64)> {
        let mut sums: Vec<(&'static str, u64)> = Vec::new();
        for probes in self.spaces.iter().filter_map(|space| space.probes.as_ref()) {
            match probes.map_errors() {
                Ok(errors) => {
                    for (map, count) in errors {
                        match sums.iter_mut().find(|(name, _)| *name == map) {
                            Some((_, sum)) => *sum += count,
                            None => sums.push((map, count)),
                        }
                    }
                }
                Err(error) => {
                    self.complaints.fail("eBPF map errors", &error);
                    return Vec::new();
                }
            }
        }
        self.complaints.ok("eBPF map errors");
        sums
    }

    /// The start namespace's programs.
    fn start_probes(&self) -> Option<&Probes> {
        self.spaces.first().and_then(|space| space.probes.as_ref())
    }

    /// Looks the `--netns` namespaces up again (see [`space::follow`]); complains when they
    /// cannot be listed.
    fn follow_namespaces(&mut self, spaces: &mut Vec<Space>) -> ProcessNamespaces {
        if self.config.netns.is_empty() {
            return ProcessNamespaces::new();
        }
        let subject = "network namespaces";
        let Some(start) = self.start.clone() else {
            self.complaints.fail_with(subject, "the start namespace cannot be opened".into());
            return ProcessNamespaces::new();
        };
        match space::follow(spaces, &self.config.netns, &start) {
            Ok(processes) => {
                self.complaints.ok(subject);
                processes
            }
            Err(error) => {
                self.complaints.fail(subject, &error);
                ProcessNamespaces::new()
            }
        }
    }

    /// Collects the interfaces of `space`, inside its namespace; its complaints name it.
    fn collect_space(
        &mut self,
        space: &mut Space,
        processes: &ProcessNamespaces,
    ) -> Vec<InterfaceSnapshot> {
        let Some(namespace) = &space.netns else { return self.collect_entered(space) };
        let Some(start) = self.start.clone() else { return Vec::new() };
        let subject = format!("network namespace {}", namespace.label);
        let inside = match namespace.enter(&start) {
            Ok(inside) => {
                self.complaints.ok(&subject);
                inside
            }
            Err(error) => {
                self.complaints.fail(&subject, &error);
                return Vec::new();
            }
        };
        self.complaints.scope = Some(namespace.label.clone());
        let roots = netns::uapi_roots(namespace.inode, processes);
        space.refresh_uapis(roots);
        let interfaces = self.collect_entered(space);
        self.complaints.scope = None;
        drop(inside);
        interfaces
    }

    /// Collects the interfaces of `space`, the calling thread inside its namespace.
    fn collect_entered(&mut self, space: &mut Space) -> Vec<InterfaceSnapshot> {
        let links = space.links.get_or_insert_with(LinkCache::new);
        let discovered = match links.discover_where(|name| uapi_of(&space.uapis, name).is_some()) {
            Ok(found) => {
                self.complaints.ok("discovery");
                found
            }
            Err(error) => {
                self.complaints.fail("discovery", &error);
                Vec::new()
            }
        };
        let wanted = self.wanted(discovered, space.netns.is_none());
        if space.probes.is_none() && !wanted.is_empty() {
            let (peers, allowed_ips) = held(&space.uapis);
            let capacity = MapCapacity::for_namespace(peers, allowed_ips);
            // `--debug-ebpf` forwards the start namespace's programs' log only: forwarding
            // needs the tokio runtime, which this thread has not.
            match Probes::load(self.config.attach_mode, capacity, false) {
                Ok(probes) => {
                    self.complaints.ok("eBPF");
                    space.probes = Some(probes);
                }
                Err(error) => self.complaints.fail("eBPF", &error),
            }
        }
        let Space { netns, probes: Some(probes), uapis, memory, .. } = space else {
            return Vec::new();
        };
        self.release_vanished(probes, &wanted);
        memory.begin_round();
        let udp_drops = match udp_sockets::drops_by_port() {
            Ok(drops) => {
                self.complaints.ok("UDP socket drops");
                Some(drops)
            }
            Err(error) => {
                self.complaints.fail("UDP socket drops", &error);
                None
            }
        };
        let kernel = KernelReadings { drops: probes.drops(), latency: probes.latency(), udp_drops };
        let mut interfaces = Vec::with_capacity(wanted.len());
        for interface in &wanted {
            if let Some(snapshot) =
                self.collect_interface(probes, uapis, memory, interface, &kernel)
            {
                interfaces.push(snapshot);
            }
        }
        self.watch_underlay(probes, &mut interfaces);
        let label = netns.as_ref().map(|namespace| namespace.label.clone());
        for interface in &mut interfaces {
            interface.netns.clone_from(&label);
        }
        memory.retain_live();
        interfaces
    }

    /// The discovered interfaces the configuration asks for; complains about asked-for
    /// interfaces that do not exist when `complain` (in the start namespace without
    /// `--netns`: with it, an interface may well live in one namespace only).
    fn wanted(
        &mut self,
        discovered: Vec<DiscoveredInterface>,
        complain: bool,
    ) -> Vec<DiscoveredInterface> {
        if self.config.interfaces.is_empty() {
            return discovered;
        }
        let complain = complain && self.config.netns.is_empty();
        for name in self.config.interfaces.iter().filter(|_| complain) {
            let subject = format!("interface {name}");
            if discovered.iter().any(|found| &found.name == name) {
                self.complaints.ok(&subject);
            } else {
                self.complaints.fail_with(&subject, "no WireGuard interface of that name".into());
            }
        }
        discovered
            .into_iter()
            .filter(|found| self.config.interfaces.contains(&found.name))
            .collect()
    }

    /// Releases attached interfaces that are no longer wanted or no longer exist.
    fn release_vanished(&mut self, probes: &mut Probes, wanted: &[DiscoveredInterface]) {
        let vanished: Vec<(u32, String)> = probes
            .attached()
            .filter(|(ifindex, name)| {
                !wanted.iter().any(|w| w.ifindex == *ifindex && w.name == *name)
            })
            .map(|(ifindex, name)| (ifindex, name.to_owned()))
            .collect();
        for (ifindex, name) in vanished {
            let gone = discovery::ifindex(&name) != Some(ifindex);
            log::info!(
                "releasing {name}: it is {}",
                if gone { "gone" } else { "no longer watched" }
            );
            if let Err(error) = probes.release(ifindex, gone) {
                self.complaints.fail(&format!("release {name}"), &error);
            }
        }
    }

    /// Attaches the underlay programs to the NICs the configuration names, or else to those
    /// that route to the peers' endpoints, and releases the ones no longer wanted.
    fn watch_underlay(&mut self, probes: &mut Probes, interfaces: &mut [InterfaceSnapshot]) {
        let wanted = if self.config.underlays.is_empty() {
            match routed_underlays(interfaces) {
                Ok((found, paths)) => {
                    self.complaints.ok("underlay routes");
                    set_route_mtus(interfaces, &paths);
                    found
                }
                Err(error) => {
                    self.complaints.fail("underlay routes", &error);
                    return;
                }
            }
        } else {
            self.named_underlays()
        };
        let vanished: Vec<(u32, String)> = probes
            .underlay_nics()
            .filter(|(ifindex, name)| !wanted.iter().any(|(n, i)| i == ifindex && n == name))
            .map(|(ifindex, name)| (ifindex, name.to_owned()))
            .collect();
        for (ifindex, name) in vanished {
            let gone = discovery::ifindex(&name) != Some(ifindex);
            log::info!(
                "releasing underlay {name}: it is {}",
                if gone { "gone" } else { "no longer needed" }
            );
            if let Err(error) = probes.release_underlay(ifindex, gone) {
                self.complaints.fail(&format!("release underlay {name}"), &error);
            }
        }
        for (name, ifindex) in wanted {
            let subject = format!("attach underlay {name}");
            if probes.underlay_nics().any(|(i, _)| i == ifindex) {
                self.complaints.ok(&subject);
                continue;
            }
            let ethernet = match discovery::is_ethernet(ifindex) {
                Ok(Some(ethernet)) => ethernet,
                Ok(None) => {
                    self.complaints.fail_with(&subject, "the interface vanished".into());
                    continue;
                }
                Err(error) => {
                    self.complaints.fail(&subject, &error);
                    continue;
                }
            };
            match probes.attach_underlay(&name, ifindex, ethernet) {
                Ok(()) => {
                    let layer = if ethernet { "Ethernet" } else { "IP, no link-layer header" };
                    log::info!("watching underlay {name} ({layer})");
                    self.complaints.ok(&subject);
                }
                Err(error) => self.complaints.fail(&subject, &error),
            }
        }
    }

    /// The `--underlay` NICs that exist, complaining about those that do not.
    fn named_underlays(&mut self) -> Vec<(String, u32)> {
        let mut found = Vec::new();
        for name in &self.config.underlays {
            let subject = format!("underlay {name}");
            match discovery::ifindex(name) {
                Some(ifindex) => {
                    self.complaints.ok(&subject);
                    found.push((name.clone(), ifindex));
                }
                None => self.complaints.fail_with(&subject, "no interface of that name".into()),
            }
        }
        found
    }

    fn collect_interface(
        &mut self,
        probes: &mut Probes,
        uapis: &[Uapi],
        memory: &mut Memory,
        interface: &DiscoveredInterface,
        kernel: &KernelReadings,
    ) -> Option<InterfaceSnapshot> {
        let subject = format!("interface {}", interface.name);
        let state = match read_interface(&self.netlink, uapis, interface) {
            Ok(state) => state,
            Err(error) => {
                self.complaints.fail(&subject, error.as_ref());
                return None;
            }
        };
        match self.count(probes, memory, interface, state, kernel) {
            Ok(snapshot) => {
                self.complaints.ok(&subject);
                Some(snapshot)
            }
            Err(error) => {
                self.complaints.fail(&subject, &error);
                // Leave nothing half-done: the next round starts this interface afresh.
                if let Err(error) = probes.release(interface.ifindex, false) {
                    log::debug!("cleaning up {}: {error}", interface.name);
                }
                None
            }
        }
    }

    /// Syncs the peer table, attaches if needed, and reads the counters.
    fn count(
        &mut self,
        probes: &mut Probes,
        memory: &mut Memory,
        interface: &DiscoveredInterface,
        state: InterfaceState,
        kernel: &KernelReadings,
    ) -> Result<InterfaceSnapshot, EbpfError> {
        let drops = kernel.drops.as_deref();
        let ifindex = interface.ifindex;
        // Peers first, so that the first packets after attaching already find their peer.
        let PeerSync { ids, refused } = probes.sync_peers(ifindex, &state.peers)?;
        let entries = format!("AllowedIPs of {}", interface.name);
        match refused {
            Some((count, error)) => self.complaints.fail_with(
                &entries,
                format!(
                    "{count} AllowedIPs entries are not in the eBPF maps, retried each interval: \
                     {}",
                    error_chain(&error)
                ),
            ),
            None => self.complaints.ok(&entries),
        }
        let endpoints = state
            .peers
            .iter()
            .zip(&ids)
            .filter_map(|(peer, id)| Some(((*id)?, peer.endpoint?)))
            .collect::<Vec<_>>();
        probes.sync_endpoints(ifindex, state.listen_port, endpoints)?;
        if !probes.is_attached(ifindex) {
            probes.attach(&interface.name, ifindex)?;
            log::info!(
                "attached to {} ({}, {} peers, via {:?})",
                interface.name,
                state.implementation,
                state.peers.len(),
                probes.mode()
            );
        }
        let without_id = ids.iter().filter(|id| id.is_none()).count();
        let capacity = format!("peer capacity on {}", interface.name);
        if without_id > 0 {
            self.complaints.fail_with(
                &capacity,
                format!("{without_id} peers get no eBPF counters: the maps are full"),
            );
        } else {
            self.complaints.ok(&capacity);
        }
        // After the sync: fresh ids read zero, not what their previous peer left.
        probes.read_peers()?;
        let now = SystemTime::now();
        let mut peers = Vec::with_capacity(state.peers.len());
        for (peer, id) in state.peers.into_iter().zip(ids) {
            let PeerCounters { traffic: counters, underlay } =
                id.map(|id| probes.peer_counters(id)).unwrap_or_default();
            let peer_drops = drops.map(|drops| peer_drops(drops, ifindex, id));
            let age = peer
                .last_handshake
                .map(|at| now.duration_since(at).map_or(0.0, |age| age.as_secs_f64()));
            let last_handshake_unix = peer.last_handshake.map(|at| {
                at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
            });
            let underlay = underlay_snapshot(&underlay);
            let previous = memory.previous.insert(
                (ifindex, peer.public_key),
                PreviousBytes {
                    at: now,
                    rx: peer.rx_bytes,
                    tx: peer.tx_bytes,
                    tx_packets: counters.tx_packets,
                    unanswered: underlay.unanswered_initiations,
                    round: memory.round,
                },
            );
            let state = PeerState::from_handshake_age(age);
            // Sending without a fresh handshake is broken; quiet without one is only idle.
            let sending = previous.is_some_and(|previous| {
                counters.tx_packets > previous.tx_packets
                    || underlay.unanswered_initiations > previous.unanswered
            });
            let health = PeerHealth::judge(state, sending);
            let (rx_rate, tx_rate) = previous.map_or((0.0, 0.0), |previous| {
                let seconds = now.duration_since(previous.at).map_or(0.0, |d| d.as_secs_f64());
                (
                    rate(previous.rx, peer.rx_bytes, seconds),
                    rate(previous.tx, peer.tx_bytes, seconds),
                )
            });
            peers.push(PeerSnapshot {
                name: self.config.names.get(&peer.public_key).map(str::to_owned),
                public_key: peer.public_key,
                endpoint: peer.endpoint,
                allowed_ips: peer.allowed_ips,
                persistent_keepalive: peer.persistent_keepalive,
                last_handshake_seconds_ago: age,
                last_handshake_unix,
                state,
                rx_bytes: peer.rx_bytes,
                tx_bytes: peer.tx_bytes,
                rx_packets: counters.rx_packets,
                tx_packets: counters.tx_packets,
                rx_bytes_per_second: rx_rate,
                tx_bytes_per_second: tx_rate,
                drops: peer_drops,
                underlay,
                health,
                latency: id
                    .and_then(|id| kernel.latency.get(&id))
                    .map(|histograms| {
                        let scratch = &mut self.latency_scratch;
                        latency_snapshots(memory, scratch, ifindex, peer.public_key, histograms)
                    })
                    .unwrap_or_default(),
            });
        }
        let interface_counters = probes.interface_counters(ifindex)?;
        let mut interface_drops =
            BTreeMap::from([(DROP_REASON_NO_PEER.to_owned(), interface_counters.no_peer_packets)]);
        let untied = drops.unwrap_or_default().iter();
        for drop in untied.filter(|drop| drop.ifindex == ifindex && drop.peer.is_none()) {
            *interface_drops.entry(drop.reason.clone()).or_default() += drop.packets;
        }
        Ok(InterfaceSnapshot {
            name: interface.name.clone(),
            ifindex,
            netns: None,
            implementation: state.implementation,
            listen_port: state.listen_port,
            fwmark: state.fwmark,
            public_key: state.public_key,
            drops: interface_drops,
            underlay_unknown_source: interface_counters.underlay_unknown_source,
            ipv4_forwarding: sysctl_flag(&format!("net/ipv4/conf/{}/forwarding", interface.name)),
            ipv6_forwarding: sysctl_flag("net/ipv6/conf/all/forwarding"),
            udp_socket_drops: state.listen_port.and_then(|port| {
                kernel.udp_drops.as_ref().map(|drops| drops.get(&port).copied().unwrap_or(0))
            }),
            allowed_ip_entries: probes.allowed_ip_entries(ifindex),
            no_peer_destinations: probes.no_peer_destinations(ifindex)?,
            initiation_sources: probes.initiation_sources(ifindex)?,
            peers,
            aggregated: None,
        })
    }
}

/// Underlay NICs (name, ifindex), and every path to an endpoint that was looked up.
type RoutedUnderlays = (Vec<(String, u32)>, Vec<underlay_routes::RoutePath>);

/// The interfaces that route to the peers' endpoints, as WireGuard routes its own datagrams
/// (with its interface's fwmark): (name, ifindex), and every path found. A route from a
/// WireGuard interface into itself (AllowedIPs that cover an endpoint, without policy routing)
/// is a loop, not an underlay; another WireGuard interface can be one (WireGuard over
/// WireGuard).
fn routed_underlays(interfaces: &[InterfaceSnapshot]) -> Result<RoutedUnderlays, RouteError> {
    let mut found = std::collections::BTreeSet::new();
    let mut paths = Vec::new();
    for interface in interfaces {
        let endpoints: Vec<(std::net::IpAddr, Option<u32>)> = interface
            .peers
            .iter()
            .filter_map(|peer| Some((peer.endpoint?.ip(), interface.fwmark)))
            .collect();
        for path in underlay_routes::paths_towards(&endpoints)? {
            if path.interface.ifindex != interface.ifindex {
                found.insert((path.interface.name.clone(), path.interface.ifindex));
            }
            paths.push(path);
        }
    }
    Ok((found.into_iter().collect(), paths))
}

/// A 0/1 sysctl under `/proc/sys/`; `None` when it cannot be read.
fn sysctl_flag(name: &str) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
    Some(text.trim() != "0")
}

/// Gives each peer the MTU of the route to its endpoint, from `paths`.
fn set_route_mtus(interfaces: &mut [InterfaceSnapshot], paths: &[underlay_routes::RoutePath]) {
    let mtus: HashMap<(std::net::IpAddr, Option<u32>), u32> =
        paths.iter().filter_map(|path| Some((path.destination, path.mtu?))).collect();
    for interface in interfaces {
        let fwmark = interface.fwmark;
        for peer in &mut interface.peers {
            peer.underlay.route_mtu =
                peer.endpoint.and_then(|endpoint| mtus.get(&(endpoint.ip(), fwmark)).copied());
        }
    }
}

/// What the kernel reported once per collection, for every interface.
struct KernelReadings {
    /// `None` when the kernel's drops are not counted.
    drops: Option<Vec<Drop>>,
    /// Drops of the UDP sockets by local port; `None` when unreadable.
    udp_drops: Option<HashMap<u16, u64>>,
    latency: HashMap<u32, BTreeMap<LatencyKind, KernelHistogram>>,
}

impl std::ops::Drop for Collector {
    /// Detaches in every namespace, each from inside it; the start namespace's last.
    fn drop(&mut self) {
        while let Some(space) = self.spaces.pop() {
            space.retire(self.start.as_ref());
        }
    }
}

/// A peer's latency summaries (computed in `scratch`), remembering its buckets in `memory` for
/// the next interval's jitter.
fn latency_snapshots(
    memory: &mut Memory,
    scratch: &mut LatencyScratch,
    ifindex: u32,
    key: PublicKey,
    histograms: &BTreeMap<LatencyKind, KernelHistogram>,
) -> BTreeMap<&'static str, LatencySnapshot> {
    histograms
        .iter()
        .map(|(kind, histogram)| {
            let previous = memory.previous_latency.entry((ifindex, key, *kind)).or_default();
            let snapshot = LatencySnapshot::summarize(
                scratch,
                histogram.buckets.clone(),
                histogram.sum_ns,
                histogram.lost,
                (!previous.is_empty()).then_some(&previous[..]),
            );
            // In place: the previous buckets' allocation is kept.
            previous.clone_from(&histogram.buckets);
            (kind.as_str(), snapshot)
        })
        .collect()
}

/// The drops of peer `id` on interface `ifindex`, by reason; none for a peer without an id.
/// `drops` is sorted by interface, peer and reason, as [`Probes::drops`] gives them: the
/// peer's are found by a binary search (a walk per peer cost peers × drops).
fn peer_drops(drops: &[Drop], ifindex: u32, id: Option<u32>) -> BTreeMap<String, u64> {
    if id.is_none() {
        return BTreeMap::new();
    }
    let start = drops.partition_point(|drop| (drop.ifindex, drop.peer) < (ifindex, id));
    let rest = drops.get(start..).unwrap_or_default();
    rest.iter()
        .take_while(|drop| (drop.ifindex, drop.peer) == (ifindex, id))
        .map(|drop| (drop.reason.clone(), drop.packets))
        .collect()
}

/// The model's view of a peer's underlay counters.
fn underlay_snapshot(counters: &PeerUnderlayCounters) -> PeerUnderlaySnapshot {
    let [receive, transmit] = counters.messages;
    let mut messages = MessageCounts::default();
    for kind in MessageType::ALL {
        let index = kind as usize;
        *messages.get_mut(kind) =
            Directional { receive: receive[index], transmit: transmit[index] };
    }
    let initiation = MessageType::HandshakeInitiation as usize;
    let response = MessageType::HandshakeResponse as usize;
    PeerUnderlaySnapshot {
        messages,
        fragments: Directional { receive: counters.fragments[0], transmit: counters.fragments[1] },
        icmp_too_big: Directional { receive: counters.too_big[0], transmit: counters.too_big[1] },
        icmp_unreachable: Directional {
            receive: counters.unreachable[0],
            transmit: counters.unreachable[1],
        },
        path_mtu: (counters.too_big_at != 0)
            .then(|| u32::try_from(counters.too_big_mtu).unwrap_or(u32::MAX)),
        route_mtu: None,
        unanswered_initiations: transmit[initiation].saturating_sub(receive[response]),
    }
}

/// Bytes per second between two readings of a counter; 0 when it went backwards (the peer
/// was removed and added again) or no time passed.
fn rate(before: u64, after: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 || after < before {
        return 0.0;
    }
    (after - before) as f64 / seconds
}

/// Failures being reported: each is logged once when it starts (or changes) and once when it
/// ends, however many intervals it lasts.
#[derive(Debug, Default)]
struct Complaints {
    active: BTreeMap<String, String>,
    touched: HashSet<String>,
    /// The label of the namespace being collected, which every subject then names.
    scope: Option<String>,
}

impl Complaints {
    fn begin_round(&mut self) {
        self.touched.clear();
    }

    /// Forgets complaints about subjects that did not come up this round (an interface that
    /// vanished cannot recover).
    fn end_round(&mut self) {
        let touched = &self.touched;
        self.active.retain(|subject, _| touched.contains(subject));
    }

    fn fail(&mut self, subject: &str, error: &(dyn Error + 'static)) {
        self.fail_with(subject, error_chain(error));
    }

    fn fail_with(&mut self, subject: &str, message: String) {
        let subject = &self.scoped(subject);
        self.touched.insert(subject.to_owned());
        if self.active.get(subject) != Some(&message) {
            log::warn!("{subject}: {message}");
            self.active.insert(subject.to_owned(), message);
        }
    }

    fn ok(&mut self, subject: &str) {
        let subject = &self.scoped(subject);
        self.touched.insert(subject.to_owned());
        if self.active.remove(subject).is_some() {
            log::info!("{subject}: recovered");
        }
    }

    /// `subject` in the namespace being collected: `netns NAME: subject`.
    fn scoped(&self, subject: &str) -> String {
        match &self.scope {
            Some(label) => format!("netns {label}: {subject}"),
            None => subject.to_owned(),
        }
    }

    fn health(&self) -> CollectionHealth {
        if self.active.is_empty() {
            return CollectionHealth::Healthy;
        }
        let reason = self
            .active
            .iter()
            .map(|(subject, message)| format!("{subject}: {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        CollectionHealth::Failing { reason }
    }
}

/// An error and its sources on one line, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_drops_are_found_among_every_interfaces_and_peers() {
        let drop = |ifindex, peer, reason: &str, packets| Drop {
            ifindex,
            peer,
            reason: reason.to_owned(),
            packets,
        };
        // Sorted by interface, peer and reason, as the probes give them.
        let drops = [
            drop(3, None, "NO_ROUTE", 1),
            drop(3, Some(1), "A", 2),
            drop(3, Some(2), "A", 3),
            drop(3, Some(2), "B", 4),
            drop(4, Some(2), "A", 5),
        ];
        let reasons = |list: &[(&str, u64)]| -> BTreeMap<String, u64> {
            list.iter().map(|&(reason, count)| (reason.to_owned(), count)).collect()
        };
        assert_eq!(peer_drops(&drops, 3, Some(2)), reasons(&[("A", 3), ("B", 4)]));
        assert_eq!(peer_drops(&drops, 3, Some(1)), reasons(&[("A", 2)]));
        assert_eq!(peer_drops(&drops, 4, Some(2)), reasons(&[("A", 5)]));
        assert_eq!(peer_drops(&drops, 3, Some(9)), reasons(&[]));
        assert_eq!(peer_drops(&drops, 3, None), reasons(&[]), "not tied to a peer");
        assert_eq!(peer_drops(&[], 3, Some(1)), reasons(&[]));
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert!((rate(1000, 3000, 2.0) - 1000.0).abs() < f64::EPSILON);
        assert!(rate(3000, 1000, 2.0).abs() < f64::EPSILON);
        assert!(rate(0, 1000, 0.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_complaint_is_logged_once_and_cleared_when_its_subject_vanishes() {
        let mut complaints = Complaints::default();
        for _ in 0..3 {
            complaints.begin_round();
            complaints.fail_with("interface wg0", "socket missing".into());
            complaints.end_round();
        }
        assert_eq!(
            complaints.health(),
            CollectionHealth::Failing { reason: "interface wg0: socket missing".into() }
        );
        complaints.begin_round();
        complaints.end_round();
        assert_eq!(complaints.health(), CollectionHealth::Healthy);
    }
}
