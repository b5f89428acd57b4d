//! Packet parsing the eBPF programs do on every packet, written once for both sides.
//!
//! The kernel side reads the skb (directly from its linear area, else through
//! `bpf_skb_load_bytes`), the host tests a byte slice; both implement [`Packet`]. On the
//! kernel side every read is a bounds check with a helper call behind it (for bytes beyond the
//! linear area), so the parsing reads each header in as few reads as it can.

use crate::maps::ipv4_mapped;

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
/// of a packet going into the tunnel, the source of one coming out, as an IPv6 or
/// IPv4-mapped IPv6 address. `None` for a packet that is not IPv4 or IPv6.
///
/// A WireGuard interface is layer 3: the IP header starts at offset 0 in both directions
/// (no Ethernet header), and the version nibble tells the family.
#[inline(always)]
pub fn tunnel_peer_address<P: Packet + ?Sized>(
    packet: &P,
    direction: Direction,
) -> Option<[u8; 16]> {
    let [first] = packet.read::<1>(0)?;
    match (first >> 4, direction) {
        (4, Direction::Receive) => packet.read::<4>(IPV4_SOURCE).map(ipv4_mapped),
        (4, Direction::Transmit) => packet.read::<4>(IPV4_DESTINATION).map(ipv4_mapped),
        (6, Direction::Receive) => packet.read::<16>(IPV6_SOURCE),
        (6, Direction::Transmit) => packet.read::<16>(IPV6_DESTINATION),
        _ => None,
    }
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
            Some(ipv4_mapped([198, 19, 1, 2]))
        );
        assert_eq!(
            tunnel_peer_address(packet, Direction::Transmit),
            Some(ipv4_mapped([198, 19, 1, 1]))
        );
    }

    #[test]
    fn ipv6_receive_uses_source_transmit_uses_destination() {
        let source = [0xfd, 0, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let destination = [0xfd, 0, 0, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let header = ipv6_header(source, destination);
        let packet: &[u8] = &header;
        assert_eq!(tunnel_peer_address(packet, Direction::Receive), Some(source));
        assert_eq!(tunnel_peer_address(packet, Direction::Transmit), Some(destination));
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
        assert_eq!(tunnel_peer_address(short_v6, Direction::Receive), Some([1; 16]));
    }
}
