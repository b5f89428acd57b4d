//! The maps the programs share with the collector. Their names are the contract with
//! `collector/src/ebpf`: the loader finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, PerCpuArray, PerCpuHashMap},
};
use collector_common::maps::{
    InterfaceTraffic, MAX_ALLOWED_IPS, MAX_INTERFACES, MAX_PEERS, PeerAddress, PeerTraffic,
};

/// AllowedIPs of every watched interface -> peer id; written by the collector only.
#[map]
pub(crate) static ALLOWED_IPS: LpmTrie<PeerAddress, u32> =
    LpmTrie::with_max_entries(MAX_ALLOWED_IPS, 0);

/// Tunnel traffic per peer id, per CPU.
#[map]
pub(crate) static PEER_TRAFFIC: PerCpuArray<PeerTraffic> =
    PerCpuArray::with_max_entries(MAX_PEERS, 0);

/// Traffic not tied to a peer, per ifindex, per CPU. The collector creates an entry when it
/// attaches to an interface, so the programs never insert.
#[map]
pub(crate) static INTERFACE_TRAFFIC: PerCpuHashMap<u32, InterfaceTraffic> =
    PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);
