//! The kernel side, seen from user space: loads wgtel's eBPF object, attaches its programs to
//! WireGuard interfaces ([`attach`]), keeps the AllowedIPs trie and peer ids in step with
//! WireGuard's peer lists ([`peers`]) and reads the per-CPU counters.

mod attach;
mod peers;

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier},
};
use collector_common::maps::{InterfaceTraffic, PeerTraffic};

pub use self::attach::AttachMode;
use self::{attach::AttachedInterface, peers::PeerTable};
use crate::wg::PeerState;

/// The eBPF object aya-build compiled from `collector-ebpf` (an empty stub when the build had
/// no bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// This binary was built without bpf-linker, so it carries no eBPF programs.
    #[error(
        "this wgtel was built without its eBPF programs; run `cargo xtask setup`, then rebuild"
    )]
    NotBuilt,
    /// The kernel refused the object (verifier, BTF, permissions).
    #[error(
        "loading the eBPF programs failed (wgtel needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a map or program the collector expects: a build mismatch.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A program could not be loaded into the kernel.
    #[error("loading program {name} failed")]
    Program {
        /// Program name.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching to or detaching from an interface failed.
    #[error("attaching to interface {interface} failed")]
    Attach {
        /// Interface name.
        interface: String,
        /// Why.
        #[source]
        source: attach::AttachError,
    },
    /// A map operation failed.
    #[error("eBPF map {map}: {operation} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The syscall error.
        #[source]
        source: Box<MapError>,
    },
    /// The possible CPUs could not be read (`/sys/devices/system/cpu/possible`).
    #[error("reading the number of possible CPUs failed")]
    PossibleCpus(#[source] std::io::Error),
}

impl EbpfError {
    fn map(map: &'static str, operation: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { map, operation, source: Box::new(source) }
    }
}

/// What the kernel counted for one peer since it was given its id.
pub type PeerCounters = PeerTraffic;

/// What the kernel counted on one interface, not tied to a peer, since attaching.
pub type InterfaceCounters = InterfaceTraffic;

/// The loaded programs, their maps, and what is attached where.
pub struct Probes {
    /// Owns the programs; dropped last, after every link is released.
    ebpf: Ebpf,
    /// Number of possible CPUs: the length of every per-CPU value.
    cpus: usize,
    mode: AttachMode,
    peer_traffic: PerCpuArray<MapData, PeerTraffic>,
    interface_traffic: PerCpuHashMap<MapData, u32, InterfaceTraffic>,
    peers: PeerTable,
    /// Attached interfaces by ifindex.
    attached: HashMap<u32, AttachedInterface>,
}

const TUNNEL_INGRESS: &str = "tunnel_ingress";
const TUNNEL_EGRESS: &str = "tunnel_egress";

impl Probes {
    /// Loads the programs into the kernel; nothing is attached yet.
    pub fn load(mode: AttachMode) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| EbpfError::Load(Box::new(e)))?;
        for name in [TUNNEL_INGRESS, TUNNEL_EGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing("tunnel program"))?
                .try_into()
                .map_err(|e| EbpfError::Program { name, source: Box::new(e) })?;
            program.load().map_err(|e| EbpfError::Program { name, source: Box::new(e) })?;
        }
        let peer_traffic = take_map(&mut ebpf, "PEER_TRAFFIC")?;
        let interface_traffic = take_map(&mut ebpf, "INTERFACE_TRAFFIC")?;
        let allowed_ips = take_map(&mut ebpf, "ALLOWED_IPS")?;
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| EbpfError::PossibleCpus(error))?;
        Ok(Self {
            cpus,
            ebpf,
            mode: mode.resolve(),
            peer_traffic,
            interface_traffic,
            peers: PeerTable::new(allowed_ips),
            attached: HashMap::new(),
        })
    }

    /// How programs are attached on this kernel.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Whether interface `ifindex` is attached.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// The ifindexes of every attached interface.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(ifindex, attached)| (*ifindex, attached.name()))
    }

    /// Attaches the tunnel programs to interface `name` (index `ifindex`), ingress and egress,
    /// and starts its interface counters at zero.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<(), EbpfError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let zero = self.per_cpu(InterfaceTraffic::default())?;
        self.interface_traffic
            .insert(ifindex, zero, 0)
            .map_err(EbpfError::map("INTERFACE_TRAFFIC", "insert"))?;
        let attached = AttachedInterface::attach(
            &mut self.ebpf,
            self.mode,
            name,
            [TUNNEL_INGRESS, TUNNEL_EGRESS],
        )
        .map_err(|source| EbpfError::Attach { interface: name.to_owned(), source })?;
        self.attached.insert(ifindex, attached);
        Ok(())
    }

    /// Detaches from interface `ifindex` and forgets its peers and counters. `gone` says the
    /// interface no longer exists (the kernel already dropped the attachment).
    pub fn release(&mut self, ifindex: u32, gone: bool) -> Result<(), EbpfError> {
        self.peers.forget_interface(ifindex)?;
        // A missing entry means it was never created: nothing to undo.
        let _ignored = self.interface_traffic.remove(&ifindex);
        match self.attached.remove(&ifindex) {
            Some(attached) => {
                let name = attached.name().to_owned();
                attached
                    .release(gone)
                    .map_err(|source| EbpfError::Attach { interface: name, source })
            }
            None => Ok(()),
        }
    }

    /// Brings the peer ids and the AllowedIPs trie of interface `ifindex` in line with
    /// `peers`, and returns each peer's id (in the order of `peers`; `None` where the maps are
    /// full).
    pub fn sync_peers(
        &mut self,
        ifindex: u32,
        peers: &[PeerState],
    ) -> Result<Vec<Option<u32>>, EbpfError> {
        let (ids, fresh) = self.peers.assign(ifindex, peers);
        // Zero a fresh id's counters before the trie points at it: the id may be reused.
        for id in fresh {
            let zero = self.per_cpu(PeerTraffic::default())?;
            self.peer_traffic.set(id, zero, 0).map_err(EbpfError::map("PEER_TRAFFIC", "reset"))?;
        }
        self.peers.install(ifindex, peers, &ids)?;
        Ok(ids)
    }

    /// The same value for every possible CPU.
    fn per_cpu<T: aya::Pod>(&self, value: T) -> Result<PerCpuValues<T>, EbpfError> {
        PerCpuValues::try_from(vec![value; self.cpus]).map_err(EbpfError::PossibleCpus)
    }

    /// What the kernel counted for peer `id`, summed over CPUs.
    pub fn peer_counters(&self, id: u32) -> Result<PeerCounters, EbpfError> {
        let values =
            self.peer_traffic.get(&id, 0).map_err(EbpfError::map("PEER_TRAFFIC", "read"))?;
        Ok(values.iter().fold(PeerTraffic::default(), |sum, cpu| sum.add(*cpu)))
    }

    /// What the kernel counted on interface `ifindex` that no peer could be tied to.
    pub fn interface_counters(&self, ifindex: u32) -> Result<InterfaceCounters, EbpfError> {
        let values = self
            .interface_traffic
            .get(&ifindex, 0)
            .map_err(EbpfError::map("INTERFACE_TRAFFIC", "read"))?;
        Ok(values.iter().fold(InterfaceTraffic::default(), |sum, cpu| sum.add(*cpu)))
    }

    /// How many AllowedIPs entries the trie holds for interface `ifindex`.
    pub fn allowed_ip_entries(&self, ifindex: u32) -> usize {
        self.peers.entries(ifindex)
    }
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("mode", &self.mode)
            .field("attached", &self.attached)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for (ifindex, attached) in self.attached.drain() {
            let name = attached.name().to_owned();
            if let Err(error) = attached.release(false) {
                log::warn!("detaching from {name} (ifindex {ifindex}): {error}");
            }
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(EbpfError::map(name, "open"))
}
