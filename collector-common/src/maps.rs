//! Keys, values and sizes of the maps the eBPF programs share with the collector.
//!
//! Every type is `#[repr(C)]` with no implicit padding, so its layout is the same on both
//! sides and the verifier never sees uninitialised bytes in a key.

/// How many peers (over all interfaces) the maps hold; peer ids are `0..MAX_PEERS`.
pub const MAX_PEERS: u32 = 16_384;

/// How many AllowedIPs prefixes (over all interfaces) the tunnel trie holds.
pub const MAX_ALLOWED_IPS: u32 = 65_536;

/// How many WireGuard interfaces can be watched at once.
pub const MAX_INTERFACES: u32 = 256;

/// Bits of [`PeerAddress`] before the address: the interface index and the family.
pub const KEY_PREFIX_BITS: u32 = 64;

/// Prefix length of a lookup key: the interface index, the family and all 128 address bits
/// (an IPv4 key's 96 bits after its address are zero).
pub const FULL_PREFIX_BITS: u32 = KEY_PREFIX_BITS + 128;

/// [`PeerAddress::family`] of an IPv4 address.
pub const FAMILY_IPV4: u32 = 4;

/// [`PeerAddress::family`] of an IPv6 address.
pub const FAMILY_IPV6: u32 = 6;

/// An inner packet's address as the AllowedIPs maps key it: its family, and its bytes (an
/// IPv4 address in the first four, the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InnerAddress {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u32,
    /// The address in network byte order, IPv4 in the first four bytes.
    pub address: [u8; 16],
}

impl InnerAddress {
    /// An IPv4 address.
    #[inline(always)]
    pub const fn ipv4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self { family: FAMILY_IPV4, address: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }
    }

    /// An IPv6 address.
    #[inline(always)]
    pub const fn ipv6(octets: [u8; 16]) -> Self {
        Self { family: FAMILY_IPV6, address: octets }
    }
}

/// Data part of a key of the AllowedIPs trie and of the host-entry hash:
/// `[ifindex][family][address]`.
///
/// One trie serves both families and every interface. The interface index and the family are
/// the key's leading 64 bits and every prefix length is at least 64, so a lookup never crosses
/// interfaces, and an IPv6 prefix (`::/0` included) never covers an IPv4 address: WireGuard
/// keeps a trie per family, and a peer with `::/0` takes no IPv4 traffic. (An IPv4 address
/// stored IPv4-mapped in one 128-bit space would fall under `::/0` and under `::ffff:0:0/96`.)
/// All of the leading 64 bits are always compared, so their byte order does not matter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// Interface index.
    pub ifindex: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u32,
    /// The address in network byte order, IPv4 in the first four bytes, the rest zero.
    pub address: [u8; 16],
}

impl PeerAddress {
    /// The key data for `inner` on interface `ifindex`.
    #[inline(always)]
    pub const fn new(ifindex: u32, inner: InnerAddress) -> Self {
        Self { ifindex, family: inner.family, address: inner.address }
    }

    /// The address as an IPv4 address's four octets, or `None` for IPv6.
    pub fn ipv4(&self) -> Option<[u8; 4]> {
        let [a, b, c, d, ..] = self.address;
        (self.family == FAMILY_IPV4).then_some([a, b, c, d])
    }
}

/// Trie prefix length of an AllowedIPs entry `address/cidr` of either family.
pub const fn prefix_len(cidr: u8) -> u32 {
    KEY_PREFIX_BITS + cidr as u32
}

/// An IPv4 address as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): how the underlay maps
/// (endpoints, fragments) hold IPv4 addresses beside IPv6 ones.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

/// Per-peer traffic seen inside the tunnel, one per CPU per peer id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Packets that came out of the tunnel from this peer (interface ingress).
    pub rx_packets: u64,
    /// Bytes of those packets, inner IP header included.
    pub rx_bytes: u64,
    /// Packets routed into the tunnel to this peer (interface egress).
    pub tx_packets: u64,
    /// Bytes of those packets, inner IP header included.
    pub tx_bytes: u64,
}

impl PeerTraffic {
    /// Field-wise sum, used to fold the per-CPU values.
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
        }
    }
}

/// Per-interface counters of traffic that no peer could be tied to, one per CPU per ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTraffic {
    /// Packets routed into the tunnel whose destination no peer's AllowedIPs accept.
    pub no_peer_packets: u64,
    /// Bytes of those packets.
    pub no_peer_bytes: u64,
    /// Packets out of the tunnel whose source no peer's AllowedIPs accept (WireGuard drops
    /// these before they reach the interface, so this stays zero unless something else
    /// injects packets into it).
    pub unknown_source_packets: u64,
    /// Packets on the interface that are neither IPv4 nor IPv6.
    pub not_ip_packets: u64,
    /// Datagrams to this interface's listen port from no known peer endpoint or session.
    pub underlay_unknown_source: u64,
}

impl InterfaceTraffic {
    /// Field-wise sum, used to fold the per-CPU values.
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            no_peer_packets: self.no_peer_packets.wrapping_add(other.no_peer_packets),
            no_peer_bytes: self.no_peer_bytes.wrapping_add(other.no_peer_bytes),
            unknown_source_packets: self
                .unknown_source_packets
                .wrapping_add(other.unknown_source_packets),
            not_ip_packets: self.not_ip_packets.wrapping_add(other.not_ip_packets),
            underlay_unknown_source: self
                .underlay_unknown_source
                .wrapping_add(other.underlay_unknown_source),
        }
    }
}

/// How many remote endpoints (over all interfaces) each underlay endpoint map (IPv4, IPv6)
/// holds.
pub const MAX_ENDPOINTS: u32 = MAX_PEERS;

/// Slots of the listen-port map: one per UDP port number.
pub const UDP_PORTS: u32 = 1 << 16;

/// How many session indices the underlay programs remember (LRU: the oldest go first).
pub const MAX_SESSIONS: u32 = 4 * MAX_PEERS;

/// How many fragmented datagrams in flight the underlay programs track (LRU).
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8192;

/// A peer's current underlay address and port, as WireGuard reports it, on the WireGuard
/// interface whose listen port the datagram uses: the key of the IPv6 endpoint map, and of
/// the IPv4 one in its [`Ipv4EndpointKey`] form.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Index of the WireGuard interface.
    pub ifindex: u32,
    /// Remote UDP port (host byte order; u32 so the key has no padding).
    pub port: u32,
    /// Remote address, IPv4-mapped for IPv4, in network byte order.
    pub address: [u8; 16],
}

impl EndpointKey {
    /// The key of the IPv4 endpoint map, when the address is IPv4-mapped.
    pub fn to_ipv4(&self) -> Option<Ipv4EndpointKey> {
        let (prefix, octets) = self.address.split_at(12);
        (prefix == &ipv4_mapped([0; 4])[..12]).then(|| Ipv4EndpointKey {
            ifindex: self.ifindex,
            port: self.port,
            address: [octets[0], octets[1], octets[2], octets[3]],
        })
    }
}

/// Key of the IPv4 endpoint map: an [`EndpointKey`] whose address is IPv4, in 12 bytes
/// instead of 24. The kernel hashes a hash map's key with `jhash2`, one mixing round per
/// three 32-bit words beyond the last three: this key needs no mixing round, the 24-byte one
/// needs one, and the lookup is on the underlay's per-packet path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4EndpointKey {
    /// Index of the WireGuard interface.
    pub ifindex: u32,
    /// Remote UDP port (host byte order).
    pub port: u32,
    /// Remote IPv4 address, in network byte order.
    pub address: [u8; 4],
}

/// Key of the session map: a session index this host chose, on a WireGuard interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Index of the WireGuard interface.
    pub ifindex: u32,
    /// The index, as it appears on the wire (little endian), read as a u32.
    pub index: u32,
}

/// Key of the fragment map: one fragmented datagram in one direction, as RFC 791 and
/// RFC 8200 identify it, so that later fragments (which carry no UDP header) find the peer
/// of the first one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Fragment identification.
    pub id: u32,
    /// `Direction` as u32.
    pub direction: u32,
    /// Source address, IPv4-mapped for IPv4.
    pub source: [u8; 16],
    /// Destination address, IPv4-mapped for IPv4.
    pub destination: [u8; 16],
}

/// Everything the programs count of one peer, one per CPU per peer id: the tunnel programs
/// write `traffic`, the underlay programs `underlay`. One value, so that the collector reads
/// every peer in one walk of one map (each element of a batch lookup costs a per-CPU copy and
/// a copy to user space, whatever its size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Seen inside the tunnel.
    pub traffic: PeerTraffic,
    /// Seen on the underlay.
    pub underlay: PeerUnderlay,
}

impl PeerCounters {
    /// Field-wise sum, used to fold the per-CPU values.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        Self {
            traffic: self.traffic.add(other.traffic),
            underlay: self.underlay.merge(other.underlay),
        }
    }
}

/// Per-peer underlay counters, one per CPU per peer id. Arrays are indexed by `Direction`
/// (receive, transmit) and then by `underlay::MessageType`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerUnderlay {
    /// WireGuard messages by direction and type.
    pub messages: [[u64; 6]; 2],
    /// Outer IP fragments by direction (first and later fragments alike).
    pub fragments: [u64; 2],
    /// ICMP fragmentation-needed / ICMPv6 packet-too-big about this peer's datagrams, by
    /// direction (received by this host, sent by it).
    pub too_big: [u64; 2],
    /// `bpf_ktime_get_ns` of the latest too-big message on this CPU; 0 when none.
    pub too_big_at: u64,
    /// The MTU that message reported.
    pub too_big_mtu: u64,
    /// ICMP destination unreachable (port, host, network, prohibited) about this peer's
    /// datagrams, by direction (received by this host, sent by it).
    pub unreachable: [u64; 2],
}

impl PeerUnderlay {
    /// Sum of the per-CPU values; the latest too-big report wins.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        let mut sum = self;
        for (direction, other) in sum.messages.iter_mut().zip(other.messages) {
            for (count, other) in direction.iter_mut().zip(other) {
                *count = count.wrapping_add(other);
            }
        }
        for index in 0..2 {
            sum.fragments[index] = sum.fragments[index].wrapping_add(other.fragments[index]);
            sum.too_big[index] = sum.too_big[index].wrapping_add(other.too_big[index]);
            sum.unreachable[index] = sum.unreachable[index].wrapping_add(other.unreachable[index]);
        }
        if other.too_big_at > sum.too_big_at {
            sum.too_big_at = other.too_big_at;
            sum.too_big_mtu = other.too_big_mtu;
        }
        sum
    }
}

/// How many destinations routed into a tunnel that no peer accepts the kernel counts (LRU: the
/// least recently seen go first).
pub const MAX_NO_PEER_DESTINATIONS: u32 = 1024;

/// How many sources of handshake initiations the kernel counts (LRU: the least recently seen
/// go first).
pub const MAX_INITIATION_SOURCES: u32 = 4096;

/// How many round trips (TCP SYNs, echo requests, handshakes) wait for their answer at once
/// (LRU: the oldest go first).
pub const MAX_PENDING: u32 = 16_384;

/// How many latency histogram buckets with samples the kernel keeps (a peer uses a handful
/// per kind).
pub const MAX_LATENCY_BUCKETS: u32 = 65_536;

/// How many (interface, peer, reason) drop counters the kernel keeps.
pub const MAX_DROP_COUNTERS: u32 = 16_384;

/// The `peer` of a [`DropKey`] for a drop tied to no peer.
pub const NO_PEER_ID: u32 = u32::MAX;

/// The `reason` of a [`DropKey`] on a kernel whose `skb:kfree_skb` tracepoint passes no
/// reason (before 5.17): a value no `enum skb_drop_reason` has.
pub const REASON_UNKNOWN: u32 = u32::MAX;

/// Value of the watched-interface map: a WireGuard interface (layer 3, inner packets).
pub const WATCHED_WIREGUARD: u32 = 1;

/// Key of the kernel drop counters: where `skb:kfree_skb` freed a packet and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    /// Index of the device the packet was on.
    pub ifindex: u32,
    /// Peer id the packet's addresses tie it to; [`NO_PEER_ID`] when none.
    pub peer: u32,
    /// `enum skb_drop_reason` value, its name from the kernel's BTF; [`REASON_UNKNOWN`] on a
    /// kernel without drop reasons.
    pub reason: u32,
}

/// The maps the programs insert into, each of which can be full: the index of its counter in
/// the map-error array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapId {
    /// Session indices this host chose (`SESSIONS`).
    Sessions = 0,
    /// Fragmented datagrams in flight (`FRAGMENTS`).
    Fragments = 1,
    /// Handshakes waiting for their response (`PENDING_HANDSHAKES`).
    PendingHandshakes = 2,
    /// Inner round trips waiting for their answer (`PENDING_PROBES`).
    PendingProbes = 3,
    /// Latency histogram buckets (`LATENCY`).
    Latency = 4,
    /// Kernel drop counters (`DROPS`).
    Drops = 5,
}

/// How many [`MapId`]s there are.
pub const MAP_IDS: u32 = 6;

impl MapId {
    /// Every map, in index order.
    pub const ALL: [Self; MAP_IDS as usize] = [
        Self::Sessions,
        Self::Fragments,
        Self::PendingHandshakes,
        Self::PendingProbes,
        Self::Latency,
        Self::Drops,
    ];

    /// The map's name, as the programs declare it: the `map` label of
    /// `wgtel_ebpf_map_errors_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sessions => "SESSIONS",
            Self::Fragments => "FRAGMENTS",
            Self::PendingHandshakes => "PENDING_HANDSHAKES",
            Self::PendingProbes => "PENDING_PROBES",
            Self::Latency => "LATENCY",
            Self::Drops => "DROPS",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, three u32, no padding.
    unsafe impl aya::Pod for super::DropKey {}
    // SAFETY: `#[repr(C)]`, u32 fields and two 16-byte arrays, no padding.
    unsafe impl aya::Pod for crate::latency::PendingProbe {}
    // SAFETY: `#[repr(C)]`, a u64 then two u32, no padding.
    unsafe impl aya::Pod for crate::latency::PendingStart {}
    // SAFETY: `#[repr(C)]`, three u32, no padding.
    unsafe impl aya::Pod for crate::latency::LatencyKey {}
    // SAFETY: `#[repr(C)]`, u32 + u32 + 16 bytes, no padding.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: `#[repr(C)]`, u32 + u32 + 4 bytes, no padding.
    unsafe impl aya::Pod for super::Ipv4EndpointKey {}
    // SAFETY: `#[repr(C)]`, two u32, no padding.
    unsafe impl aya::Pod for super::SessionKey {}
    // SAFETY: `#[repr(C)]`, two u32 and 32 bytes, no padding.
    unsafe impl aya::Pod for super::FragmentKey {}
    // SAFETY: `#[repr(C)]`, u64 arrays and u64s only, no padding.
    unsafe impl aya::Pod for super::PeerCounters {}
    // SAFETY: `#[repr(C)]`, plain integers, no padding (two u32 + 16 bytes).
    unsafe impl aya::Pod for super::PeerAddress {}
    // SAFETY: `#[repr(C)]`, four u64, no padding.
    // SAFETY: `#[repr(C)]`, five u64, no padding.
    unsafe impl aya::Pod for super::InterfaceTraffic {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<PeerAddress>(), 24);
        assert_eq!(size_of::<InnerAddress>(), 20);
        assert_eq!(size_of::<PeerTraffic>(), 32);
        assert_eq!(size_of::<InterfaceTraffic>(), 40);
        assert_eq!(size_of::<EndpointKey>(), 24);
        assert_eq!(size_of::<Ipv4EndpointKey>(), 12);
        assert_eq!(size_of::<SessionKey>(), 8);
        assert_eq!(size_of::<DropKey>(), 12);
        assert_eq!(size_of::<FragmentKey>(), 40);
        assert_eq!(size_of::<PeerUnderlay>(), 8 * (12 + 2 + 2 + 2 + 2));
    }

    #[test]
    fn underlay_sums_add_counts_and_keep_the_latest_mtu() {
        let mut a = PeerUnderlay::default();
        a.messages[1][0] = 2;
        a.fragments = [1, 2];
        a.too_big_at = 10;
        a.too_big_mtu = 1400;
        let mut b = PeerUnderlay::default();
        b.messages[1][0] = 3;
        b.too_big = [0, 1];
        b.too_big_at = 20;
        b.too_big_mtu = 1280;
        a.unreachable = [3, 0];
        b.unreachable = [1, 2];
        let sum = a.merge(b);
        assert_eq!(sum.unreachable, [4, 2]);
        assert_eq!(sum.messages[1][0], 5);
        assert_eq!(sum.fragments, [1, 2]);
        assert_eq!(sum.too_big, [0, 1]);
        assert_eq!(sum.too_big_mtu, 1280);
        assert_eq!(b.merge(a).too_big_mtu, 1280);
    }

    #[test]
    fn ipv4_endpoints_have_the_short_key_and_ipv6_ones_none() {
        let v4 = EndpointKey { ifindex: 3, port: 51820, address: ipv4_mapped([198, 18, 1, 10]) };
        assert_eq!(
            v4.to_ipv4(),
            Some(Ipv4EndpointKey { ifindex: 3, port: 51820, address: [198, 18, 1, 10] })
        );
        let mut v6 = v4;
        v6.address[0] = 0xfd;
        assert_eq!(v6.to_ipv4(), None);
    }

    #[test]
    fn prefix_lengths_cover_interface_family_and_address() {
        assert_eq!(prefix_len(128), FULL_PREFIX_BITS);
        assert_eq!(prefix_len(32), 96);
        assert_eq!(prefix_len(0), 64);
    }

    #[test]
    fn families_never_share_a_key() {
        let v4 = PeerAddress::new(3, InnerAddress::ipv4([198, 19, 1, 2]));
        assert_eq!(v4.family, 4);
        assert_eq!(v4.address, [198, 19, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The IPv6 address with the same bytes (and the IPv4-mapped one) are other keys.
        let v6 = PeerAddress::new(3, InnerAddress::ipv6(v4.address));
        assert_ne!(v4, v6);
        let mapped = PeerAddress::new(3, InnerAddress::ipv6(ipv4_mapped([198, 19, 1, 2])));
        assert_ne!(v4, mapped);
    }
}
