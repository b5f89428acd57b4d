//! The kernel's drop reasons (`skb:kfree_skb`, attached raw): the layout the program needs,
//! taken from the running kernel's BTF before loading, the reason names from the same BTF (the enum
//! is not UAPI: reasons were inserted, not only appended, across kernels), and the counters.
//!
//! A kernel before 5.17 has neither the enum nor the tracepoint's reason argument (both came
//! with c504e5c2f964 "net: skb: introduce kfree_skb_reason()"): there the program without a
//! reason is loaded, and every drop it counts is [`DROP_REASON_UNKNOWN`].

use std::collections::{HashMap, HashSet};

use aya::{
    EbpfLoader,
    maps::{MapData, PerCpuHashMap},
};
use collector_common::maps::{DropKey, NO_PEER_ID, REASON_UNKNOWN};

use super::{
    batch::{BatchedHashMap, PerCpuHashReader},
    btf::{BtfError, KernelBtf},
};
use crate::model::DROP_REASON_UNKNOWN;

/// Prefix of the `enum skb_drop_reason` enumerators, left off the names wgtel reports.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";

/// The first enumerator that is a drop (`SKB_NOT_DROPPED_YET` and `SKB_CONSUMED` come before).
const FIRST_DROP: &str = "SKB_DROP_REASON_NOT_SPECIFIED";

/// The program that reads the reason (5.17+), and the one for older kernels.
const KFREE_SKB: &str = "kfree_skb";
const KFREE_SKB_NO_REASON: &str = "kfree_skb_no_reason";

/// Where the tracepoint program finds what it reads, on this kernel, and what the reasons are
/// called. Public (hidden) for the privileged test that compares it with `pahole` and the
/// tracepoint's format.
#[derive(Debug)]
pub struct DropLayout {
    /// `(global variable of the program, value)`.
    globals: Vec<(&'static str, u32)>,
    /// Reason value -> name without [`REASON_PREFIX`]; `None` on a kernel without drop
    /// reasons.
    names: Option<HashMap<u32, String>>,
}

impl DropLayout {
    /// Reads the layout from `/sys/kernel/btf/vmlinux`.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_btf(&KernelBtf::from_sys_fs()?)
    }

    /// The value the program's global `name` (`SKB_DEV`, `FIRST_DROP_REASON`, ...) is loaded
    /// with, if it is set on this kernel.
    pub fn global(&self, name: &str) -> Option<u32> {
        self.globals.iter().find(|(global, _)| *global == name).map(|(_, value)| *value)
    }

    /// Reason value -> name without `SKB_DROP_REASON_`; `None` on a kernel without drop
    /// reasons.
    pub fn reason_names(&self) -> Option<&HashMap<u32, String>> {
        self.names.as_ref()
    }

    fn from_btf(btf: &KernelBtf) -> Result<Self, BtfError> {
        // (global, struct, member, size the program reads)
        const FIELDS: [(&str, &str, &str, u32); 7] = [
            ("SKB_DEV", "sk_buff", "dev", 8),
            ("SKB_IIF", "sk_buff", "skb_iif", 4),
            ("SKB_LEN", "sk_buff", "len", 4),
            ("SKB_HEAD", "sk_buff", "head", 8),
            ("SKB_NETWORK_HEADER", "sk_buff", "network_header", 2),
            ("NET_DEVICE_IFINDEX", "net_device", "ifindex", 4),
            ("NET_DEVICE_NET", "net_device", "nd_net", 8),
        ];
        let mut globals = Vec::with_capacity(FIELDS.len() + 4);
        for (global, type_name, member, size) in FIELDS {
            let found = btf.member_size(type_name, member)?;
            if found != size {
                return Err(BtfError::Malformed {
                    reason: format!("{type_name}.{member} is {found} bytes, not {size}"),
                });
            }
            globals.push((global, btf.member_offset(type_name, member)?));
        }
        // Interface indexes are per network namespace: the program compares the device's
        // `nd_net->ns.inum` with the loading thread's namespace before it trusts an ifindex.
        let inum = btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?;
        if btf.member_size("ns_common", "inum")? != 4 {
            return Err(BtfError::Malformed { reason: "ns_common.inum is not 4 bytes".into() });
        }
        globals.push(("NET_NS_INUM", inum));
        globals.push(("NETNS_INODE", own_netns_inode()?));
        let names = match reasons(btf)? {
            Some((reason_globals, names)) => {
                globals.extend(reason_globals);
                Some(names)
            }
            None => None,
        };
        Ok(Self { globals, names })
    }

    /// Whether the kernel names its drop reasons (5.17+).
    pub(super) fn has_reasons(&self) -> bool {
        self.names.is_some()
    }

    /// The tracepoint program for this kernel.
    pub(super) fn program(&self) -> &'static str {
        if self.has_reasons() { KFREE_SKB } else { KFREE_SKB_NO_REASON }
    }

    /// Writes the layout into the program's globals.
    pub(super) fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (global, value) in &self.globals {
            loader.override_global(global, value, true);
        }
    }
}

/// The globals of the program that reads reasons, and the reason names, from `enum
/// skb_drop_reason`; `None` when the kernel has no such enum (before 5.17).
#[expect(clippy::type_complexity, reason = "a pair of plain collections, named in the doc")]
fn reasons(
    btf: &KernelBtf,
) -> Result<Option<(Vec<(&'static str, u32)>, HashMap<u32, String>)>, BtfError> {
    let reasons = match btf.enum_values("skb_drop_reason") {
        Ok(reasons) => reasons,
        Err(BtfError::NoEnum { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let value_of = |name: &str| {
        reasons
            .iter()
            .find(|(reason, _)| reason == name)
            .and_then(|(_, value)| u32::try_from(*value).ok())
    };
    let first = value_of(FIRST_DROP).ok_or_else(|| BtfError::NoMember {
        type_name: "skb_drop_reason".into(),
        member: FIRST_DROP.into(),
    })?;
    let globals = vec![
        ("FIRST_DROP_REASON", first),
        // Echo replies that ping's raw sockets took copies of end with these: not counted. A
        // kernel without the reason: a value no drop carries.
        ("REASON_NO_SOCKET", value_of("SKB_DROP_REASON_NO_SOCKET").unwrap_or(u32::MAX)),
        ("REASON_SOCKET_FILTER", value_of("SKB_DROP_REASON_SOCKET_FILTER").unwrap_or(u32::MAX)),
    ];
    let names = reasons
        .into_iter()
        .filter_map(|(name, value)| {
            let short = name.strip_prefix(REASON_PREFIX)?;
            // Markers, not reasons.
            (short != "MAX" && short != "SUBSYS_MASK")
                .then(|| Some((u32::try_from(value).ok()?, short.to_owned())))?
        })
        .collect();
    Ok(Some((globals, names)))
}

/// The inode number of the calling thread's network namespace (`ns.inum` in the kernel): the
/// object loaded by a thread inside another namespace counts that namespace's drops.
fn own_netns_inode() -> Result<u32, BtfError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = "/proc/thread-self/ns/net";
    let inode = std::fs::metadata(path)
        .map_err(|source| BtfError::Read { path: path.into(), source })?
        .ino();
    u32::try_from(inode)
        .map_err(|_| BtfError::Malformed { reason: format!("netns inode {inode} exceeds u32") })
}

/// One drop counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    /// Device the packet was on.
    pub ifindex: u32,
    /// Peer id it was tied to, if any.
    pub peer: Option<u32>,
    /// Reason name, e.g. `NETFILTER_DROP`.
    pub reason: String,
    /// Packets.
    pub packets: u64,
}

/// The drop counters and the names of their reasons.
pub(super) struct KernelDrops {
    counters: PerCpuHashMap<MapData, DropKey, u64>,
    /// Reads `counters` in batches.
    reader: PerCpuHashReader<DropKey, u64>,
    /// The entries of the last read (the allocation is kept).
    entries: Vec<(DropKey, u64)>,
    names: HashMap<u32, String>,
}

impl KernelDrops {
    pub(super) fn new(
        (counters, reader): BatchedHashMap<DropKey, u64>,
        layout: DropLayout,
    ) -> Self {
        let names = layout
            .names
            .unwrap_or_else(|| HashMap::from([(REASON_UNKNOWN, DROP_REASON_UNKNOWN.to_owned())]));
        Self { counters, reader, entries: Vec::new(), names }
    }

    /// Every counter; a reason this kernel's BTF does not name is `reason_<value>` (a
    /// subsystem's reason, say), and on a kernel without reasons every drop is
    /// [`DROP_REASON_UNKNOWN`].
    pub(super) fn read(&mut self) -> Vec<Drop> {
        self.reader.read_all(&self.counters, "DROPS", u64::saturating_add, &mut self.entries);
        let mut drops: Vec<Drop> = self
            .entries
            .iter()
            .map(|&(key, packets)| Drop {
                ifindex: key.ifindex,
                peer: (key.peer != NO_PEER_ID).then_some(key.peer),
                reason: self
                    .names
                    .get(&key.reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason_{}", key.reason)),
                packets,
            })
            .collect();
        drops.sort_by(|a, b| (a.ifindex, a.peer, &a.reason).cmp(&(b.ifindex, b.peer, &b.reason)));
        drops
    }

    /// Forgets the counters of interface `ifindex`, or only those tied to `peers` on it, in one
    /// walk of the map.
    pub(super) fn forget(&mut self, ifindex: u32, peers: Option<&HashSet<u32>>) {
        let stale: Vec<DropKey> = self
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                key.ifindex == ifindex && peers.is_none_or(|peers| peers.contains(&key.peer))
            })
            .collect();
        for key in stale {
            let _gone = self.counters.remove(&key);
        }
    }
}

impl std::fmt::Debug for KernelDrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDrops").field("reasons", &self.names.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{super::btf::tests::enum_blob, *};

    #[test]
    fn a_kernel_without_the_reason_enum_has_no_reasons_and_one_with_it_has() {
        let without = KernelBtf::parse(enum_blob("color", &[("RED", 0)])).expect("BTF");
        assert!(reasons(&without).expect("no error").is_none());
        let with = KernelBtf::parse(enum_blob(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_MAX", 4),
            ],
        ))
        .expect("BTF");
        let (globals, names) = reasons(&with).expect("no error").expect("reasons");
        assert_eq!(
            globals,
            [("FIRST_DROP_REASON", 2), ("REASON_NO_SOCKET", 3), ("REASON_SOCKET_FILTER", u32::MAX)]
        );
        assert_eq!(
            names,
            HashMap::from([(2, "NOT_SPECIFIED".to_owned()), (3, "NO_SOCKET".to_owned())])
        );
    }
}
