//! WireGuard over WireGuard: a peer whose WireGuard datagrams travel through an outer
//! WireGuard tunnel between it and the gateway, so that the route to its endpoint goes through
//! a device without a link-layer header (a TUN device: its packets start with the IP header).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Lab, LabError, LabNode, WIREGUARD_PORT, generate_keys, ip, wg_set};

/// The UDP port of the outer tunnel, on each end's underlay address.
pub const OUTER_PORT: u16 = 51900;

/// The outer tunnel's address of the lab host whose underlay address is 198.18.L.`host`:
/// 198.18.L.(200 + host), in the lab's underlay block.
fn outer_v4(number: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, number, 200_u8.saturating_add(host))
}

impl Lab {
    /// Carries peer `name`'s WireGuard datagrams to and from the gateway through an outer
    /// WireGuard tunnel (same implementation as each end's own): both ends send to the other's
    /// outer address, 198.18.L.(200 + H) where 198.18.L.H is its underlay address, over the
    /// outer interfaces `wgtLoH`. Returns the gateway's outer interface.
    pub fn carry_over_outer_tunnel(&mut self, name: &str) -> Result<String, LabError> {
        let peer = self.peer(name).ok_or_else(|| LabError::NoSuchPeer(name.to_owned()))?.clone();
        let gateway = self.gateway.clone();
        let outer_gateway = self.outer_node(&gateway)?;
        let outer_peer = self.outer_node(&peer)?;
        for (node, other, underlay) in [
            (&outer_gateway, &outer_peer, peer.underlay_v4),
            (&outer_peer, &outer_gateway, gateway.underlay_v4),
        ] {
            self.start_wireguard(node, node.tunnel_v4, 32, OUTER_PORT)?;
            let allowed = format!("{}/32", other.tunnel_v4);
            let endpoint = SocketAddr::from((underlay, OUTER_PORT)).to_string();
            wg_set(
                node,
                &[
                    "peer",
                    &other.public_key.to_string(),
                    "allowed-ips",
                    &allowed,
                    "endpoint",
                    &endpoint,
                ],
            )?;
            ip(&node.namespace, &["route", "add", &allowed, "dev", &node.interface])?;
        }
        let to_peer = SocketAddr::from((outer_peer.tunnel_v4, WIREGUARD_PORT)).to_string();
        wg_set(&gateway, &["peer", &peer.public_key.to_string(), "endpoint", &to_peer])?;
        let to_gateway = SocketAddr::from((outer_gateway.tunnel_v4, WIREGUARD_PORT)).to_string();
        wg_set(&peer, &["peer", &gateway.public_key.to_string(), "endpoint", &to_gateway])?;
        Ok(outer_gateway.interface)
    }

    /// The outer tunnel's end in `node`'s namespace: a new key, interface `wgtLoH`.
    fn outer_node(&self, node: &LabNode) -> Result<LabNode, LabError> {
        let (private_key, public_key) = generate_keys()?;
        Ok(LabNode {
            name: format!("{}-outer", node.name),
            namespace: node.namespace.clone(),
            interface: format!("wgt{}o{}", self.number, node.host),
            implementation: node.implementation,
            public_key,
            private_key,
            underlay_v4: node.underlay_v4,
            tunnel_v4: outer_v4(self.number, node.host),
            // fd00:18:0:L::H/64: apart from the inner tunnel's fd00:19:0:L::/64.
            tunnel_v6: Ipv6Addr::new(
                0xfd00,
                0x18,
                0,
                self.number.into(),
                0,
                0,
                0,
                node.host.into(),
            ),
            host: node.host,
        })
    }
}
