//! Which NICs carry the underlay: the output interfaces of the routes to the peers' endpoints,
//! asked of the kernel like `ip route get ADDRESS` does (`RTM_GETROUTE`).
//!
//! One call opens one `NETLINK_ROUTE` socket and asks it about each destination in turn, each
//! answer awaited at most [`REPLY_TIMEOUT`] into a fixed-size buffer, so a hung kernel cannot
//! block the caller for long and memory stays bounded.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    DecodeError, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::wg::netlink::set_receive_timeout;

/// Most distinct destinations looked up per call: one per peer of a very large gateway. The
/// rest are ignored (with a warning), which bounds both the time and the memory of a call.
pub const MAX_DESTINATIONS: usize = 65_536;

/// How long the kernel may take to answer one lookup.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Size of the receive buffer. A route reply is a few hundred bytes at most; a larger datagram
/// is reported as [`RouteError::Truncated`].
const RECEIVE_BUFFER: usize = 16 * 1024;

/// Errnos with which the kernel says there is no usable route: none at all (`ENETUNREACH`), or
/// an `unreachable` (`EHOSTUNREACH`), `blackhole` (`EINVAL`), `prohibit` (`EACCES`) or `throw`
/// (`EAGAIN`) route.
const NO_ROUTE: [i32; 5] =
    [libc::ENETUNREACH, libc::EHOSTUNREACH, libc::EINVAL, libc::EACCES, libc::EAGAIN];

/// Why the routes could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Opening, binding, configuring or using the rtnetlink socket failed.
    #[error("rtnetlink socket")]
    Socket(#[source] io::Error),
    /// The kernel refused the lookup with an error other than "no route".
    #[error("looking up the route to {destination}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The destination asked for.
        destination: IpAddr,
        /// The positive errno the kernel answered with.
        errno: i32,
    },
    /// The kernel's answer could not be decoded.
    #[error("decoding the route to {destination}")]
    Decode {
        /// The destination asked for.
        destination: IpAddr,
        /// What was wrong with the answer.
        #[source]
        source: DecodeError,
    },
    /// The kernel's answer did not fit the receive buffer.
    #[error("the answer about the route to {destination} has {length} bytes, more than {limit}")]
    Truncated {
        /// The destination asked for.
        destination: IpAddr,
        /// Length of the datagram.
        length: usize,
        /// Size of the receive buffer.
        limit: usize,
    },
    /// The kernel did not answer in time.
    #[error("no answer about the route to {destination} within {timeout:?}")]
    Timeout {
        /// The destination asked for.
        destination: IpAddr,
        /// How long the answer was awaited.
        timeout: Duration,
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

/// The output interfaces of the routes to `destinations` (like `ip route get ADDRESS mark
/// FWMARK` for each: WireGuard marks its own datagrams with its interface's fwmark, and
/// wg-quick's full-tunnel policy routing sends only unmarked traffic into the tunnel), without
/// duplicates, sorted by name. Destinations without a usable route
/// (`ENETUNREACH`, unreachable, blackhole, prohibit or throw routes) are skipped, not errors;
/// so are routes through loopback (`lo`) and interfaces that vanished meanwhile. At most
/// [`MAX_DESTINATIONS`] distinct destinations are looked up; the rest are ignored.
///
/// Runs in the network namespace of the calling thread; blocks up to [`REPLY_TIMEOUT`] per
/// destination.
pub fn interfaces_towards(
    destinations: &[(IpAddr, Option<u32>)],
) -> Result<Vec<RouteInterface>, RouteError> {
    let found: BTreeSet<RouteInterface> =
        paths_towards(destinations)?.into_iter().map(|path| path.interface).collect();
    Ok(found.into_iter().collect())
}

/// The route to one destination: its output interface and MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePath {
    /// The destination and the mark it was looked up with.
    pub destination: (IpAddr, Option<u32>),
    /// The output interface.
    pub interface: RouteInterface,
    /// The route's own MTU (`ip route ... mtu N`), else the output interface's; `None` when
    /// neither can be read.
    pub mtu: Option<u32>,
}

/// The routes to `destinations`, as [`interfaces_towards`] looks them up (same limits, same
/// destinations skipped), one per distinct destination that has a usable route.
pub fn paths_towards(destinations: &[(IpAddr, Option<u32>)]) -> Result<Vec<RoutePath>, RouteError> {
    let mut unique = BTreeSet::new();
    for destination in destinations {
        if unique.len() >= MAX_DESTINATIONS && !unique.contains(destination) {
            log::warn!(
                "looking up the routes to only {MAX_DESTINATIONS} of {} destinations",
                destinations.len()
            );
            break;
        }
        unique.insert(*destination);
    }
    if unique.is_empty() {
        return Ok(Vec::new());
    }

    let socket = open_socket()?;
    let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
    let mut found = Vec::new();
    // Most destinations leave by the same few interfaces: each one's name and MTU are read
    // once per call, not once per destination (`None`: no such interface, or loopback).
    let mut interfaces: HashMap<u32, Option<(String, Option<u32>)>> = HashMap::new();
    for (sequence, (destination, mark)) in (1u32..).zip(unique) {
        let Some((ifindex, route_mtu)) =
            output_interface(&socket, &mut buffer, sequence, destination, mark)?
        else {
            continue;
        };
        let known = interfaces.entry(ifindex).or_insert_with(|| {
            let name = interface_name(ifindex).filter(|name| name != "lo")?;
            let mtu = interface_mtu(&name);
            Some((name, mtu))
        });
        if let Some((name, interface_mtu)) = known {
            let mtu = route_mtu.or(*interface_mtu);
            let interface = RouteInterface { name: name.clone(), ifindex };
            found.push(RoutePath { destination: (destination, mark), interface, mtu });
        }
    }
    Ok(found)
}

/// The MTU of interface `name`, from sysfs.
fn interface_mtu(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?.trim().parse().ok()
}

/// A `NETLINK_ROUTE` socket connected to the kernel, whose receives time out after
/// [`REPLY_TIMEOUT`].
fn open_socket() -> Result<Socket, RouteError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(RouteError::Socket)?;
    socket.bind_auto().map_err(RouteError::Socket)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(RouteError::Socket)?;
    set_receive_timeout(&socket, REPLY_TIMEOUT).map_err(RouteError::Socket)?;
    Ok(socket)
}

/// The output interface of the route to `destination` and the route's own MTU, asked on
/// `socket` with sequence number `sequence`; `None` when there is no usable route.
fn output_interface(
    socket: &Socket,
    buffer: &mut Vec<u8>,
    sequence: u32,
    destination: IpAddr,
    mark: Option<u32>,
) -> Result<Option<(u32, Option<u32>)>, RouteError> {
    let mut route = RouteMessage::default();
    let (family, length) = match destination {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    route.header.address_family = family;
    route.header.destination_prefix_length = length;
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(destination)));
    if let Some(mark) = mark {
        route.attributes.push(RouteAttribute::Mark(mark));
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let mut request =
        NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetRoute(route)));
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(RouteError::Socket)?;

    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        if Instant::now() >= deadline {
            return Err(RouteError::Timeout { destination, timeout: REPLY_TIMEOUT });
        }
        buffer.clear();
        let length = match socket.recv(buffer, libc::MSG_TRUNC) {
            Ok(length) => length,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error)
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return Err(RouteError::Timeout { destination, timeout: REPLY_TIMEOUT });
            }
            Err(error) => return Err(RouteError::Socket(error)),
        };
        if length > buffer.len() {
            return Err(RouteError::Truncated { destination, length, limit: buffer.capacity() });
        }
        let mut rest = buffer.as_slice();
        while !rest.is_empty() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|source| RouteError::Decode { destination, source })?;
            // Messages are 4-byte aligned; a length below a header's cannot have parsed.
            let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
            rest = rest.get(length.saturating_add(3) & !3..).unwrap_or_default();
            if message.header.sequence_number != sequence {
                // A late answer to an earlier request: not ours.
                continue;
            }
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                    if route.header.kind != RouteType::Unicast {
                        return Ok(None);
                    }
                    let mut mtu = None;
                    let mut oif = None;
                    for attribute in route.attributes {
                        match attribute {
                            RouteAttribute::Oif(ifindex) => oif = Some(ifindex),
                            RouteAttribute::Metrics(metrics) => {
                                mtu = metrics.into_iter().find_map(|metric| match metric {
                                    RouteMetric::Mtu(mtu) => Some(mtu),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                    return Ok(oif.map(|oif| (oif, mtu)));
                }
                NetlinkPayload::Error(error) => {
                    let errno = error.raw_code().saturating_abs();
                    return if errno == 0 || NO_ROUTE.contains(&errno) {
                        Ok(None)
                    } else {
                        Err(RouteError::Kernel { destination, errno })
                    };
                }
                _ => {}
            }
        }
    }
}

/// The name of interface `ifindex`; `None` if there is none (any more).
fn interface_name(ifindex: u32) -> Option<String> {
    // libc: rustix's `index_to_name` needs a socket of its own for the ioctl.
    let mut buffer = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buffer` has room for IF_NAMESIZE bytes, as if_indextoname(3) requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8(buffer.get(..end)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        os::fd::AsFd as _,
        process::{Command, Stdio},
        thread,
    };

    use super::*;

    /// Runs `ip ARGS`, failing the test if it fails.
    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).stdout(Stdio::null()).status().expect("ip runs");
        assert!(status.success(), "ip {args:?} failed: {status}");
    }

    /// A fresh network namespace, deleted on drop.
    struct Namespace {
        /// Its name under /run/netns.
        name: String,
    }

    impl Namespace {
        /// Creates `wgtel-rt-<pid>-<tag>` with `lo` up.
        fn new(tag: &str) -> Self {
            let name = format!("wgtel-rt-{}-{tag}", std::process::id());
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
            ip(&["netns", "add", &name]);
            let namespace = Self { name };
            namespace.ip(&["link", "set", "lo", "up"]);
            namespace
        }

        /// Runs `ip ARGS` inside the namespace.
        fn ip(&self, args: &[&str]) {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        }

        /// Runs `work` on a thread that has entered the namespace.
        fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{}", self.name);
            thread::spawn(move || {
                let file = File::open(&path).expect("namespace file opens");
                // setns only changes the namespace of this (fresh) thread.
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the namespace");
                work()
            })
            .join()
            .expect("namespace thread finishes")
        }
    }

    impl Drop for Namespace {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }

    /// Parses address literals, each to be looked up without a mark.
    fn addresses(literals: &[&str]) -> Vec<(IpAddr, Option<u32>)> {
        literals.iter().map(|a| (a.parse().expect("an address literal"), None)).collect()
    }

    /// A namespace with a veth pair `rt0`/`rt1`, 198.18.77.1/24 and fd00:18:77::1/64 on rt0.
    fn veth_namespace(tag: &str) -> Namespace {
        let namespace = Namespace::new(tag);
        namespace.ip(&["link", "add", "rt0", "type", "veth", "peer", "name", "rt1"]);
        namespace.ip(&["addr", "add", "198.18.77.1/24", "dev", "rt0"]);
        namespace.ip(&["addr", "add", "fd00:18:77::1/64", "dev", "rt0", "nodad"]);
        namespace.ip(&["link", "set", "rt0", "up"]);
        namespace.ip(&["link", "set", "rt1", "up"]);
        namespace
    }

    #[test]
    fn endpoints_on_a_connected_subnet_route_through_its_nic() {
        let namespace = veth_namespace("veth");
        let (found, ifindex) = namespace.run(|| {
            let destinations = addresses(&["198.18.77.20", "fd00:18:77::20", "198.18.77.21"]);
            let found = interfaces_towards(&destinations).expect("the lookup works");
            let name = std::ffi::CString::new("rt0").expect("a C string");
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            let by_name = unsafe { libc::if_nametoindex(name.as_ptr()) };
            (found, by_name)
        });
        assert_ne!(ifindex, 0, "rt0 exists in the namespace");
        assert_eq!(found, vec![RouteInterface { name: "rt0".to_owned(), ifindex }]);
    }

    /// wg-quick's full-tunnel policy routing: everything without the mark 51820 goes by table
    /// 51820, whose default route is a tunnel device (`tun9`, one end of a veth pair here); the
    /// endpoint's
    /// datagrams carry the mark and keep the main table's route through `rt0`.
    #[test]
    fn endpoints_route_with_the_fwmark_wireguard_puts_on_its_datagrams() {
        let namespace = veth_namespace("fwmark");
        namespace.ip(&["link", "add", "tun9", "type", "veth", "peer", "name", "tun9p"]);
        namespace.ip(&["link", "set", "tun9", "up"]);
        namespace.ip(&["route", "add", "default", "dev", "tun9", "table", "51820"]);
        namespace.ip(&["rule", "add", "not", "fwmark", "51820", "table", "51820"]);
        let (marked, unmarked) = namespace.run(|| {
            let endpoint: IpAddr = "198.18.77.20".parse().expect("an address");
            (
                interfaces_towards(&[(endpoint, Some(51820))]).expect("the lookup works"),
                interfaces_towards(&[(endpoint, None)]).expect("the lookup works"),
            )
        });
        let names = |found: Vec<RouteInterface>| -> Vec<String> {
            found.into_iter().map(|nic| nic.name).collect()
        };
        assert_eq!(names(marked), ["rt0"]);
        assert_eq!(names(unmarked), ["tun9"]);
    }

    #[test]
    fn destinations_without_a_route_are_skipped() {
        let namespace = veth_namespace("noroute");
        let found = namespace
            .run(|| interfaces_towards(&addresses(&["198.18.99.1", "fd00:18:99::1"])))
            .expect("the lookup works");
        assert_eq!(found, Vec::new());
    }

    #[test]
    fn loopback_destinations_are_skipped() {
        let namespace = veth_namespace("loopback");
        let found = namespace
            .run(|| interfaces_towards(&addresses(&["127.0.0.1", "::1", "198.18.77.1"])))
            .expect("the lookup works");
        assert_eq!(found, Vec::new());
    }

    #[test]
    fn no_destinations_need_no_socket() {
        assert_eq!(interfaces_towards(&[]).expect("nothing to look up"), Vec::new());
    }
}
