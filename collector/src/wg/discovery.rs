//! Which WireGuard interfaces exist in this network namespace, and of which kind.
//!
//! The links come from an `RTM_GETLINK` dump. A link of kind `wireguard` is a kernel interface.
//! Any other link (wireguard-go and boringtun create a `tun` device) with a UAPI socket
//! `<uapi_socket_dir>/<name>.sock` is a userspace interface. The socket directory may be shared
//! by several network namespaces, so a socket without a link here is ignored.
//!
//! A collector lists the links once and keeps them in a [`LinkCache`], listing them again only
//! after the kernel announced a change (`RTNLGRP_LINK`): a dump costs the kernel a full
//! description of every link of the namespace, and a collection nearly never finds one changed.

use std::{ffi::CString, io, os::unix::fs::FileTypeExt as _, path::Path};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{Implementation, netlink::NetlinkError};

/// A WireGuard interface found in this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredInterface {
    /// Interface name, e.g. `wg0`.
    pub name: String,
    /// Interface index in this namespace.
    pub ifindex: u32,
    /// Which implementation runs it.
    pub implementation: Implementation,
}

/// The WireGuard interfaces of this network namespace, sorted by name.
pub fn discover(uapi_socket_dir: &Path) -> Result<Vec<DiscoveredInterface>, DiscoveryError> {
    discover_where(|name| has_uapi_socket(uapi_socket_dir, name))
}

/// The WireGuard interfaces of this network namespace, sorted by name: kernel ones, and links
/// for which `has_socket` says a UAPI socket exists.
pub fn discover_where(
    has_socket: impl Fn(&str) -> bool,
) -> Result<Vec<DiscoveredInterface>, DiscoveryError> {
    Ok(wireguard_links(&list_links()?, has_socket))
}

/// The WireGuard interfaces among `links`, sorted by name (see [`discover_where`]).
fn wireguard_links(links: &[Link], has_socket: impl Fn(&str) -> bool) -> Vec<DiscoveredInterface> {
    let mut found: Vec<DiscoveredInterface> = links
        .iter()
        .filter_map(|link| {
            let implementation = if link.kind_is_wireguard {
                Implementation::Kernel
            } else if has_socket(&link.name) {
                Implementation::Userspace
            } else {
                return None;
            };
            let name = link.name.clone();
            Some(DiscoveredInterface { name, ifindex: link.ifindex, implementation })
        })
        .collect();
    found.sort_by(|left, right| left.name.cmp(&right.name));
    found
}

/// `RTMGRP_LINK` (`include/uapi/linux/rtnetlink.h`): the legacy group bit of `RTNLGRP_LINK`.
const RTMGRP_LINK: u32 = 1;

/// Room for one notification read: its content does not matter (any notification means the
/// links are listed again), so a longer one is cut.
const NOTIFICATION_BUFFER: usize = 4096;

/// The links of the network namespace it was made in, listed again only when the kernel
/// announced a change since the last listing.
///
/// Its socket, subscribed to `RTNLGRP_LINK` before the first listing, receives an
/// `RTM_NEWLINK` or `RTM_DELLINK` for every link added, removed, renamed, moved to another
/// namespace or changed in its flags, so nothing discovery reads can change unannounced.
/// Notifications the socket could not hold (`ENOBUFS`) or could not be read count as a
/// change. Without the subscription every call lists the links.
#[derive(Debug)]
pub struct LinkCache {
    /// The subscription; `None` when it could not be made.
    notifications: Option<Socket>,
    /// The links at the last listing; `None` when they must be listed again.
    links: Option<Vec<Link>>,
    /// Where notifications are read to.
    buffer: Vec<u8>,
}

impl LinkCache {
    /// A cache of the calling thread's network namespace, empty until the first
    /// [`discover_where`](Self::discover_where).
    pub fn new() -> Self {
        let notifications = subscribe()
            .inspect_err(|error| {
                log::warn!(
                    "no link notifications, the links are listed at every collection: {error}"
                );
            })
            .ok();
        Self { notifications, links: None, buffer: Vec::with_capacity(NOTIFICATION_BUFFER) }
    }

    /// [`discover_where`] on the links of the last listing, listed again first when they may
    /// have changed.
    pub fn discover_where(
        &mut self,
        has_socket: impl Fn(&str) -> bool,
    ) -> Result<Vec<DiscoveredInterface>, DiscoveryError> {
        if self.changed() {
            self.links = None;
        }
        let links = match &mut self.links {
            Some(links) => links,
            empty @ None => empty.insert(list_links()?),
        };
        Ok(wireguard_links(links, has_socket))
    }

    /// Whether a notification came since the last call (each is read and dropped), or the
    /// links must be listed at every call.
    fn changed(&mut self) -> bool {
        let Some(socket) = &self.notifications else { return true };
        let mut changed = false;
        loop {
            self.buffer.clear();
            match socket.recv(&mut self.buffer, 0) {
                Ok(_) => changed = true,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return changed,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Err(error) => {
                    log::warn!("reading link notifications: {error}; links are listed each time");
                    self.notifications = None;
                    return true;
                }
            }
        }
    }
}

impl Default for LinkCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A non-blocking socket subscribed to the link notifications of this network namespace.
fn subscribe() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// The index of interface `name` in this network namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // libc: rustix's `name_to_index` needs a socket of its own for the ioctl.
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether the interface with index `ifindex` carries Ethernet frames (else its packets start
/// with the IP header); `None` when there is no such interface.
pub fn is_ethernet(ifindex: u32) -> Result<Option<bool>, DiscoveryError> {
    Ok(list_links()?.into_iter().find(|link| link.ifindex == ifindex).map(|link| link.ethernet))
}

/// One link of the namespace, as far as discovery cares.
#[derive(Debug)]
struct Link {
    /// Its name.
    name: String,
    /// Its index.
    ifindex: u32,
    /// Whether its `IFLA_INFO_KIND` is `wireguard`.
    kind_is_wireguard: bool,
    /// Whether its packets start with an Ethernet header (`ARPHRD_ETHER`); a tunnel, TUN or
    /// WireGuard device has none: its packets start with the IP header.
    ethernet: bool,
}

/// Every link of this network namespace.
fn list_links() -> Result<Vec<Link>, DiscoveryError> {
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.finalize();
    let replies = super::netlink::exchange(NETLINK_ROUTE, &request)
        .map_err(|source| DiscoveryError::ListLinks { source })?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => link_of(link),
            _ => None,
        })
        .collect())
}

/// The discovery view of `message`; `None` for a link without a name.
fn link_of(message: LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind_is_wireguard = false;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(value) => name = Some(value),
            LinkAttribute::LinkInfo(infos) => {
                kind_is_wireguard |=
                    infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Wireguard)));
            }
            _ => {}
        }
    }
    Some(Link {
        name: name?,
        ifindex: message.header.index,
        kind_is_wireguard,
        ethernet: message.header.link_layer_type == LinkLayerType::Ether,
    })
}

/// Whether `<dir>/<name>.sock` exists and is a socket.
fn has_uapi_socket(dir: &Path, name: &str) -> bool {
    is_socket(&dir.join(format!("{name}.sock")))
}

/// Whether `path` exists and is a socket.
pub fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

/// Why the WireGuard interfaces could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The `RTM_GETLINK` dump failed.
    #[error("cannot list the network links: {source}")]
    ListLinks {
        /// What failed.
        source: NetlinkError,
    },
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixListener,
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A socket directory of its own for one test.
    fn temp_socket_dir() -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wgtel-discovery-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn empty_socket_dir_finds_no_userspace_interface() {
        let dir = temp_socket_dir();
        let found = discover(&dir).expect("discovery works");
        assert!(
            found.iter().all(|interface| interface.implementation == Implementation::Kernel),
            "{found:?}"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn missing_socket_dir_is_not_an_error() {
        let dir = temp_socket_dir().join("absent");
        assert!(discover(&dir).is_ok());
    }

    #[test]
    fn loopback_has_index_one() {
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifindex("nosuchif0"), None);
        assert_eq!(ifindex("bad\0name"), None);
    }

    #[test]
    fn socket_makes_a_link_userspace_and_stray_sockets_are_ignored() {
        let dir = temp_socket_dir();
        let _lo = UnixListener::bind(dir.join("lo.sock")).expect("bind lo.sock");
        let _stray = UnixListener::bind(dir.join("nosuchif.sock")).expect("bind nosuchif.sock");
        // A regular file is not a socket.
        std::fs::write(dir.join("dummy0.sock"), b"").expect("write file");
        let found = discover(&dir).expect("discovery works");
        let loopback = DiscoveredInterface {
            name: "lo".to_owned(),
            ifindex: 1,
            implementation: Implementation::Userspace,
        };
        assert!(found.contains(&loopback), "{found:?}");
        assert!(found.iter().all(|interface| interface.name != "nosuchif"), "{found:?}");
        let mut names: Vec<&str> = found.iter().map(|interface| interface.name.as_str()).collect();
        let unsorted = names.clone();
        names.sort_unstable();
        assert_eq!(names, unsorted);
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    /// Runs `ip ARGS` (in the calling thread's network namespace), failing loudly.
    fn ip(args: &[&str]) {
        let status = std::process::Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?}: {status}");
    }

    #[test]
    fn a_link_cache_lists_again_only_after_the_kernel_announced_a_change() {
        std::thread::spawn(|| {
            // SAFETY: CLONE_NEWNET alone; this thread shares no file descriptor table change.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("a network namespace of this thread's own");
            let has_socket = |name: &str| name == "wgcache0";
            let mut cache = LinkCache::new();
            assert_eq!(cache.discover_where(has_socket).unwrap(), []);
            ip(&["link", "add", "wgcache0", "type", "veth", "peer", "name", "wgcachep"]);
            let added = DiscoveredInterface {
                name: "wgcache0".to_owned(),
                ifindex: ifindex("wgcache0").expect("the link exists"),
                implementation: Implementation::Userspace,
            };
            assert_eq!(cache.discover_where(has_socket).unwrap(), std::slice::from_ref(&added));
            // Nothing announced: the links of the last listing are used, as this stand-in shows.
            let stand_in = Link {
                name: "standin0".to_owned(),
                ifindex: 99,
                kind_is_wireguard: true,
                ethernet: false,
            };
            cache.links.as_mut().expect("listed").push(stand_in);
            let cached = cache.discover_where(has_socket).unwrap();
            assert_eq!(
                cached.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
                ["standin0", "wgcache0"]
            );
            // A flag change is announced: listed again.
            ip(&["link", "set", "wgcache0", "up"]);
            assert_eq!(cache.discover_where(has_socket).unwrap(), [added]);
            ip(&["link", "set", "wgcache0", "name", "wgcache1"]);
            assert_eq!(cache.discover_where(has_socket).unwrap(), []);
            ip(&["link", "del", "wgcache1"]);
            assert_eq!(cache.discover_where(|_| true).unwrap().len(), 1, "lo only");
        })
        .join()
        .expect("the test thread");
    }
}
