//! The maps the programs share with the collector. Their names are the contract with
//! `collector/src/ebpf`: the loader finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
};
use collector_common::{
    latency::{LatencyKey, PendingProbe, PendingStart},
    maps::{
        DropKey, EndpointKey, FragmentKey, InterfaceTraffic, Ipv4EndpointKey, MAP_IDS,
        MAX_ALLOWED_IPS, MAX_DROP_COUNTERS, MAX_ENDPOINTS, MAX_FRAGMENTED_DATAGRAMS,
        MAX_INITIATION_SOURCES, MAX_INTERFACES, MAX_LATENCY_BUCKETS, MAX_NO_PEER_DESTINATIONS,
        MAX_PEERS, MAX_PENDING, MAX_SESSIONS, PeerAddress, PeerCounters, SessionKey, UDP_PORTS,
    },
};

/// AllowedIPs shorter than a host of every watched interface -> peer id; written by the
/// collector only.
#[map]
pub(crate) static ALLOWED_IPS: LpmTrie<PeerAddress, u32> =
    LpmTrie::with_max_entries(MAX_ALLOWED_IPS, 0);

/// AllowedIPs that are one host (/32, /128) of every watched interface -> peer id: looked up
/// before the trie.
#[map]
pub(crate) static HOST_ALLOWED_IPS: HashMap<PeerAddress, u32> =
    HashMap::with_max_entries(MAX_ALLOWED_IPS, 0);

/// Tunnel and underlay counters per peer id, per CPU.
#[map]
pub(crate) static PEER_COUNTERS: PerCpuArray<PeerCounters> =
    PerCpuArray::with_max_entries(MAX_PEERS, 0);

/// Traffic not tied to a peer, per WireGuard ifindex, per CPU. The collector creates an entry
/// when it attaches to an interface, so the programs never insert.
#[map]
pub(crate) static INTERFACE_TRAFFIC: PerCpuHashMap<u32, InterfaceTraffic> =
    PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

/// UDP port -> ifindex of the WireGuard interface listening on it, 0 when none (no interface
/// has index 0); written by the collector. An array indexed by the port, not a hash: the
/// verifier inlines an array lookup (`array_map_gen_lookup`: a bounds check and an address
/// computation) where a hash lookup hashes the key and walks a bucket, and every UDP datagram
/// on the underlay asks.
#[map]
pub(crate) static LISTEN_PORTS: Array<u32> = Array::with_max_entries(UDP_PORTS, 0);

/// A peer's current IPv4 endpoint -> peer id; written by the collector every interval
/// (endpoints roam). Apart from the IPv6 ones: its key is half the size, and cheaper to hash.
#[map]
pub(crate) static ENDPOINTS_V4: HashMap<Ipv4EndpointKey, u32> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// A peer's current IPv6 endpoint -> peer id; written by the collector every interval.
#[map]
pub(crate) static ENDPOINTS_V6: HashMap<EndpointKey, u32> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Session index this host chose -> peer id, learned from the handshakes it sends; ties
/// messages to a peer whose endpoint is not (yet) known, or shared behind one NAT.
#[map]
pub(crate) static SESSIONS: LruHashMap<SessionKey, u32> =
    LruHashMap::with_max_entries(MAX_SESSIONS, 0);

/// A fragmented datagram -> peer id of its first fragment, for the later fragments.
#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragmentKey, u32> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Interfaces whose kernel drops are counted -> `WATCHED_WIREGUARD` or `WATCHED_UNDERLAY`.
#[map]
pub(crate) static WATCHED: HashMap<u32, u32> = HashMap::with_max_entries(2 * MAX_INTERFACES, 0);

/// Kernel drops by interface, peer and reason, per CPU.
#[map]
pub(crate) static DROPS: PerCpuHashMap<DropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DROP_COUNTERS, 0);

/// Round trips inside the tunnel (TCP SYN, echo request) waiting for their answer; the
/// collector expires the ones never answered and counts them as lost.
#[map]
pub(crate) static PENDING_PROBES: LruHashMap<PendingProbe, PendingStart> =
    LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Handshakes waiting for their response, by the session index the response will carry as
/// its receiver index.
#[map]
pub(crate) static PENDING_HANDSHAKES: LruHashMap<SessionKey, PendingStart> =
    LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Latency histograms: samples per (peer, kind, log2 bucket), and their sum, per CPU.
#[map]
pub(crate) static LATENCY: PerCpuHashMap<LatencyKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_LATENCY_BUCKETS, 0);

/// Inserts that failed (a full hash map), per map (`MapId`), per CPU: data the programs could
/// not keep is counted, never lost silently.
#[map]
pub(crate) static MAP_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_IDS, 0);

/// Destinations of packets routed into a watched interface that no peer accepts -> packets,
/// per CPU; the least recently seen go first when it is full.
#[map]
pub(crate) static NO_PEER_DESTINATIONS: LruPerCpuHashMap<PeerAddress, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_NO_PEER_DESTINATIONS, 0);

/// Sources of the handshake initiations received on a watched interface's port -> their
/// number, per CPU; the least recently seen go first when it is full.
#[map]
pub(crate) static INITIATION_SOURCES: LruPerCpuHashMap<PeerAddress, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_INITIATION_SOURCES, 0);
