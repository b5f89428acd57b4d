//! Which NICs carry the underlay: the output interfaces of the routes to the peers' endpoints,
//! asked of the kernel like `ip route get ADDRESS` does (`RTM_GETROUTE`).

use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::wg::netlink::{NetlinkError, exchange};

/// Most destinations looked up per call: one per peer of a very large gateway.
pub const MAX_DESTINATIONS: usize = 65_536;

/// Errno of a destination the kernel has no route for.
const UNREACHABLE: [i32; 3] = [libc::ENETUNREACH, libc::EHOSTUNREACH, libc::EINVAL];

/// Why the routes could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The route lookup over rtnetlink failed.
    #[error("looking up the route to {destination}")]
    Lookup {
        /// The destination asked for.
        destination: IpAddr,
        /// What went wrong.
        #[source]
        source: NetlinkError,
    },
}

/// An interface that routes to at least one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteInterface {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
}

/// The output interfaces of the routes to `destinations` (at most [`MAX_DESTINATIONS`] of
/// them), without duplicates, sorted by name. Destinations without a route, and routes
/// through loopback, are skipped.
pub fn interfaces_towards(destinations: &[IpAddr]) -> Result<Vec<RouteInterface>, RouteError> {
    let unique: BTreeSet<IpAddr> = destinations.iter().copied().take(MAX_DESTINATIONS).collect();
    let mut found = BTreeSet::new();
    for destination in unique {
        let Some(ifindex) = output_interface(destination)? else { continue };
        if let Some(name) = interface_name(ifindex).filter(|name| name != "lo") {
            found.insert(RouteInterface { name, ifindex });
        }
    }
    Ok(found.into_iter().collect())
}

/// The output interface of the route to `destination`; `None` when there is no route.
fn output_interface(destination: IpAddr) -> Result<Option<u32>, RouteError> {
    let mut route = RouteMessage::default();
    let (family, length) = match destination {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    route.header.address_family = family;
    route.header.destination_prefix_length = length;
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut request =
        NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetRoute(route)));
    request.finalize();
    let replies = match exchange(NETLINK_ROUTE, &request) {
        Ok(replies) => replies,
        Err(NetlinkError::Kernel { errno }) if UNREACHABLE.contains(&errno) => return Ok(None),
        Err(source) => return Err(RouteError::Lookup { destination, source }),
    };
    Ok(replies.into_iter().find_map(|reply| match reply {
        RouteNetlinkMessage::NewRoute(route) => {
            route.attributes.into_iter().find_map(|a| match a {
                RouteAttribute::Oif(ifindex) => Some(ifindex),
                _ => None,
            })
        }
        _ => None,
    }))
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buffer = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buffer` has room for IF_NAMESIZE bytes, as if_indextoname(3) requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8(buffer[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unroutable_destinations_are_skipped() {
        let found = interfaces_towards(&["127.0.0.1".parse().expect("an address")]);
        assert_eq!(found.expect("a lookup"), Vec::new());
    }
}
