//! The network namespaces one collection goes through (see [`crate::netns`] for the design):
//! each [`Space`] holds what wgtel keeps of one namespace (its eBPF object, its UAPI readers, its
//! peers' previous counters), and [`follow`] keeps the list in step with the namespaces
//! `--netns` stands for.

use std::{
    collections::{BTreeMap, HashSet},
    error::Error,
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use foldhash::HashMap as FastMap;

use collector_common::latency::LatencyKind;

use crate::{
    ebpf::Probes,
    netns::{self, Namespace, NetnsError, NetnsSpec, StartNamespace},
    wg::{
        Implementation, InterfaceState, PeerSource as _, PublicKey,
        discovery::{self, DiscoveredInterface, LinkCache},
        netlink::Netlink,
        uapi::Uapi,
    },
};

/// Every process's network namespace: nsfs inode -> process ids.
pub(super) type ProcessNamespaces = BTreeMap<u64, Vec<u32>>;

/// Byte counters of a peer at the previous collection, for rates.
#[derive(Clone, Copy, Debug)]
pub(super) struct PreviousBytes {
    pub(super) at: SystemTime,
    pub(super) rx: u64,
    pub(super) tx: u64,
    /// Inner packets sent to the peer (eBPF).
    pub(super) tx_packets: u64,
    /// Handshake initiations sent and not answered.
    pub(super) unanswered: u64,
    /// The [`Memory::round`] that kept it.
    pub(super) round: u64,
}

/// The peers and AllowedIPs the WireGuard interfaces of the calling thread's namespace hold
/// now, their UAPI sockets in `uapis`' directories.
pub(super) fn held(uapis: &[Uapi]) -> (usize, usize) {
    let netlink = Netlink::new();
    let (mut peers, mut allowed_ips) = (0, 0);
    let found = discovery::discover_where(|name| uapi_of(uapis, name).is_some());
    for interface in found.unwrap_or_default() {
        let state = read_interface(&netlink, uapis, &interface).ok();
        for peer in state.map(|state| state.peers).unwrap_or_default() {
            peers += 1;
            allowed_ips += peer.allowed_ips.len();
        }
    }
    (peers, allowed_ips)
}

/// The reader of the first of `uapis` whose directory holds a socket for interface `name`.
pub(super) fn uapi_of<'a>(uapis: &'a [Uapi], name: &str) -> Option<&'a Uapi> {
    uapis.iter().find(|uapi| uapi.has_socket(name))
}

/// WireGuard's state of `interface`, over netlink or its UAPI socket (in one of `uapis`'
/// directories).
pub(super) fn read_interface(
    netlink: &Netlink,
    uapis: &[Uapi],
    interface: &DiscoveredInterface,
) -> Result<InterfaceState, Box<dyn Error + Send + Sync>> {
    // Discovery tells the kernel from a UAPI socket; the UAPI read names the implementation.
    Ok(match interface.implementation {
        Implementation::Kernel => netlink.read_interface(&interface.name)?,
        Implementation::WireguardGo | Implementation::Boringtun | Implementation::Userspace => {
            // The socket may have gone since discovery: the first reader says so.
            let uapi = uapi_of(uapis, &interface.name).or_else(|| uapis.first());
            let uapi = uapi.ok_or("no UAPI socket directory in this namespace")?;
            uapi.read_interface(&interface.name)?
        }
    })
}

/// What one collection keeps of a namespace's peers for the next.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Byte and packet counters by (ifindex, peer), for rates.
    pub(super) previous: FastMap<(u32, PublicKey), PreviousBytes>,
    /// Latency buckets at the previous collection, for the jitter of the last interval.
    pub(super) previous_latency: FastMap<(u32, PublicKey, LatencyKind), Vec<u64>>,
    /// Collections begun: what a collection keeps in `previous` carries its round.
    pub(super) round: u64,
}

impl Memory {
    /// Starts a collection.
    pub(super) fn begin_round(&mut self) {
        self.round += 1;
    }

    /// Forgets the peers the collection of this round did not keep (no longer on any
    /// interface, or on one that could not be read).
    pub(super) fn retain_live(&mut self) {
        let round = self.round;
        self.previous.retain(|_, previous| previous.round == round);
        let previous = &self.previous;
        self.previous_latency
            .retain(|(ifindex, key, _), _| previous.contains_key(&(*ifindex, *key)));
    }
}

/// One network namespace being watched: its eBPF object, where its UAPI sockets are, and what
/// the last collection saw there (see [`crate::netns`] for the design).
#[derive(Debug)]
pub(super) struct Space {
    /// `None` for the namespace wgtel started in.
    pub(super) netns: Option<Namespace>,
    /// Loaded once a WireGuard interface is found there (at start in the start namespace).
    pub(super) probes: Option<Probes>,
    /// A reader per UAPI socket directory.
    pub(super) uapis: Vec<Uapi>,
    /// Its peers' counters at the last collection.
    pub(super) memory: Memory,
    /// Its links, made at its first collection (inside it: the subscription belongs to the
    /// namespace it is made in).
    pub(super) links: Option<LinkCache>,
}

impl Space {
    /// The UAPI readers for the processes' roots `roots`, keeping those already made (a
    /// reader remembers boringtun's handshakes).
    pub(super) fn refresh_uapis(&mut self, roots: Vec<PathBuf>) {
        let mut kept: Vec<Uapi> = Vec::with_capacity(roots.len());
        for root in roots {
            match self.uapis.iter().position(|uapi| uapi.root() == Some(root.as_path())) {
                Some(index) => kept.push(self.uapis.swap_remove(index)),
                None => kept.push(Uapi::in_root(root)),
            }
        }
        self.uapis = kept;
    }

    /// Detaches everything and unloads the object, inside the namespace (clsact filters are
    /// removed by interface index). When the namespace cannot be entered the object is left
    /// to the end of the process rather than detached from the wrong interfaces.
    pub(super) fn retire(self, start: Option<&Arc<StartNamespace>>) {
        let Self { netns, probes, .. } = self;
        let (Some(namespace), Some(probes)) = (netns, probes) else { return };
        let Some(start) = start else { return std::mem::forget(probes) };
        match namespace.enter(start) {
            Ok(inside) => {
                drop(probes);
                drop(inside);
            }
            Err(error) => {
                log::warn!("releasing network namespace {}: {error}", namespace.label);
                std::mem::forget(probes);
            }
        }
    }
}

impl Space {
    /// The start namespace's space, its object loaded at start.
    pub(super) fn start(probes: Probes, uapi: Uapi) -> Self {
        Self {
            netns: None,
            probes: Some(probes),
            uapis: vec![uapi],
            memory: Memory::default(),
            links: None,
        }
    }
}

/// Looks the namespaces `specs` stand for up again: releases the spaces of those gone (inside
/// them), adds one for each new one (its object loaded once WireGuard shows up in it), and
/// returns every process's namespace (for the UAPI directories). The start namespace's space
/// stays.
pub(super) fn follow(
    spaces: &mut Vec<Space>,
    specs: &[NetnsSpec],
    start: &Arc<StartNamespace>,
) -> Result<ProcessNamespaces, NetnsError> {
    let processes = netns::processes()?;
    let found = netns::resolve(specs, start.inode, &processes, false)?;
    let (kept, gone): (Vec<Space>, Vec<Space>) =
        std::mem::take(spaces).into_iter().partition(|space| {
            space.netns.as_ref().is_none_or(|ns| found.iter().any(|f| f.inode == ns.inode))
        });
    *spaces = kept;
    for space in gone {
        if let Some(namespace) = &space.netns {
            log::info!("network namespace {} is gone: released", namespace.label);
        }
        space.retire(Some(start));
    }
    let watched: HashSet<u64> =
        spaces.iter().filter_map(|space| Some(space.netns.as_ref()?.inode)).collect();
    for new in found.iter().filter(|found| !watched.contains(&found.inode)) {
        if let Some(namespace) = Namespace::open(new) {
            log::info!("watching network namespace {}", namespace.label);
            spaces.push(Space {
                netns: Some(namespace),
                probes: None,
                uapis: Vec::new(),
                memory: Memory::default(),
                links: None,
            });
        }
    }
    Ok(processes)
}
