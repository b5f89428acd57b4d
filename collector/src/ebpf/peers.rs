//! Peer ids and the AllowedIPs trie, kept in step with WireGuard's peer lists.
//!
//! Each (interface, public key) gets a small id that indexes the per-CPU counters; the kernel
//! side never sees keys. The trie maps `[ifindex][address]/prefix` to that id; host entries
//! (/32, /128) go to a hash instead, which the kernel looks up first (see
//! `collector-ebpf/src/peers.rs`). A sync inserts
//! what is new or moved first and removes what is gone after, so a prefix that moves from one
//! peer to another is never missing in between (no false `no_peer`); an entry the kernel
//! refuses (a full map) is counted and retried at the next sync, and the rest stays in
//! place. The ids of removed peers are freed for reuse, returned to the caller, which clears
//! what the kernel keeps under them before they are used again.

use std::{collections::HashMap, net::IpAddr};

use foldhash::{HashMap as FastMap, HashSet as FastSet};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key};
use collector_common::maps::{FULL_PREFIX_BITS, InnerAddress, PeerAddress, prefix_len};

use super::EbpfError;
use crate::wg::{AllowedIp, PeerState, PublicKey};

/// A trie entry as the collector tracks it: prefix length and masked address.
type Prefix = (u32, InnerAddress);

/// What a sync of one interface did.
#[derive(Debug, Default)]
pub(super) struct Installed {
    /// Ids of peers that are gone, free for reuse.
    pub(super) freed: Vec<u32>,
    /// AllowedIPs entries the kernel refused (retried at the next sync), and why the first was.
    pub(super) refused: usize,
    /// The first refusal.
    pub(super) first_error: Option<EbpfError>,
}

/// Peer ids and trie entries of every interface.
pub(super) struct PeerTable {
    trie: LpmTrie<MapData, PeerAddress, u32>,
    hosts: BpfHashMap<MapData, PeerAddress, u32>,
    ids: FastMap<(u32, PublicKey), u32>,
    free: Vec<u32>,
    next: u32,
    /// How many ids the maps hold (the size they were created with).
    capacity: u32,
    /// What the trie holds, per interface.
    installed: HashMap<u32, FastMap<Prefix, u32>>,
    /// Per interface, the peers (by id) and AllowedIPs of the last sync that left nothing to
    /// retry: a sync of the same is nothing to do (a gateway's peers rarely change).
    synced: HashMap<u32, Vec<(u32, Option<Prefix>)>>,
    /// The list a sync is compared with, kept across syncs.
    scratch: Vec<(u32, Option<Prefix>)>,
}

impl PeerTable {
    pub(super) fn new(
        trie: LpmTrie<MapData, PeerAddress, u32>,
        hosts: BpfHashMap<MapData, PeerAddress, u32>,
        capacity: u32,
    ) -> Self {
        Self {
            trie,
            hosts,
            ids: FastMap::default(),
            free: Vec::new(),
            next: 0,
            capacity,
            installed: HashMap::new(),
            synced: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Gives every peer of `ifindex` an id: the one it had, or a fresh one (listed in the
    /// second vector so the caller can zero its counters). `None` where no id is left.
    pub(super) fn assign(
        &mut self,
        ifindex: u32,
        peers: &[PeerState],
    ) -> (Vec<Option<u32>>, Vec<u32>) {
        let mut fresh = Vec::new();
        let ids = peers
            .iter()
            .map(|peer| {
                let key = (ifindex, peer.public_key);
                if let Some(&id) = self.ids.get(&key) {
                    return Some(id);
                }
                let id = self.free.pop().or_else(|| {
                    (self.next < self.capacity).then(|| {
                        self.next += 1;
                        self.next - 1
                    })
                })?;
                self.ids.insert(key, id);
                fresh.push(id);
                Some(id)
            })
            .collect();
        (ids, fresh)
    }

    /// Makes the trie hold exactly the AllowedIPs of `peers` (with their `ids`) for `ifindex`,
    /// then frees the ids of this interface's peers that are no longer listed.
    pub(super) fn install(
        &mut self,
        ifindex: u32,
        peers: &[PeerState],
        ids: &[Option<u32>],
    ) -> Installed {
        let mut listing = std::mem::take(&mut self.scratch);
        listing.clear();
        for (peer, id) in peers.iter().zip(ids) {
            let Some(id) = *id else { continue };
            listing.push((id, None));
            listing.extend(peer.allowed_ips.iter().map(|allowed| (id, Some(prefix(*allowed)))));
        }
        // wireguard-go lists its peers in a different order at each request (a Go map).
        listing.sort_unstable();
        if self.synced.get(&ifindex) == Some(&listing) {
            self.scratch = listing;
            return Installed::default();
        }
        let outcome = self.install_changed(ifindex, peers, ids);
        if outcome.refused == 0 && self.entries(ifindex) == listing.len() - count_peers(&listing) {
            self.scratch = self.synced.insert(ifindex, listing).unwrap_or_default();
        } else {
            self.synced.remove(&ifindex);
            self.scratch = listing;
        }
        outcome
    }

    /// [`PeerTable::install`] when the peers or their AllowedIPs changed since the last sync.
    fn install_changed(
        &mut self,
        ifindex: u32,
        peers: &[PeerState],
        ids: &[Option<u32>],
    ) -> Installed {
        let mut desired = FastMap::default();
        for (peer, id) in peers.iter().zip(ids) {
            let Some(id) = *id else { continue };
            for allowed in &peer.allowed_ips {
                desired.insert(prefix(*allowed), id);
            }
        }
        let mut outcome = Installed::default();
        let installed = self.installed.entry(ifindex).or_default();
        // New and moved entries first: an update replaces the old peer's id in one step.
        for (prefix, id) in &desired {
            if installed.get(prefix) == Some(id) {
                continue;
            }
            match write_entry(&mut self.trie, &mut self.hosts, ifindex, *prefix, Some(*id)) {
                Ok(()) => {
                    installed.insert(*prefix, *id);
                }
                Err(error) => {
                    outcome.refused += 1;
                    outcome.first_error.get_or_insert(error);
                }
            }
        }
        let stale: Vec<Prefix> =
            installed.keys().filter(|prefix| !desired.contains_key(*prefix)).copied().collect();
        for prefix in stale {
            // A removal that fails stays listed, and is tried again at the next sync.
            if write_entry(&mut self.trie, &mut self.hosts, ifindex, prefix, None).is_ok() {
                installed.remove(&prefix);
            }
        }
        let listed: FastSet<PublicKey> = peers.iter().map(|peer| peer.public_key).collect();
        let freed = &mut outcome.freed;
        self.ids.retain(|(peer_ifindex, key), id| {
            let keep = *peer_ifindex != ifindex || listed.contains(key);
            if !keep {
                freed.push(*id);
            }
            keep
        });
        self.free.extend_from_slice(&outcome.freed);
        outcome
    }

    /// Removes every trie entry and id of interface `ifindex`; the ids freed.
    pub(super) fn forget_interface(&mut self, ifindex: u32) -> Vec<u32> {
        let outcome = self.install(ifindex, &[], &[]);
        self.synced.remove(&ifindex);
        if self.installed.get(&ifindex).is_some_and(HashMap::is_empty) {
            self.installed.remove(&ifindex);
        }
        outcome.freed
    }

    /// One more than the highest id given so far: every id in use is below it.
    pub(super) fn id_bound(&self) -> u32 {
        self.next
    }

    /// How many AllowedIPs entries (trie and host hash) interface `ifindex` has.
    pub(super) fn entries(&self, ifindex: u32) -> usize {
        self.installed.get(&ifindex).map_or(0, HashMap::len)
    }
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.ids.len())
            .field("free", &self.free.len())
            .finish_non_exhaustive()
    }
}

/// How many entries of `listing` stand for a peer rather than one of its AllowedIPs.
fn count_peers(listing: &[(u32, Option<Prefix>)]) -> usize {
    listing.iter().filter(|(_, prefix)| prefix.is_none()).count()
}

/// Writes the entry of `prefix` on `ifindex`: `id`, or removed when `None`. Host entries
/// (/32, /128) live in the hash, shorter prefixes in the trie.
fn write_entry(
    trie: &mut LpmTrie<MapData, PeerAddress, u32>,
    hosts: &mut BpfHashMap<MapData, PeerAddress, u32>,
    ifindex: u32,
    (prefix_len, address): Prefix,
    id: Option<u32>,
) -> Result<(), EbpfError> {
    let key = PeerAddress::new(ifindex, address);
    match (prefix_len == FULL_PREFIX_BITS, id) {
        (true, Some(id)) => {
            hosts.insert(key, id, 0).map_err(EbpfError::map("HOST_ALLOWED_IPS", "insert"))
        }
        (true, None) => hosts.remove(&key).map_err(EbpfError::map("HOST_ALLOWED_IPS", "remove")),
        (false, Some(id)) => trie
            .insert(&Key::new(prefix_len, key), id, 0)
            .map_err(EbpfError::map("ALLOWED_IPS", "insert")),
        (false, None) => {
            trie.remove(&Key::new(prefix_len, key)).map_err(EbpfError::map("ALLOWED_IPS", "remove"))
        }
    }
}

/// The trie prefix of an AllowedIPs entry, host bits cleared. An IPv4 host entry has the
/// full prefix length too: its 96 bits after the address are zero in every key.
fn prefix(allowed: AllowedIp) -> Prefix {
    match allowed.address {
        IpAddr::V4(address) => {
            let cidr = allowed.cidr.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(cidr)).unwrap_or(0);
            let masked = u32::from(address) & mask;
            let length = if cidr == 32 { FULL_PREFIX_BITS } else { prefix_len(cidr) };
            (length, InnerAddress::ipv4(masked.to_be_bytes()))
        }
        IpAddr::V6(address) => {
            let cidr = allowed.cidr.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(cidr)).unwrap_or(0);
            let masked = u128::from(address) & mask;
            (prefix_len(cidr), InnerAddress::ipv6(masked.to_be_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_clear_host_bits_and_keep_the_family() {
        let allowed = AllowedIp { address: IpAddr::from([198, 19, 1, 77]), cidr: 24 };
        assert_eq!(prefix(allowed), (88, InnerAddress::ipv4([198, 19, 1, 0])));
        let all = AllowedIp { address: IpAddr::from([10, 1, 2, 3]), cidr: 0 };
        assert_eq!(prefix(all), (64, InnerAddress::ipv4([0, 0, 0, 0])));
        let host = AllowedIp { address: IpAddr::from([198, 19, 1, 2]), cidr: 32 };
        assert_eq!(prefix(host), (192, InnerAddress::ipv4([198, 19, 1, 2])));
        let v6 = AllowedIp { address: IpAddr::from([0xfd00, 0x19, 0, 1, 0, 0, 0, 0x11]), cidr: 64 };
        let mut expected = [0u8; 16];
        expected[..8].copy_from_slice(&[0xfd, 0, 0, 0x19, 0, 0, 0, 1]);
        assert_eq!(prefix(v6), (128, InnerAddress::ipv6(expected)));
        let v6_all = AllowedIp { address: IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]), cidr: 0 };
        assert_eq!(prefix(v6_all), (64, InnerAddress::ipv6([0; 16])));
        let v6_host = AllowedIp { address: IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]), cidr: 128 };
        assert_eq!(prefix(v6_host).0, 192);
    }
}
