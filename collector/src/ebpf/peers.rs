//! Peer ids and the AllowedIPs trie, kept in step with WireGuard's peer lists.
//!
//! Each (interface, public key) gets a small id that indexes the per-CPU counters; the kernel
//! side never sees keys. The trie maps `[ifindex][address]/prefix` to that id; host entries
//! (/32, /128) go to a hash instead, which the kernel looks up first (see
//! `collector-ebpf/src/peers.rs`). A sync inserts
//! what is new, removes what is gone, and frees the ids of removed peers for reuse (the
//! caller zeroes an id's counters before its first use).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key};
use collector_common::maps::{
    FULL_PREFIX_BITS, MAX_PEERS, PeerAddress, ipv4_mapped, ipv4_prefix_len, ipv6_prefix_len,
};

use super::EbpfError;
use crate::wg::{AllowedIp, PeerState, PublicKey};

/// A trie entry as the collector tracks it: prefix length and masked address.
type Prefix = (u32, [u8; 16]);

/// Peer ids and trie entries of every interface.
pub(super) struct PeerTable {
    trie: LpmTrie<MapData, PeerAddress, u32>,
    hosts: BpfHashMap<MapData, PeerAddress, u32>,
    ids: HashMap<(u32, PublicKey), u32>,
    free: Vec<u32>,
    next: u32,
    /// What the trie holds, per interface.
    installed: HashMap<u32, HashMap<Prefix, u32>>,
}

impl PeerTable {
    pub(super) fn new(
        trie: LpmTrie<MapData, PeerAddress, u32>,
        hosts: BpfHashMap<MapData, PeerAddress, u32>,
    ) -> Self {
        Self {
            trie,
            hosts,
            ids: HashMap::new(),
            free: Vec::new(),
            next: 0,
            installed: HashMap::new(),
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
                    (self.next < MAX_PEERS).then(|| {
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
    ) -> Result<(), EbpfError> {
        let mut desired = HashMap::new();
        for (peer, id) in peers.iter().zip(ids) {
            let Some(id) = *id else { continue };
            for allowed in &peer.allowed_ips {
                desired.insert(prefix(*allowed), id);
            }
        }
        let installed = self.installed.entry(ifindex).or_default();
        for (prefix, id) in installed.iter() {
            if desired.get(prefix) != Some(id) {
                let (prefix_len, address) = *prefix;
                let key = PeerAddress::new(ifindex, address);
                if prefix_len == FULL_PREFIX_BITS {
                    self.hosts
                        .remove(&key)
                        .map_err(EbpfError::map("HOST_ALLOWED_IPS", "remove"))?;
                } else {
                    self.trie
                        .remove(&Key::new(prefix_len, key))
                        .map_err(EbpfError::map("ALLOWED_IPS", "remove"))?;
                }
            }
        }
        installed.retain(|prefix, id| desired.get(prefix) == Some(id));
        for (prefix, id) in desired {
            if installed.get(&prefix) != Some(&id) {
                let (prefix_len, address) = prefix;
                let key = PeerAddress::new(ifindex, address);
                if prefix_len == FULL_PREFIX_BITS {
                    self.hosts
                        .insert(key, id, 0)
                        .map_err(EbpfError::map("HOST_ALLOWED_IPS", "insert"))?;
                } else {
                    self.trie
                        .insert(&Key::new(prefix_len, key), id, 0)
                        .map_err(EbpfError::map("ALLOWED_IPS", "insert"))?;
                }
                installed.insert(prefix, id);
            }
        }
        let listed: HashSet<PublicKey> = peers.iter().map(|peer| peer.public_key).collect();
        let free = &mut self.free;
        self.ids.retain(|(peer_ifindex, key), id| {
            let keep = *peer_ifindex != ifindex || listed.contains(key);
            if !keep {
                free.push(*id);
            }
            keep
        });
        Ok(())
    }

    /// Removes every trie entry and id of interface `ifindex`.
    pub(super) fn forget_interface(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        self.install(ifindex, &[], &[])?;
        self.installed.remove(&ifindex);
        Ok(())
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

/// The trie prefix of an AllowedIPs entry, host bits cleared.
fn prefix(allowed: AllowedIp) -> Prefix {
    match allowed.address {
        IpAddr::V4(address) => {
            let cidr = allowed.cidr.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(cidr)).unwrap_or(0);
            let masked = u32::from(address) & mask;
            (ipv4_prefix_len(cidr), ipv4_mapped(masked.to_be_bytes()))
        }
        IpAddr::V6(address) => {
            let cidr = allowed.cidr.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(cidr)).unwrap_or(0);
            let masked = u128::from(address) & mask;
            (ipv6_prefix_len(cidr), masked.to_be_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_clear_host_bits_and_map_ipv4() {
        let allowed = AllowedIp { address: IpAddr::from([198, 19, 1, 77]), cidr: 24 };
        assert_eq!(prefix(allowed), (152, ipv4_mapped([198, 19, 1, 0])));
        let all = AllowedIp { address: IpAddr::from([10, 1, 2, 3]), cidr: 0 };
        assert_eq!(prefix(all), (128, ipv4_mapped([0, 0, 0, 0])));
        let host = AllowedIp { address: IpAddr::from([198, 19, 1, 2]), cidr: 32 };
        assert_eq!(prefix(host), (160, ipv4_mapped([198, 19, 1, 2])));
        let v6 = AllowedIp { address: IpAddr::from([0xfd00, 0x19, 0, 1, 0, 0, 0, 0x11]), cidr: 64 };
        let mut expected = [0u8; 16];
        expected[..8].copy_from_slice(&[0xfd, 0, 0, 0x19, 0, 0, 0, 1]);
        assert_eq!(prefix(v6), (96, expected));
        let v6_all = AllowedIp { address: IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]), cidr: 0 };
        assert_eq!(prefix(v6_all), (32, [0; 16]));
    }
}
