//! The underlay maps the collector keeps: which WireGuard interface listens on which UDP port,
//! and which endpoint belongs to which peer (refreshed every interval: endpoints roam); and
//! the ones the programs learn (session indices, fragmented datagrams), cleared of a peer
//! once it is gone, so that its id, given to a new peer, starts clean.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use foldhash::HashMap as FastMap;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use collector_common::maps::{EndpointKey, FragmentKey, Ipv4EndpointKey, SessionKey, ipv4_mapped};

use super::EbpfError;

/// The listen-port and endpoint maps, and what the collector put in them.
pub(super) struct UnderlayTable {
    /// Indexed by UDP port: the ifindex listening on it, 0 for none.
    listen_ports: Array<MapData, u32>,
    endpoints: EndpointMaps,
    /// Listen port per WireGuard ifindex.
    ports: HashMap<u32, u16>,
    /// Endpoint entries per WireGuard ifindex.
    installed: HashMap<u32, FastMap<EndpointKey, u32>>,
    /// Session index -> peer id, written by the programs (an LRU map, opened as a hash map).
    sessions: BpfHashMap<MapData, SessionKey, u32>,
    /// Fragmented datagram -> peer id, written by the programs (LRU).
    fragments: BpfHashMap<MapData, FragmentKey, u32>,
}

/// The maps the underlay programs learn into.
pub(super) struct LearnedMaps {
    pub(super) sessions: BpfHashMap<MapData, SessionKey, u32>,
    pub(super) fragments: BpfHashMap<MapData, FragmentKey, u32>,
}

/// The endpoint maps of the programs: IPv4 endpoints under their short key, the others under
/// the whole one.
pub(super) struct EndpointMaps {
    pub(super) v4: BpfHashMap<MapData, Ipv4EndpointKey, u32>,
    pub(super) v6: BpfHashMap<MapData, EndpointKey, u32>,
}

impl EndpointMaps {
    fn insert(&mut self, key: EndpointKey, id: u32) -> Result<(), EbpfError> {
        match key.to_ipv4() {
            Some(v4) => self.v4.insert(v4, id, 0).map_err(EbpfError::map("ENDPOINTS_V4", "insert")),
            None => self.v6.insert(key, id, 0).map_err(EbpfError::map("ENDPOINTS_V6", "insert")),
        }
    }

    fn remove(&mut self, key: &EndpointKey) {
        let _gone = match key.to_ipv4() {
            Some(v4) => self.v4.remove(&v4),
            None => self.v6.remove(key),
        };
    }
}

/// The key of `endpoint` on WireGuard interface `ifindex`.
fn endpoint_key(ifindex: u32, endpoint: SocketAddr) -> EndpointKey {
    let address = match endpoint.ip() {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.octets(), |v4| ipv4_mapped(v4.octets())),
    };
    EndpointKey { ifindex, port: u32::from(endpoint.port()), address }
}

impl UnderlayTable {
    pub(super) fn new(
        listen_ports: Array<MapData, u32>,
        endpoints: EndpointMaps,
        learned: LearnedMaps,
    ) -> Self {
        Self {
            listen_ports,
            endpoints,
            ports: HashMap::new(),
            installed: HashMap::new(),
            sessions: learned.sessions,
            fragments: learned.fragments,
        }
    }

    /// Removes what the programs learned about the peer ids in `peers` (gone): one walk of
    /// each map however many peers went.
    pub(super) fn forget_peers(&mut self, peers: &HashSet<u32>) {
        super::remove_where(&mut self.sessions, |_, peer| peers.contains(peer));
        super::remove_where(&mut self.fragments, |_, peer| peers.contains(peer));
    }

    /// Makes the maps say that interface `ifindex` listens on `listen_port` and that its peers
    /// (peer id, endpoint) are where `peers` says.
    pub(super) fn sync(
        &mut self,
        ifindex: u32,
        listen_port: Option<u16>,
        peers: impl IntoIterator<Item = (u32, SocketAddr)>,
    ) -> Result<(), EbpfError> {
        let old_port = self.ports.get(&ifindex).copied();
        if old_port != listen_port {
            if let Some(port) = old_port {
                let _gone = self.listen_ports.set(u32::from(port), 0, 0);
                self.ports.remove(&ifindex);
            }
            if let Some(port) = listen_port {
                self.listen_ports
                    .set(u32::from(port), ifindex, 0)
                    .map_err(EbpfError::map("LISTEN_PORTS", "set"))?;
                self.ports.insert(ifindex, port);
            }
        }
        let wanted: Vec<(EndpointKey, u32)> =
            peers.into_iter().map(|(id, endpoint)| (endpoint_key(ifindex, endpoint), id)).collect();
        let installed = self.installed.entry(ifindex).or_default();
        // Nearly always, nothing moved: then no map is built.
        if wanted.len() == installed.len()
            && wanted.iter().all(|(key, id)| installed.get(key) == Some(id))
        {
            return Ok(());
        }
        let wanted: FastMap<EndpointKey, u32> = wanted.into_iter().collect();
        let stale: Vec<EndpointKey> =
            installed.keys().filter(|key| !wanted.contains_key(key)).copied().collect();
        for key in stale {
            self.endpoints.remove(&key);
            installed.remove(&key);
        }
        for (key, id) in wanted {
            if installed.get(&key) != Some(&id) {
                self.endpoints.insert(key, id)?;
                installed.insert(key, id);
            }
        }
        Ok(())
    }

    /// Removes everything of interface `ifindex`.
    pub(super) fn forget_interface(&mut self, ifindex: u32) {
        if let Some(port) = self.ports.remove(&ifindex) {
            let _gone = self.listen_ports.set(u32::from(port), 0, 0);
        }
        for key in self.installed.remove(&ifindex).unwrap_or_default().into_keys() {
            self.endpoints.remove(&key);
        }
    }
}

impl std::fmt::Debug for UnderlayTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderlayTable")
            .field("ports", &self.ports)
            .field("endpoints", &self.installed.values().map(HashMap::len).sum::<usize>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_keyed_like_the_kernel_reads_them() {
        let v4 = endpoint_key(3, "198.18.1.10:51820".parse().expect("an endpoint"));
        assert_eq!(v4.address, ipv4_mapped([198, 18, 1, 10]));
        assert_eq!((v4.ifindex, v4.port), (3, 51820));
        let mapped = endpoint_key(3, "[::ffff:198.18.1.10]:51820".parse().expect("an endpoint"));
        assert_eq!(mapped, v4);
        let v6 = endpoint_key(3, "[fd00:18::1]:1".parse().expect("an endpoint"));
        assert_eq!(v6.address[0..2], [0xfd, 0]);
    }
}
