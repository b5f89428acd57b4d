//! AllowedIPs against endpoints, and forwarding: `allowed_ips_cover_endpoint`,
//! `forwarding_disabled`.

use std::net::IpAddr;

use foldhash::HashMap as FastMap;

use super::{Finding, PeerSample, Window, peer_label, seconds};
use crate::model::{Code, InterfaceSnapshot, PeerSnapshot};

/// Every AllowedIPs prefix of one interface, for finding the first one (in the order of the
/// peers, then of each peer's list) that holds an address: one hash lookup per distinct prefix
/// length instead of a walk over every peer, so the check of all peers costs O(peers), not
/// O(peers²) (at 10,000 peers the walk was most of a collection's CPU).
#[derive(Debug, Default)]
pub(super) struct AllowedIpsIndex {
    /// (IPv4?, prefix length, masked network) -> the first (peer, entry) index that has it.
    first: FastMap<(bool, u8, u128), (usize, usize)>,
    /// The distinct (IPv4?, prefix length) pairs, each tried once per lookup.
    lengths: Vec<(bool, u8)>,
}

impl AllowedIpsIndex {
    /// The index of `interface`'s AllowedIPs; empty for an interface with a fwmark (never
    /// asked: see [`allowed_ips_cover_endpoint`]).
    pub(super) fn new(interface: &InterfaceSnapshot) -> Self {
        let mut index = Self::default();
        if interface.fwmark.is_some() {
            return index;
        }
        index.first.reserve(interface.peers.iter().map(|peer| peer.allowed_ips.len()).sum());
        for (peer_index, peer) in interface.peers.iter().enumerate() {
            for (entry, allowed) in peer.allowed_ips.iter().enumerate() {
                let (v4, bits) = network_bits(allowed.address);
                let cidr = allowed.cidr.min(if v4 { 32 } else { 128 });
                index.first.entry((v4, cidr, mask(bits, cidr))).or_insert((peer_index, entry));
                if !index.lengths.contains(&(v4, cidr)) {
                    index.lengths.push((v4, cidr));
                }
            }
        }
        index
    }

    /// The first (peer, entry) whose prefix holds `address`.
    fn find(&self, address: IpAddr) -> Option<(usize, usize)> {
        let (v4, bits) = network_bits(address);
        self.lengths
            .iter()
            .filter(|(family, _)| *family == v4)
            .filter_map(|&(_, cidr)| self.first.get(&(v4, cidr, mask(bits, cidr))).copied())
            .min()
    }
}

/// Whether `address` is IPv4, and its bits left-aligned in a u128 (as
/// [`crate::wg::AllowedIp::contains`] compares them).
fn network_bits(address: IpAddr) -> (bool, u128) {
    match address {
        IpAddr::V4(v4) => (true, u128::from(v4.to_bits()) << 96),
        IpAddr::V6(v6) => (false, v6.to_bits()),
    }
}

/// `bits` with all but the first `cidr` cleared.
fn mask(bits: u128, cidr: u8) -> u128 {
    if cidr == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(cidr))) }
}

/// `allowed_ips_cover_endpoint`: the peer's endpoint lies inside the AllowedIPs of a peer of
/// the same interface (its own or another's), and the interface sets no fwmark.
///
/// Signals: the endpoints and AllowedIPs WireGuard reports, the interface's fwmark. Routes
/// that follow AllowedIPs (wg-quick's) send WireGuard's own datagrams to that endpoint into
/// the tunnel: a loop. wg-quick's full-tunnel setup avoids it with a fwmark and policy
/// routing, so a marked interface is left alone. `index` is [`AllowedIpsIndex::new`] of
/// `interface`.
pub(super) fn allowed_ips_cover_endpoint(
    interface: &InterfaceSnapshot,
    index: &AllowedIpsIndex,
    peer: &PeerSnapshot,
) -> Option<Finding> {
    let endpoint = peer.endpoint?;
    if interface.fwmark.is_some() {
        return None;
    }
    let (owner, entry) = index.find(endpoint.ip())?;
    let owner = interface.peers.get(owner)?;
    let allowed = owner.allowed_ips.get(entry)?;
    let whose = if owner.public_key == peer.public_key {
        "its own AllowedIPs".to_owned()
    } else {
        format!("the AllowedIPs of {}", peer_label(owner))
    };
    let evidence = format!(
        "endpoint {} lies inside {whose} ({allowed}) on {} without a fwmark: routes that follow \
         AllowedIPs send WireGuard's own datagrams to it into the tunnel",
        endpoint.ip(),
        interface.name
    );
    let counters = [("allowed_ips_prefix_length", u64::from(allowed.cidr))];
    Some(Finding::new(Code::AllowedIpsCoverEndpoint, evidence, &counters))
}

/// The kernel's drop reason for a packet to an address this host neither owns nor forwards
/// to (`ip_error` and `ip6_forward` when forwarding is off).
pub(super) const IP_INADDRERRORS: &str = "IP_INADDRERRORS";

/// `forwarding_disabled`: packets from the peer to addresses that are not this host's are
/// dropped because the host does not forward.
///
/// Signals: the peer's kernel drops with reason `IP_INADDRERRORS` (tied to the peer by the
/// inner source of what came out of its tunnel) grown over the window, while forwarding is
/// off for the interface (`net.ipv4.conf.IFACE.forwarding`) or for IPv6
/// (`net.ipv6.conf.all.forwarding`). A hub between peers, or a gateway into a LAN, needs
/// forwarding on.
pub(super) fn forwarding_disabled(
    interface: &InterfaceSnapshot,
    window: &Window<'_, PeerSample>,
) -> Option<Finding> {
    let dropped = window.growth(|s| s.address_error_drops);
    if dropped == 0 {
        return None;
    }
    let off: Vec<String> = [
        (interface.ipv4_forwarding, format!("net.ipv4.conf.{}.forwarding", interface.name)),
        (interface.ipv6_forwarding, "net.ipv6.conf.all.forwarding".to_owned()),
    ]
    .into_iter()
    .filter(|(on, _)| *on == Some(false))
    .map(|(_, name)| format!("{name} = 0"))
    .collect();
    if off.is_empty() {
        return None;
    }
    let evidence = format!(
        "{dropped} packets from the peer to addresses not on this host dropped in the last {} (kernel drop reason {IP_INADDRERRORS}) while {}: this host does not forward",
        seconds(window.seconds),
        off.join(" and ")
    );
    let counters = [("drops.IP_INADDRERRORS", dropped)];
    Some(Finding::new(Code::ForwardingDisabled, evidence, &counters))
}

#[cfg(test)]
mod tests {
    use super::{AllowedIpsIndex, allowed_ips_cover_endpoint};
    use crate::{
        export::prometheus::tests::snapshot,
        model::{Code, InterfaceSnapshot},
        wg::AllowedIp,
    };

    #[test]
    fn the_first_prefix_in_peer_order_that_holds_an_endpoint_is_named() {
        let mut interface = snapshot().interfaces.remove(0);
        interface.peers[0].allowed_ips = vec![allowed("10.0.0.0/8"), allowed("198.18.7.77/16")];
        interface.peers[1].allowed_ips = vec![allowed("198.18.5.0/24"), allowed("fd00::/8")];
        interface.peers[0].endpoint = Some("[fd00::1]:51820".parse().expect("an endpoint"));
        interface.peers[1].endpoint = Some("198.18.5.9:51820".parse().expect("an endpoint"));
        let index = AllowedIpsIndex::new(&interface);
        let finding = |interface: &InterfaceSnapshot, peer: usize| {
            allowed_ips_cover_endpoint(interface, &index, &interface.peers[peer])
                .map(|finding| (finding.code, finding.evidence, finding.counters))
        };
        // Peer 0's /16 comes before peer 1's own /24: the walk in peer order named it too.
        let (code, evidence, counters) = finding(&interface, 1).expect("covered");
        assert_eq!(code, Code::AllowedIpsCoverEndpoint);
        assert_eq!(
            evidence,
            "endpoint 198.18.5.9 lies inside the AllowedIPs of al\"ice\\ (198.18.7.77/16) on wg0 \
             without a fwmark: routes that follow AllowedIPs send WireGuard's own datagrams to it \
             into the tunnel"
        );
        assert_eq!(counters.get("allowed_ips_prefix_length"), Some(&16.0));
        let (_, evidence, _) = finding(&interface, 0).expect("covered");
        assert_eq!(
            evidence,
            "endpoint fd00::1 lies inside the AllowedIPs of AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI= (fd00::/8) on \
             wg0 without a fwmark: routes that follow AllowedIPs send WireGuard's own datagrams \
             to it into the tunnel"
        );
        // Outside every prefix, or on a marked interface: nothing.
        interface.peers[1].endpoint = Some("203.0.113.9:51820".parse().expect("an endpoint"));
        assert_eq!(finding(&interface, 1), None);
        interface.fwmark = Some(51820);
        assert_eq!(finding(&interface, 0), None);
    }

    fn allowed(text: &str) -> AllowedIp {
        let (address, cidr) = text.split_once('/').expect("address/cidr");
        AllowedIp {
            address: address.parse().expect("an address"),
            cidr: cidr.parse().expect("a cidr"),
        }
    }

    #[test]
    fn prefixes_cover_their_addresses_within_their_family_only() {
        let v4 = |s: &str| s.parse::<std::net::IpAddr>().expect("an address");
        assert!(allowed("198.18.1.0/24").contains(v4("198.18.1.11")));
        assert!(!allowed("198.18.1.0/24").contains(v4("198.18.2.11")));
        assert!(allowed("0.0.0.0/0").contains(v4("203.0.113.9")));
        assert!(!allowed("::/0").contains(v4("203.0.113.9")));
        assert!(allowed("fd00::/8").contains(v4("fd12::1")));
        assert!(allowed("198.18.1.11/32").contains(v4("198.18.1.11")));
        assert!(!allowed("198.18.1.11/32").contains(v4("198.18.1.12")));
    }
}
