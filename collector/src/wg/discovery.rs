//! Which WireGuard interfaces exist in this network namespace, and of which kind.
//!
//! The links come from an `RTM_GETLINK` dump. A link of kind `wireguard` is a kernel interface.
//! Any other link (wireguard-go and boringtun create a `tun` device) with a UAPI socket
//! `<uapi_socket_dir>/<name>.sock` is a userspace interface. The socket directory may be shared
//! by several network namespaces, so a socket without a link here is ignored.

use std::{ffi::CString, os::unix::fs::FileTypeExt as _, path::Path};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
};
use netlink_sys::protocols::NETLINK_ROUTE;

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
    let mut found: Vec<DiscoveredInterface> = list_links()?
        .into_iter()
        .filter_map(|link| {
            let implementation = if link.kind_is_wireguard {
                Implementation::Kernel
            } else if has_socket(&link.name) {
                Implementation::Userspace
            } else {
                return None;
            };
            Some(DiscoveredInterface { name: link.name, ifindex: link.ifindex, implementation })
        })
        .collect();
    found.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(found)
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
}
