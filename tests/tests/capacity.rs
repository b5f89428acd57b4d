//! The eBPF maps are sized at load time for what the host holds: a gateway with 100,000 peers
//! gets an id and its AllowedIPs in the kernel for every one of them, where the built-in sizes
//! hold 16,384.

use std::net::{IpAddr, Ipv4Addr};

use wgtel::{
    ebpf::{AttachMode, MapCapacity, Probes},
    wg::{AllowedIp, PeerState, PublicKey},
};

/// An interface index no interface has: the peers are only put in the maps, nothing is
/// attached.
const IFINDEX: u32 = 0x7fff_0001;

/// Peer `n`: key `n`, AllowedIPs one distinct /32 counted up from 198.19.0.0 (only written into
/// the maps; no packet goes anywhere).
fn peer(n: u32) -> PeerState {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_le_bytes());
    key[31] = 0x40;
    PeerState {
        public_key: PublicKey(key),
        endpoint: None,
        allowed_ips: vec![AllowedIp {
            address: IpAddr::V4(Ipv4Addr::from(0xc613_0000 + n)),
            cidr: 32,
        }],
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        persistent_keepalive: None,
    }
}

#[test]
fn a_hundred_thousand_peers_fit_maps_sized_for_them() {
    let capacity = MapCapacity::for_host(100_000, 100_000);
    assert_eq!(capacity, MapCapacity { peers: 150_000, allowed_ips: 150_000 });
    assert_eq!(MapCapacity::default(), MapCapacity { peers: 16_384, allowed_ips: 65_536 });

    let mut probes = Probes::load(AttachMode::Auto, capacity, false).unwrap();
    let peers: Vec<PeerState> = (0..100_000).map(peer).collect();
    let sync = probes.sync_peers(IFINDEX, &peers).unwrap();
    assert_eq!(sync.ids.iter().filter(|id| id.is_some()).count(), 100_000);
    assert!(sync.refused.is_none(), "{:?}", sync.refused);
    assert_eq!(probes.allowed_ip_entries(IFINDEX), 100_000);
    // Every peer's counters can be read (batch lookups of 1024 slots), the last one's too.
    let last = sync.ids[99_999].unwrap();
    probes.read_peers().unwrap();
    assert_eq!(probes.peer_counters(last).traffic.tx_packets, 0);
    probes.release(IFINDEX, true).unwrap();
    assert_eq!(probes.allowed_ip_entries(IFINDEX), 0);
}

#[test]
fn the_built_in_sizes_give_ids_to_16384_peers_and_say_so_for_the_rest() {
    let mut probes = Probes::load(AttachMode::Auto, MapCapacity::default(), false).unwrap();
    let peers: Vec<PeerState> = (0..16_400).map(peer).collect();
    let sync = probes.sync_peers(IFINDEX, &peers).unwrap();
    assert_eq!(sync.ids.iter().filter(|id| id.is_some()).count(), 16_384);
    assert_eq!(sync.ids.iter().filter(|id| id.is_none()).count(), 16);
    probes.release(IFINDEX, true).unwrap();
}
