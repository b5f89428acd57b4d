//! Packet parsing the eBPF programs do on every packet, written once for both sides.
//!
//! The kernel side reads the skb (directly from its linear area, else through
//! `bpf_skb_load_bytes`), the host tests a byte slice; both implement [`Packet`]. On the
//! kernel side every read is a bounds check with a helper call behind it (for bytes beyond the
//! linear area), so the parsing reads each header in as few reads as it can.

use crate::maps::InnerAddress;

/// Bounds-checked reads from a packet, starting at its network header.
pub trait Packet {
    /// The `N` bytes at `offset`, or `None` when the packet is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// Which way a packet crosses a WireGuard interface, seen from this host.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Out of the tunnel: decrypted, from a peer (interface ingress).
    Receive = 0,
    /// Into the tunnel: to be encrypted for a peer (interface egress).
    Transmit = 1,
}

/// Offsets of the source and destination addresses in an IPv4 header.
const IPV4_SOURCE: usize = 12;
const IPV4_DESTINATION: usize = 16;
/// Offsets of the source and destination addresses in an IPv6 header.
const IPV6_SOURCE: usize = 8;
const IPV6_DESTINATION: usize = 24;

/// The inner address that ties a packet on a WireGuard interface to a peer: the destination
/// of a packet going into the tunnel, the source of one coming out, with its family. `None`
/// for a packet that is not IPv4 or IPv6.
///
/// A WireGuard interface is layer 3: the IP header starts at offset 0 in both directions
/// (no Ethernet header), and the version nibble tells the family.
#[inline(always)]
pub fn tunnel_peer_address<P: Packet + ?Sized>(
    packet: &P,
    direction: Direction,
) -> Option<InnerAddress> {
    let [first] = packet.read::<1>(0)?;
    match (first >> 4, direction) {
        (4, Direction::Receive) => packet.read::<4>(IPV4_SOURCE).map(InnerAddress::ipv4),
        (4, Direction::Transmit) => packet.read::<4>(IPV4_DESTINATION).map(InnerAddress::ipv4),
        (6, Direction::Receive) => packet.read::<16>(IPV6_SOURCE).map(InnerAddress::ipv6),
        (6, Direction::Transmit) => packet.read::<16>(IPV6_DESTINATION).map(InnerAddress::ipv6),
        _ => None,
    }
}

/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

/// Length of the headers every segment of a GSO packet on a WireGuard interface repeats: the
/// IP header (IPv4 with its options; IPv6's fixed 40 bytes, the only kind a TUN device or the
/// stack segments) and the TCP header (with options) or UDP header. `None` for a packet that is
/// neither TCP nor UDP, or too short.
#[inline(always)]
pub fn segment_headers_length<P: Packet + ?Sized>(packet: &P) -> Option<usize> {
    let [first] = packet.read::<1>(0)?;
    let (ip_length, protocol) = match first >> 4 {
        4 => (usize::from(first & 0x0f) * 4, packet.read::<1>(9)?[0]),
        6 => (40, packet.read::<1>(6)?[0]),
        _ => return None,
    };
    match protocol {
        // Data offset: the high nibble of byte 12, in 32-bit words.
        IPPROTO_TCP => Some(ip_length + usize::from(packet.read::<1>(ip_length + 12)?[0] >> 4) * 4),
        IPPROTO_UDP => Some(ip_length + 8),
        _ => None,
    }
}

/// How many packets a GSO packet of `length` bytes stands for, and their bytes on the wire.
///
/// `gso_size` is the payload of each segment behind `headers` bytes of headers that every
/// segment repeats; the last segment may be shorter. `gso_segs` is the kernel's count, which
/// the stack sets when it builds the packet (TCP's TSO, UDP's `UDP_SEGMENT`, GRO) but which a
/// packet written into a TUN device with a virtio-net header still has at 0 (`tun_get_user`
/// leaves the count to the segmentation, `SKB_GSO_DODGY`): then it is the payload divided by
/// `gso_size`, rounded up. A packet that is not GSO (`gso_size` 0) is one packet.
#[inline(always)]
pub const fn gso_segments(length: u32, headers: u32, gso_size: u32, gso_segs: u32) -> (u32, u64) {
    if gso_size == 0 || length <= headers {
        return (1, length as u64);
    }
    let payload = length - headers;
    let segments = if gso_segs != 0 { gso_segs } else { payload.div_ceil(gso_size) };
    (segments, length as u64 + (segments as u64 - 1) * headers as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ICMP_ECHO_V4: [u8; 28] = [
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, // version/ihl .. checksum
        198, 19, 1, 2, // source
        198, 19, 1, 1, // destination
        8, 0, 0, 0, 0, 1, 0, 1, // ICMP echo request
    ];

    fn ipv6_header(source: [u8; 16], destination: [u8; 16]) -> [u8; 40] {
        let mut header = [0u8; 40];
        header[0] = 0x60;
        header[6] = 58;
        header[7] = 64;
        header[8..24].copy_from_slice(&source);
        header[24..40].copy_from_slice(&destination);
        header
    }

    #[test]
    fn ipv4_receive_uses_source_transmit_uses_destination() {
        let packet: &[u8] = &ICMP_ECHO_V4;
        assert_eq!(
            tunnel_peer_address(packet, Direction::Receive),
            Some(InnerAddress::ipv4([198, 19, 1, 2]))
        );
        assert_eq!(
            tunnel_peer_address(packet, Direction::Transmit),
            Some(InnerAddress::ipv4([198, 19, 1, 1]))
        );
    }

    #[test]
    fn ipv6_receive_uses_source_transmit_uses_destination() {
        let source = [0xfd, 0, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let destination = [0xfd, 0, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let header = ipv6_header(source, destination);
        let packet: &[u8] = &header;
        assert_eq!(
            tunnel_peer_address(packet, Direction::Receive),
            Some(InnerAddress::ipv6(source))
        );
        assert_eq!(
            tunnel_peer_address(packet, Direction::Transmit),
            Some(InnerAddress::ipv6(destination))
        );
    }

    #[test]
    fn truncated_and_non_ip_packets_have_no_address() {
        let truncated: &[u8] = &ICMP_ECHO_V4[..15];
        assert_eq!(tunnel_peer_address(truncated, Direction::Receive), None);
        assert_eq!(tunnel_peer_address(truncated, Direction::Transmit), None);
        let empty: &[u8] = &[];
        assert_eq!(tunnel_peer_address(empty, Direction::Receive), None);
        let mut arp_like = ICMP_ECHO_V4;
        arp_like[0] = 0x00;
        let packet: &[u8] = &arp_like;
        assert_eq!(tunnel_peer_address(packet, Direction::Transmit), None);
        let short_v6: &[u8] = &ipv6_header([1; 16], [2; 16])[..39];
        assert_eq!(tunnel_peer_address(short_v6, Direction::Transmit), None);
        assert_eq!(
            tunnel_peer_address(short_v6, Direction::Receive),
            Some(InnerAddress::ipv6([1; 16]))
        );
    }

    #[test]
    fn segment_headers_of_tcp_and_udp() {
        // IPv4 without options, TCP with 12 bytes of options (data offset 8 words).
        let mut tcp = [0u8; 40];
        tcp[0] = 0x45;
        tcp[9] = IPPROTO_TCP;
        tcp[32] = 8 << 4;
        assert_eq!(segment_headers_length(&tcp[..]), Some(52));
        let mut udp = ipv6_header([1; 16], [2; 16]);
        udp[6] = IPPROTO_UDP;
        assert_eq!(segment_headers_length(&udp[..]), Some(48));
        assert_eq!(segment_headers_length(&ICMP_ECHO_V4[..]), None);
        assert_eq!(segment_headers_length(&tcp[..30]), None);
    }

    #[test]
    fn gso_packets_count_their_segments() {
        // Not GSO: one packet of its own length.
        assert_eq!(gso_segments(1420, 52, 0, 0), (1, 1420));
        // Counted by the stack: 3 segments, headers repeated twice more on the wire.
        assert_eq!(gso_segments(52 + 3000, 52, 1368, 3), (3, 3052 + 2 * 52));
        // From a TUN device (gso_segs 0): 10,000 payload bytes in 1,368-byte segments are 8.
        assert_eq!(gso_segments(52 + 10_000, 52, 1368, 0), (8, 10_052 + 7 * 52));
        // Exactly divisible: no short last segment.
        assert_eq!(gso_segments(52 + 2 * 1368, 52, 1368, 0), (2, 52 + 2 * 1368 + 52));
        // A header-only packet claiming GSO is one packet.
        assert_eq!(gso_segments(52, 52, 1368, 0), (1, 52));
    }
}
