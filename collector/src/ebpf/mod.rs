//! The kernel side, seen from user space: loads wgtel's eBPF object, attaches its programs to
//! WireGuard interfaces and underlay NICs ([`attach`]), keeps the AllowedIPs trie and peer ids
//! in step with WireGuard's peer lists ([`peers`]), the listen ports and endpoints with the
//! underlay ([`underlay`]), counts the kernel's drops ([`drops`], laid out by [`btf`]) and reads
//! the per-CPU counters.
//!
//! Longer than most modules: [`Probes`] is the one owner of the loaded object, and each of its
//! maps has its reader here, next to the others, so that what user space reads stays in one
//! place beside the map names `collector-ebpf/src/maps.rs` declares.

mod attach;
mod batch;
mod btf;
mod drops;
mod ebpf_log;
mod latency;
mod peers;
mod underlay;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, RawTracePoint, SchedClassifier},
    util::KernelVersion,
};
use collector_common::maps::{
    InterfaceTraffic, MAX_ALLOWED_IPS, MAX_LATENCY_BUCKETS, MAX_PEERS, MapId, PeerAddress,
    PeerCounters, PeerUnderlay, WATCHED_WIREGUARD,
};

#[doc(hidden)]
pub use self::drops::DropLayout;
pub use self::{
    attach::AttachMode,
    btf::BtfError,
    drops::Drop,
    latency::{KernelHistogram, PROBE_TIMEOUT},
};
use self::{
    attach::AttachedInterface,
    batch::{BatchedHashMap, PerCpuArrayReader, PerCpuHashReader},
    drops::KernelDrops,
    latency::LatencyTable,
    peers::PeerTable,
    underlay::{EndpointMaps, LearnedMaps, UnderlayTable},
};
use crate::{
    model::{Feature, Unavailable},
    wg::PeerState,
};

/// The eBPF object aya-build compiled from `collector-ebpf` (an empty stub when the build had
/// no bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// wgtel's eBPF object, for tools that load its programs themselves (`cargo xtask bench`
/// measures them with `BPF_PROG_TEST_RUN`); empty when built without bpf-linker. Such a tool
/// passes its loader to [`quiet`] first.
pub fn object() -> &'static [u8] {
    EBPF_OBJECT
}

/// Turns the programs' debug logging off in `loader`, as `wgtel run` without `--debug-ebpf`
/// does (aya-log-ebpf's own default is to log everything).
pub fn quiet(loader: &mut EbpfLoader<'_>) {
    ebpf_log::set_level(loader, false);
}

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// This binary was built without bpf-linker, so it carries no eBPF programs.
    #[error(
        "this wgtel was built without its eBPF programs; run `cargo xtask setup`, then rebuild"
    )]
    NotBuilt,
    /// The kernel refused the object (verifier, BTF, permissions).
    #[error(
        "loading the eBPF programs failed (wgtel needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a map or program the collector expects: a build mismatch.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A program could not be loaded into the kernel.
    #[error("loading program {name} failed")]
    Program {
        /// Program name.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching to or detaching from an interface failed.
    #[error("attaching to interface {interface} failed")]
    Attach {
        /// Interface name.
        interface: String,
        /// Why.
        #[source]
        source: attach::AttachError,
    },
    /// A map operation failed.
    #[error("eBPF map {map}: {operation} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The syscall error.
        #[source]
        source: Box<MapError>,
    },
    /// Reading a per-CPU array's slots failed.
    #[error("eBPF map {map}: reading the peers' slots failed")]
    Read {
        /// Map name.
        map: &'static str,
        /// The syscall error.
        #[source]
        source: std::io::Error,
    },
    /// The programs' log records (`--debug-ebpf`) could not be read.
    #[error("reading the eBPF programs' log (--debug-ebpf)")]
    Log(#[source] Box<aya_log::Error>),
    /// The programs' log ring buffer could not be watched for records.
    #[error("watching the eBPF programs' log (--debug-ebpf)")]
    LogReader(#[source] std::io::Error),
    /// `--debug-ebpf` needs the tokio runtime to read the programs' log, and there is none.
    #[error("--debug-ebpf: no tokio runtime to read the eBPF programs' log on")]
    NoRuntime,
    /// The possible CPUs could not be read (`/sys/devices/system/cpu/possible`).
    #[error("reading the number of possible CPUs failed")]
    PossibleCpus(#[source] std::io::Error),
}

impl EbpfError {
    fn map(map: &'static str, operation: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { map, operation, source: Box::new(source) }
    }
}

/// What the kernel counted for one peer since it was given its id, on the underlay.
pub type PeerUnderlayCounters = PeerUnderlay;

/// What the kernel counted on one interface, not tied to a peer, since attaching.
pub type InterfaceCounters = InterfaceTraffic;

/// How many peers the maps are made for: decided once, when the programs are loaded (a map's
/// size is fixed at its creation), from what the host holds then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    /// Peer ids: the per-peer counter arrays, the endpoint maps.
    pub peers: u32,
    /// AllowedIPs entries: the trie and the host-entry hash.
    pub allowed_ips: u32,
}

impl MapCapacity {
    /// Room for the peers and AllowedIPs the host holds now and half as many again (peers come
    /// and go while wgtel runs), never below the built-in sizes (16,384 peers, 65,536
    /// AllowedIPs): a host with 100,000 peers gets maps for 150,000. The per-peer counters are
    /// per-CPU arrays, allocated in full at load time (176 bytes per peer per CPU).
    pub fn for_host(peers: usize, allowed_ips: usize) -> Self {
        Self { peers: room(peers, MAX_PEERS), allowed_ips: room(allowed_ips, MAX_ALLOWED_IPS) }
    }

    /// Room for what a namespace other than the start one holds (see [`MapCapacity::for_host`]),
    /// never below 1,024 peers and 4,096 AllowedIPs: each namespace has maps of its own, and
    /// the per-CPU counters are allocated in full.
    pub fn for_namespace(peers: usize, allowed_ips: usize) -> Self {
        Self { peers: room(peers, 1024), allowed_ips: room(allowed_ips, 4096) }
    }

    /// Writes the sizes into the loader, for every map whose size follows the peers.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        let peers = self.peers;
        for (map, size) in [
            ("PEER_COUNTERS", peers),
            ("ENDPOINTS_V4", peers),
            ("ENDPOINTS_V6", peers),
            ("SESSIONS", peers.saturating_mul(4)),
            ("LATENCY", (peers.saturating_mul(4)).max(MAX_LATENCY_BUCKETS)),
            ("ALLOWED_IPS", self.allowed_ips),
            ("HOST_ALLOWED_IPS", self.allowed_ips),
        ] {
            loader.map_max_entries(map, size);
        }
    }
}

/// Half as much again as `count`, never below `floor`.
fn room(count: usize, floor: u32) -> u32 {
    u32::try_from(count.saturating_mul(3) / 2).unwrap_or(u32::MAX).max(floor)
}

impl Default for MapCapacity {
    fn default() -> Self {
        Self::for_host(0, 0)
    }
}

/// What a sync of one interface's peers gave.
#[derive(Debug)]
pub struct PeerSync {
    /// Each peer's id, in the order of the peers; `None` where no id is left.
    pub ids: Vec<Option<u32>>,
    /// AllowedIPs entries the kernel refused (a full map), retried at the next sync, with the
    /// first error; every other entry is in place.
    pub refused: Option<(usize, EbpfError)>,
}

/// The loaded programs, their maps, and what is attached where.
pub struct Probes {
    /// Owns the programs; dropped last, after every link is released.
    ebpf: Ebpf,
    /// Number of possible CPUs: the length of every per-CPU value.
    cpus: usize,
    mode: AttachMode,
    peer_counters: PerCpuArray<MapData, PeerCounters>,
    /// The per-peer array, read in batches by [`Probes::read_peers`] into the sums below
    /// (kept across collections: no per-peer allocation).
    reader: PerCpuArrayReader<PeerCounters>,
    /// Each peer id's counters summed over CPUs, as last read.
    sums: Vec<PeerCounters>,
    interface_traffic: PerCpuHashMap<MapData, u32, InterfaceTraffic>,
    /// The destinations of `no_peer` packets, per CPU (an LRU map).
    no_peer_destinations: PerCpuHashMap<MapData, PeerAddress, u64>,
    /// The sources of handshake initiations received, per CPU (an LRU map).
    initiation_sources: PerCpuHashMap<MapData, PeerAddress, u64>,
    watched: BpfHashMap<MapData, u32, u32>,
    map_errors: PerCpuArray<MapData, u64>,
    peers: PeerTable,
    underlay: UnderlayTable,
    /// `None` when the kernel's drops cannot be counted here (no BTF, no tracepoint access).
    drops: Option<KernelDrops>,
    /// What this kernel cannot give, found at load.
    unavailable: Vec<Unavailable>,
    latency: LatencyTable,
    /// Attached WireGuard interfaces by ifindex.
    attached: HashMap<u32, AttachedInterface>,
    /// Attached underlay NICs by ifindex.
    underlay_nics: HashMap<u32, AttachedInterface>,
}

const TUNNEL_INGRESS: &str = "tunnel_ingress";
const TUNNEL_EGRESS: &str = "tunnel_egress";
const UNDERLAY_INGRESS: &str = "underlay_ingress";
const UNDERLAY_EGRESS: &str = "underlay_egress";
const UNDERLAY_L3_INGRESS: &str = "underlay_l3_ingress";
const UNDERLAY_L3_EGRESS: &str = "underlay_l3_egress";

impl Probes {
    /// Loads the programs into the kernel, their maps sized for `capacity`; nothing is
    /// attached yet. Logs, once, what this kernel cannot give. With `debug` (`--debug-ebpf`),
    /// the programs log what they could not parse, written to wgtel's log from the tokio
    /// runtime this is called on; without it, they carry no log statement at all (see
    /// [`ebpf_log`]).
    pub fn load(mode: AttachMode, capacity: MapCapacity, debug: bool) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let layout = DropLayout::from_kernel();
        let mut loader = EbpfLoader::new();
        capacity.apply(&mut loader);
        ebpf_log::set_level(&mut loader, debug);
        if let Ok(layout) = &layout {
            layout.apply(&mut loader);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| EbpfError::Load(Box::new(e)))?;
        if debug {
            ebpf_log::forward(&mut ebpf)?;
        }
        for name in [
            TUNNEL_INGRESS,
            TUNNEL_EGRESS,
            UNDERLAY_INGRESS,
            UNDERLAY_EGRESS,
            UNDERLAY_L3_INGRESS,
            UNDERLAY_L3_EGRESS,
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing("tunnel program"))?
                .try_into()
                .map_err(|e| EbpfError::Program { name, source: Box::new(e) })?;
            program.load().map_err(|e| EbpfError::Program { name, source: Box::new(e) })?;
        }
        let kernel = KernelVersion::current()
            .map_or_else(|_| "this kernel".to_owned(), |version| format!("kernel {version}"));
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| EbpfError::PossibleCpus(error))?;
        let (drops, drops_unavailable) = count_drops(&mut ebpf, layout, &kernel, cpus)?;
        let resolved = mode.resolve();
        let unavailable: Vec<Unavailable> = (mode == AttachMode::Auto
            && resolved == AttachMode::Clsact)
            .then(|| Unavailable {
                feature: Feature::Tcx,
                reason: format!(
                    "{kernel} has no tcx (6.6+): the programs are attached as clsact filters, \
                     which a killed wgtel leaves behind until its next start"
                ),
            })
            .into_iter()
            .chain(drops_unavailable)
            .collect();
        log_unavailable(&unavailable);
        let (peer_counters, reader) = take_per_cpu_array(&mut ebpf, "PEER_COUNTERS", cpus)?;
        let interface_traffic = take_map(&mut ebpf, "INTERFACE_TRAFFIC")?;
        let no_peer_destinations = take_map(&mut ebpf, "NO_PEER_DESTINATIONS")?;
        let initiation_sources = take_map(&mut ebpf, "INITIATION_SOURCES")?;
        let watched = take_map(&mut ebpf, "WATCHED")?;
        let allowed_ips = take_map(&mut ebpf, "ALLOWED_IPS")?;
        let host_allowed_ips = take_map(&mut ebpf, "HOST_ALLOWED_IPS")?;
        let underlay = UnderlayTable::new(
            take_map(&mut ebpf, "LISTEN_PORTS")?,
            EndpointMaps {
                v4: take_map(&mut ebpf, "ENDPOINTS_V4")?,
                v6: take_map(&mut ebpf, "ENDPOINTS_V6")?,
            },
            LearnedMaps {
                sessions: take_map(&mut ebpf, "SESSIONS")?,
                fragments: take_map(&mut ebpf, "FRAGMENTS")?,
            },
        );
        let map_errors = take_map(&mut ebpf, "MAP_ERRORS")?;
        let latency = LatencyTable::new(
            take_per_cpu_hash(&mut ebpf, "LATENCY", cpus)?,
            take_map(&mut ebpf, "PENDING_PROBES")?,
            take_map(&mut ebpf, "PENDING_HANDSHAKES")?,
        );
        Ok(Self {
            latency,
            cpus,
            ebpf,
            mode: resolved,
            peer_counters,
            reader,
            sums: Vec::new(),
            interface_traffic,
            no_peer_destinations,
            initiation_sources,
            watched,
            map_errors,
            peers: PeerTable::new(allowed_ips, host_allowed_ips, capacity.peers),
            underlay,
            drops,
            unavailable,
            attached: HashMap::new(),
            underlay_nics: HashMap::new(),
        })
    }

    /// What this kernel cannot give.
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// How programs are attached on this kernel.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Whether interface `ifindex` is attached.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// The ifindexes of every attached interface.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(ifindex, attached)| (*ifindex, attached.name()))
    }

    /// Attaches the tunnel programs to interface `name` (index `ifindex`), ingress and egress,
    /// and starts its interface counters at zero.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<(), EbpfError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let zero = self.per_cpu(InterfaceTraffic::default())?;
        self.interface_traffic
            .insert(ifindex, zero, 0)
            .map_err(EbpfError::map("INTERFACE_TRAFFIC", "insert"))?;
        let attached = AttachedInterface::attach(
            &mut self.ebpf,
            self.mode,
            name,
            [TUNNEL_INGRESS, TUNNEL_EGRESS],
        )
        .map_err(|source| EbpfError::Attach { interface: name.to_owned(), source })?;
        self.attached.insert(ifindex, attached);
        self.watched
            .insert(ifindex, WATCHED_WIREGUARD, 0)
            .map_err(EbpfError::map("WATCHED", "insert"))?;
        Ok(())
    }

    /// The underlay NICs the underlay programs are attached to: (ifindex, name).
    pub fn underlay_nics(&self) -> impl Iterator<Item = (u32, &str)> {
        self.underlay_nics.iter().map(|(ifindex, attached)| (*ifindex, attached.name()))
    }

    /// Attaches the underlay programs to NIC `name` (index `ifindex`), ingress and egress:
    /// those that parse an Ethernet header when `ethernet`, else those that start at the IP
    /// header.
    pub fn attach_underlay(
        &mut self,
        name: &str,
        ifindex: u32,
        ethernet: bool,
    ) -> Result<(), EbpfError> {
        if self.underlay_nics.contains_key(&ifindex) {
            return Ok(());
        }
        let programs = if ethernet {
            [UNDERLAY_INGRESS, UNDERLAY_EGRESS]
        } else {
            [UNDERLAY_L3_INGRESS, UNDERLAY_L3_EGRESS]
        };
        let attached = AttachedInterface::attach(&mut self.ebpf, self.mode, name, programs)
            .map_err(|source| EbpfError::Attach { interface: name.to_owned(), source })?;
        self.underlay_nics.insert(ifindex, attached);
        Ok(())
    }

    /// Detaches from underlay NIC `ifindex`; `gone` as for [`Probes::release`].
    pub fn release_underlay(&mut self, ifindex: u32, gone: bool) -> Result<(), EbpfError> {
        release_attached(self.underlay_nics.remove(&ifindex), gone)
    }

    /// Tells the underlay programs that WireGuard interface `ifindex` listens on
    /// `listen_port` and where its peers (id, endpoint) are.
    pub fn sync_endpoints(
        &mut self,
        ifindex: u32,
        listen_port: Option<u16>,
        peers: impl IntoIterator<Item = (u32, SocketAddr)>,
    ) -> Result<(), EbpfError> {
        self.underlay.sync(ifindex, listen_port, peers)
    }

    /// Every kernel drop counted on a watched interface, sorted by interface, peer and reason;
    /// `None` when drops are not counted.
    pub fn drops(&mut self) -> Option<Vec<Drop>> {
        self.drops.as_mut().map(KernelDrops::read)
    }

    /// Every latency histogram, by peer id and kind; round trips unanswered for
    /// [`PROBE_TIMEOUT`] are counted as lost first.
    pub fn latency(
        &mut self,
    ) -> HashMap<
        u32,
        std::collections::BTreeMap<collector_common::latency::LatencyKind, KernelHistogram>,
    > {
        self.latency.read()
    }

    /// Detaches from interface `ifindex` and forgets its peers and counters. `gone` says the
    /// interface no longer exists (the kernel already dropped the attachment).
    pub fn release(&mut self, ifindex: u32, gone: bool) -> Result<(), EbpfError> {
        let freed = self.peers.forget_interface(ifindex);
        self.forget_peers(&freed);
        self.underlay.forget_interface(ifindex);
        let _unwatched = self.watched.remove(&ifindex);
        if let Some(drops) = &mut self.drops {
            drops.forget(ifindex, None);
        }
        // A missing entry means it was never created: nothing to undo.
        let _ignored = self.interface_traffic.remove(&ifindex);
        release_attached(self.attached.remove(&ifindex), gone)
    }

    /// Brings the peer ids and the AllowedIPs trie of interface `ifindex` in line with
    /// `peers`, and returns each peer's id (in the order of `peers`; `None` where the maps are
    /// full). An entry the kernel refuses is reported in the result, not as an error: the
    /// interface keeps every other entry and its counters.
    pub fn sync_peers(&mut self, ifindex: u32, peers: &[PeerState]) -> Result<PeerSync, EbpfError> {
        let (ids, fresh) = self.peers.assign(ifindex, peers);
        // Zero a fresh id's counters before the trie points at it: the id may be reused.
        for id in fresh {
            let zero = self.per_cpu(PeerCounters::default())?;
            self.peer_counters
                .set(id, zero, 0)
                .map_err(EbpfError::map("PEER_COUNTERS", "reset"))?;
        }
        let installed = self.peers.install(ifindex, peers, &ids);
        if !installed.freed.is_empty() {
            if let Some(drops) = &mut self.drops {
                drops.forget(ifindex, Some(&installed.freed.iter().copied().collect()));
            }
            self.forget_peers(&installed.freed);
        }
        let refused = installed.first_error.map(|error| (installed.refused, error));
        Ok(PeerSync { ids, refused })
    }

    /// Clears what the kernel keeps under the ids of peers that are gone, besides their
    /// counters (zeroed when an id is given again): learned sessions and fragments, round
    /// trips waiting, histograms. One walk of each map, however many peers went.
    fn forget_peers(&mut self, freed: &[u32]) {
        if freed.is_empty() {
            return;
        }
        let freed: HashSet<u32> = freed.iter().copied().collect();
        self.underlay.forget_peers(&freed);
        self.latency.forget_peers(&freed);
    }

    /// Inserts the programs could not make, per map (a full map), summed over CPUs.
    pub fn map_errors(&self) -> Result<Vec<(&'static str, u64)>, EbpfError> {
        MapId::ALL
            .iter()
            .map(|map| {
                let values = self
                    .map_errors
                    .get(&(*map as u32), 0)
                    .map_err(EbpfError::map("MAP_ERRORS", "read"))?;
                Ok((map.name(), values.iter().sum()))
            })
            .collect()
    }

    /// The same value for every possible CPU.
    fn per_cpu<T: aya::Pod>(&self, value: T) -> Result<PerCpuValues<T>, EbpfError> {
        PerCpuValues::try_from(vec![value; self.cpus]).map_err(EbpfError::PossibleCpus)
    }

    /// Reads the counters of every peer id given so far, summed over CPUs, for
    /// [`Probes::peer_counters`]: batch lookups (see [`batch`]), not a lookup per peer.
    pub fn read_peers(&mut self) -> Result<(), EbpfError> {
        let ids = self.peers.id_bound();
        self.reader
            .read(ids, PeerCounters::merge, &mut self.sums)
            .map_err(|source| EbpfError::Read { map: "PEER_COUNTERS", source })
    }

    /// What the kernel counted for peer `id` (tunnel and underlay), summed over CPUs, at the
    /// last [`Probes::read_peers`].
    pub fn peer_counters(&self, id: u32) -> PeerCounters {
        self.sums.get(id as usize).copied().unwrap_or_default()
    }

    /// What the kernel counted on interface `ifindex` that no peer could be tied to.
    pub fn interface_counters(&self, ifindex: u32) -> Result<InterfaceCounters, EbpfError> {
        let values = self
            .interface_traffic
            .get(&ifindex, 0)
            .map_err(EbpfError::map("INTERFACE_TRAFFIC", "read"))?;
        Ok(values.iter().fold(InterfaceTraffic::default(), |sum, cpu| sum.add(*cpu)))
    }

    /// The destinations routed into interface `ifindex` that no peer accepted, with their
    /// packets summed over CPUs, as far as the kernel's LRU map remembers them.
    pub fn no_peer_destinations(&self, ifindex: u32) -> Result<Vec<(IpAddr, u64)>, EbpfError> {
        address_counts(&self.no_peer_destinations, "NO_PEER_DESTINATIONS", ifindex)
    }

    /// The sources of the handshake initiations received on interface `ifindex`'s port, with
    /// their number summed over CPUs, as far as the kernel's LRU map remembers them.
    pub fn initiation_sources(&self, ifindex: u32) -> Result<Vec<(IpAddr, u64)>, EbpfError> {
        address_counts(&self.initiation_sources, "INITIATION_SOURCES", ifindex)
    }

    /// How many AllowedIPs entries the trie holds for interface `ifindex`.
    pub fn allowed_ip_entries(&self, ifindex: u32) -> usize {
        self.peers.entries(ifindex)
    }
}

/// The entries of an (interface, address) -> per-CPU count map for `ifindex`, summed.
fn address_counts(
    map: &PerCpuHashMap<MapData, PeerAddress, u64>,
    name: &'static str,
    ifindex: u32,
) -> Result<Vec<(IpAddr, u64)>, EbpfError> {
    let mut found = Vec::new();
    for entry in map {
        let (key, counts) = entry.map_err(EbpfError::map(name, "read"))?;
        if key.ifindex == ifindex {
            let address = key.ipv4().map_or(IpAddr::from(key.address), IpAddr::from);
            found.push((address, counts.iter().sum()));
        }
    }
    Ok(found)
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("mode", &self.mode)
            .field("attached", &self.attached)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl std::ops::Drop for Probes {
    fn drop(&mut self) {
        for (ifindex, attached) in self.attached.drain().chain(self.underlay_nics.drain()) {
            let name = attached.name().to_owned();
            if let Err(error) = attached.release(false) {
                log::warn!("detaching from {name} (ifindex {ifindex}): {error}");
            }
        }
    }
}

/// Releases `attached`, if anything was; `gone` as for [`Probes::release`].
fn release_attached(attached: Option<AttachedInterface>, gone: bool) -> Result<(), EbpfError> {
    let Some(attached) = attached else { return Ok(()) };
    let interface = attached.name().to_owned();
    attached.release(gone).map_err(|source| EbpfError::Attach { interface, source })
}

/// Loads and attaches the drop program `layout` chooses for this kernel (`kernel` in
/// messages): the counters, and what they lack when they lack something (the reasons, on a
/// kernel before 5.17), or nothing and why, when drops cannot be counted here. `cpus`: the
/// possible CPUs, values per entry of the per-CPU counters.
fn count_drops(
    ebpf: &mut Ebpf,
    layout: Result<DropLayout, BtfError>,
    kernel: &str,
    cpus: usize,
) -> Result<(Option<KernelDrops>, Option<Unavailable>), EbpfError> {
    let failed =
        |reason: String| Ok((None, Some(Unavailable { feature: Feature::KernelDrops, reason })));
    let layout = match layout {
        Ok(layout) => layout,
        Err(error) => return failed(format!("reading the kernel's BTF: {error}")),
    };
    if let Err(error) = attach_kfree_skb(ebpf, layout.program()) {
        return failed(format!(
            "attaching to skb:kfree_skb: {}",
            crate::collect::error_chain(&error)
        ));
    }
    let lacking = (!layout.has_reasons()).then(|| Unavailable {
        feature: Feature::DropReasons,
        reason: format!(
            "{kernel} has no skb drop reasons (5.17+): drops are counted without one, as \
             `unknown`, and echo replies freed on a WireGuard interface are not counted (ping's \
             raw-socket copies end so)"
        ),
    });
    Ok((Some(KernelDrops::new(take_per_cpu_hash(ebpf, "DROPS", cpus)?, layout)), lacking))
}

/// One line for everything this kernel cannot give; a warning when drops are not counted at
/// all.
fn log_unavailable(unavailable: &[Unavailable]) {
    if unavailable.is_empty() {
        return;
    }
    let text = unavailable
        .iter()
        .map(|missing| format!("{}: {}", missing.feature.as_str(), missing.reason))
        .collect::<Vec<_>>()
        .join("; ");
    if unavailable.iter().any(|missing| missing.feature == Feature::KernelDrops) {
        log::warn!("unavailable on this kernel: {text}");
    } else {
        log::info!("unavailable on this kernel: {text}");
    }
}

/// Loads the drop program `name` and attaches it to the raw tracepoint `kfree_skb`; the link
/// lives as long as `ebpf`.
fn attach_kfree_skb(ebpf: &mut Ebpf, name: &'static str) -> Result<(), EbpfError> {
    let program_error = |e| EbpfError::Program { name, source: Box::new(e) };
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(EbpfError::Missing("kfree_skb program"))?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    program.attach("kfree_skb").map_err(program_error)?;
    Ok(())
}

/// Removes from `map` every entry that `stale` picks: one walk, then the removals (a map cannot
/// lose entries while it is walked).
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    stale: impl Fn(&K, &V) -> bool,
) {
    let keys: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, value)| stale(key, value))
        .map(|(key, _)| key)
        .collect();
    for key in keys {
        let _gone = map.remove(&key);
    }
}

/// Per-CPU array `name` and a batch reader of it.
fn take_per_cpu_array<V: aya::Pod + Default>(
    ebpf: &mut Ebpf,
    name: &'static str,
    cpus: usize,
) -> Result<(PerCpuArray<MapData, V>, PerCpuArrayReader<V>), EbpfError> {
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    let reader = PerCpuArrayReader::new(&map, cpus)
        .map_err(|source| EbpfError::Read { map: name, source })?;
    Ok((PerCpuArray::try_from(map).map_err(EbpfError::map(name, "open"))?, reader))
}

/// Per-CPU hash map `name` and a batch reader of it.
fn take_per_cpu_hash<K: aya::Pod, V: aya::Pod + Default>(
    ebpf: &mut Ebpf,
    name: &'static str,
    cpus: usize,
) -> Result<BatchedHashMap<K, V>, EbpfError> {
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    let reader = PerCpuHashReader::new(&map, cpus)
        .map_err(|source| EbpfError::Read { map: name, source })?;
    Ok((PerCpuHashMap::try_from(map).map_err(EbpfError::map(name, "open"))?, reader))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(EbpfError::map(name, "open"))
}
