//! AllowedIPs against endpoints, and forwarding: `allowed_ips_cover_endpoint`,
//! `forwarding_disabled`.

use super::{Finding, PeerSample, Window, peer_label, seconds};
use crate::model::{Code, InterfaceSnapshot, PeerSnapshot};

/// `allowed_ips_cover_endpoint`: the peer's endpoint lies inside the AllowedIPs of a peer of
/// the same interface (its own or another's), and the interface sets no fwmark.
///
/// Signals: the endpoints and AllowedIPs WireGuard reports, the interface's fwmark. Routes
/// that follow AllowedIPs (wg-quick's) send WireGuard's own datagrams to that endpoint into
/// the tunnel: a loop. wg-quick's full-tunnel setup avoids it with a fwmark and policy
/// routing, so a marked interface is left alone.
pub(super) fn allowed_ips_cover_endpoint(
    interface: &InterfaceSnapshot,
    peer: &PeerSnapshot,
) -> Option<Finding> {
    let endpoint = peer.endpoint?;
    if interface.fwmark.is_some() {
        return None;
    }
    let (owner, allowed) = interface.peers.iter().find_map(|owner| {
        let allowed = owner.allowed_ips.iter().find(|allowed| allowed.contains(endpoint.ip()))?;
        Some((owner, allowed))
    })?;
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
    let off: Vec<String> = [
        (interface.ipv4_forwarding, format!("net.ipv4.conf.{}.forwarding", interface.name)),
        (interface.ipv6_forwarding, "net.ipv6.conf.all.forwarding".to_owned()),
    ]
    .into_iter()
    .filter(|(on, _)| *on == Some(false))
    .map(|(_, name)| format!("{name} = 0"))
    .collect();
    if dropped == 0 || off.is_empty() {
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
    use crate::wg::AllowedIp;

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
