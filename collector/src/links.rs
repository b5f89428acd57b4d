//! Link up and down, as the kernel announces them: a `NETLINK_ROUTE` socket subscribed to
//! `RTNLGRP_LINK` receives an `RTM_NEWLINK` for every flag change of every interface of the
//! network namespace, so a link that goes down and up again between two collections is seen
//! too (polling `operstate` once per interval would miss it). The socket is non-blocking and
//! drained once per collection; the kernel queues what arrives meanwhile in its receive buffer.
//! A dump of every link at the start gives each its state before the first change.

use std::{collections::HashMap, io, time::SystemTime};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTMGRP_LINK` (`include/uapi/linux/rtnetlink.h`): the legacy group bit of `RTNLGRP_LINK`.
const RTMGRP_LINK: u32 = 1;

/// Receive buffer for one read: a link message is about 1.5 kB; a read returns one datagram,
/// which holds one message for multicast notifications.
const READ_BUFFER: usize = 64 * 1024;

/// The kernel's socket receive buffer: link notifications of a burst of changes wait there
/// between collections.
const SOCKET_BUFFER: usize = 1024 * 1024;

/// Why link changes could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening, binding or configuring the rtnetlink socket failed.
    #[error("rtnetlink link-notification socket")]
    Socket(#[source] io::Error),
}

/// A link became operationally up or down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkChange {
    /// Interface name.
    pub name: String,
    /// Up (administratively up and running) after the change.
    pub up: bool,
    /// When the collector read it (notifications carry no timestamp).
    pub seen_at: SystemTime,
}

/// Receives link notifications and reports which links changed state.
#[derive(Debug)]
pub struct LinkWatcher {
    socket: Socket,
    buffer: Vec<u8>,
    states: LinkStates,
}

/// The last up state seen per interface index.
#[derive(Debug, Default)]
struct LinkStates(HashMap<u32, bool>);

impl LinkWatcher {
    /// Subscribes to link notifications in the calling thread's network namespace.
    pub fn new() -> Result<Self, LinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK)).map_err(LinkError::Socket)?;
        socket.set_non_blocking(true).map_err(LinkError::Socket)?;
        if let Err(error) = socket.set_rx_buf_sz(SOCKET_BUFFER) {
            log::debug!("enlarging the link-notification buffer: {error}");
        }
        // Every link's state now, as the baseline of the first changes: the dump's answers
        // (`RTM_NEWLINK` too) wait in the socket with the notifications.
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        socket.send_to(&bytes, &SocketAddr::new(0, 0), 0).map_err(LinkError::Socket)?;
        Ok(Self { socket, buffer: Vec::with_capacity(READ_BUFFER), states: LinkStates::default() })
    }

    /// The state changes announced since the last call, in order. A change the kernel could not
    /// queue (the buffer overflowed: `ENOBUFS`) is lost; that is logged.
    pub fn changes(&mut self) -> Vec<LinkChange> {
        let seen_at = SystemTime::now();
        let mut changes = Vec::new();
        loop {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("link notifications overflowed the socket buffer: some were lost");
                    continue;
                }
                Err(error) => {
                    log::warn!("reading link notifications: {error}");
                    break;
                }
            }
            let mut rest = self.buffer.as_slice();
            while !rest.is_empty() {
                let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) else {
                    break;
                };
                let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
                rest = rest.get(length.saturating_add(3) & !3..).unwrap_or_default();
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        if let Some(change) = self.states.observe(&link, seen_at) {
                            changes.push(change);
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        // Gone: the interface events say so; forget its state.
                        self.states.0.remove(&link.header.index);
                    }
                    _ => {}
                }
            }
        }
        changes
    }
}

impl LinkStates {
    /// The change `link` announces, if its up state differs from the last one seen. The first
    /// notification of an interface only sets its state: a link created down and then set up
    /// reports the one change, up.
    fn observe(&mut self, link: &LinkMessage, seen_at: SystemTime) -> Option<LinkChange> {
        let up = is_up(link.header.flags);
        let before = self.0.insert(link.header.index, up)?;
        if before == up {
            return None;
        }
        let name = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })?;
        Some(LinkChange { name, up, seen_at })
    }
}

/// Operationally up: administratively up (`IFF_UP`) and running (`IFF_RUNNING`: carrier and
/// RFC 2863 operstate up).
fn is_up(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up | LinkFlags::Running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = flags;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link
    }

    #[test]
    fn only_changes_of_the_up_state_are_reported() {
        let mut watcher = LinkStates::default();
        let at = SystemTime::UNIX_EPOCH;
        let up = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
        let change = |watcher: &mut LinkStates, flags| {
            watcher.observe(&link(7, "wg0", flags), at).map(|change| change.up)
        };
        assert_eq!(change(&mut watcher, up), None, "first sight, up: nothing changed");
        assert_eq!(change(&mut watcher, up | LinkFlags::Promisc), None, "another flag");
        assert_eq!(change(&mut watcher, LinkFlags::Up), Some(false), "carrier lost");
        assert_eq!(change(&mut watcher, LinkFlags::empty()), None, "still down");
        assert_eq!(change(&mut watcher, up), Some(true));
        let created = watcher.observe(&link(8, "eth0", LinkFlags::empty()), at);
        assert_eq!(created, None, "first sight, down: nothing changed either");
        let set_up = watcher.observe(&link(8, "eth0", up), at);
        assert_eq!(set_up.map(|c| (c.name, c.up)), Some(("eth0".into(), true)));
    }
}
