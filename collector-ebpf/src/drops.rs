//! Attaches to: the `skb:kfree_skb` tracepoint (every packet the kernel frees as dropped), as
//! a raw tracepoint: it needs no tracefs (absent in a `ip netns exec` mount namespace, say) and
//! reads the `TP_PROTO` arguments `(skb, location, reason[, rx_sk since 6.11])` directly, whose
//! first three kept their places across kernels, instead of a record whose layout moved.
//!
//! Two programs, of which the collector loads one: `kfree_skb` reads the reason, 5.17+
//! (c504e5c2f964 "net: skb: introduce kfree_skb_reason()" added it with `enum
//! skb_drop_reason`); `kfree_skb_no_reason` reads only `(skb, location)`, all that 5.10's
//! tracepoint passes, and counts every drop as [`REASON_UNKNOWN`]. One program cannot serve
//! both: the kernel refuses to attach a raw tracepoint program that reads past the
//! tracepoint's last argument (`__bpf_probe_register`: `max_ctx_offset > num_args * 8`).
//!
//! Keeps only drops on watched interfaces: the skb's device is read with field offsets that
//! the collector takes from the running kernel's BTF at load time and writes into the globals
//! below, so one object serves every kernel. A drop on a WireGuard interface is tied to a peer
//! by the inner packet's addresses (source, else destination) through the AllowedIPs trie.
//! The tracepoint fires for every freed skb on the host: the early exits come first and cost
//! two argument reads, four kernel reads and one hash lookup. Empty buffers (no packet: the
//! kernel's NAPI self-check frees one per WireGuard peer added) are not counted.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use collector_common::maps::{
    DropKey, InnerAddress, MapId, NO_PEER_ID, REASON_UNKNOWN, WATCHED_WIREGUARD,
};

use crate::{
    map_errors::map_error,
    maps::{DROPS, WATCHED},
    peers::peer_of,
};

// Offsets written by the collector from BTF before loading (see `collector/src/ebpf/btf.rs`);
// the values here are those of x86_64 6.18 and only document the shape.

/// `sk_buff.dev`.
#[unsafe(no_mangle)]
static SKB_DEV: u32 = 16;
/// `sk_buff.skb_iif`: the interface the packet was received on, 0 for one this host sent.
#[unsafe(no_mangle)]
static SKB_IIF: u32 = 148;
/// `sk_buff.len`.
#[unsafe(no_mangle)]
static SKB_LEN: u32 = 112;
/// `sk_buff.head`.
#[unsafe(no_mangle)]
static SKB_HEAD: u32 = 192;
/// `sk_buff.network_header`.
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER: u32 = 180;
/// `net_device.ifindex`.
#[unsafe(no_mangle)]
static NET_DEVICE_IFINDEX: u32 = 224;
/// `net_device.nd_net` (a `possible_net_t`: one pointer to `struct net`).
#[unsafe(no_mangle)]
static NET_DEVICE_NET: u32 = 280;
/// `net.ns.inum`: the namespace's inode number.
#[unsafe(no_mangle)]
static NET_NS_INUM: u32 = 0;
/// The collector's network namespace (inode of `/proc/self/ns/net`): interface indexes only
/// mean something within one namespace.
#[unsafe(no_mangle)]
static NETNS_INODE: u32 = 0;
/// `SKB_DROP_REASON_NO_SOCKET` and `SKB_DROP_REASON_SOCKET_FILTER`: what the kernel reports
/// for an echo reply that raw sockets (ping) took copies of, when no ICMP socket wants the
/// original or a raw socket's filter declines its copy. Not a lost packet: not counted.
#[unsafe(no_mangle)]
static REASON_NO_SOCKET: u32 = 0;
#[unsafe(no_mangle)]
static REASON_SOCKET_FILTER: u32 = 0;
/// Reasons below this are not drops (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`).
#[unsafe(no_mangle)]
static FIRST_DROP_REASON: u32 = 2;

#[inline(always)]
fn global(value: &'static u32) -> usize {
    // SAFETY: a plain read; volatile so the compiler keeps the load the loader patched.
    unsafe { core::ptr::read_volatile(value) as usize }
}

/// `TP_PROTO` argument positions of `kfree_skb` (include/trace/events/skb.h).
const ARG_SKB: usize = 0;
const ARG_REASON: usize = 2;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // The reason is an enum passed in a 64-bit argument slot.
    let reason = ctx.arg::<u64>(ARG_REASON) as u32;
    if (reason as usize) >= global(&FIRST_DROP_REASON) {
        let _counted = count(&ctx, Some(reason));
    }
    0
}

/// `kfree_skb` of kernels before 5.17, whose tracepoint passes no reason.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_no_reason(ctx: RawTracePointContext) -> i32 {
    let _counted = count(&ctx, None);
    0
}

/// Counts the drop of the tracepoint's skb with `reason`, `None` when the kernel gives none.
#[inline(always)]
fn count(ctx: &RawTracePointContext, reason: Option<u32>) -> Option<()> {
    let skb: u64 = ctx.arg(ARG_SKB);
    let dev: u64 = read_kernel(skb, global(&SKB_DEV))?;
    if dev == 0 {
        return None;
    }
    let net: u64 = read_kernel(dev, global(&NET_DEVICE_NET))?;
    let inode: u32 = read_kernel(net, global(&NET_NS_INUM))?;
    if inode as usize != global(&NETNS_INODE) {
        return None;
    }
    let ifindex: u32 = read_kernel(dev, global(&NET_DEVICE_IFINDEX))?;
    // SAFETY: the value is copied out at once.
    let kind = *unsafe { WATCHED.get(&ifindex) }?;
    // An empty buffer carried no packet. The kernel frees one with `kfree_skb` for every NAPI
    // instance it registers (`napi_get_frags_check`, 6.0+: each WireGuard peer has one), and
    // WireGuard frees its queued keepalives so: neither is a lost packet.
    let len: u32 = read_kernel(skb, global(&SKB_LEN))?;
    if len == 0 {
        return None;
    }
    let peer = if kind == WATCHED_WIREGUARD {
        let received_on: u32 = read_kernel(skb, global(&SKB_IIF))?;
        let inner = inner_packet(skb, ifindex, received_on == ifindex);
        // Without a reason, every echo reply freed here is taken for ping's: 5.10's icmp_rcv
        // frees the reply with kfree_skb when no ICMP socket wants it, after raw sockets took
        // their copies. The price: a firewall's drop of an echo reply is not counted there.
        let ping_copy = match reason {
            None => true,
            Some(reason) => {
                reason as usize == global(&REASON_NO_SOCKET)
                    || reason as usize == global(&REASON_SOCKET_FILTER)
            }
        };
        if inner.echo_reply && ping_copy {
            return None;
        }
        inner.peer
    } else {
        NO_PEER_ID
    };
    let key = DropKey { ifindex, peer, reason: reason.unwrap_or(REASON_UNKNOWN) };
    match DROPS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it.
        Some(count) => unsafe { *count += 1 },
        None => {
            if DROPS.insert(&key, &1, 0).is_err() {
                map_error(MapId::Drops);
            }
        }
    }
    Some(())
}

/// What the drop program learns of an inner packet on a WireGuard interface.
struct InnerPacket {
    /// Its peer, [`NO_PEER_ID`] when none (or its header could not be read).
    peer: u32,
    /// Whether it is an ICMP or ICMPv6 echo reply.
    echo_reply: bool,
}

/// The inner packet of `skb` on WireGuard interface `ifindex`: its peer by its source address
/// when it was `received` from the tunnel, else by its destination, and whether it is an echo
/// reply. Plain values rather than nested options: the verifier must see every register
/// written on every path out of here.
#[inline(always)]
fn inner_packet(skb: u64, ifindex: u32, received: bool) -> InnerPacket {
    let unknown = InnerPacket { peer: NO_PEER_ID, echo_reply: false };
    let (Some(head), Some(network_header)) = (
        read_kernel::<u64>(skb, global(&SKB_HEAD)),
        read_kernel::<u16>(skb, global(&SKB_NETWORK_HEADER)),
    ) else {
        return unknown;
    };
    let ip = head + u64::from(network_header);
    let Some(first) = read_kernel::<u8>(ip, 0) else { return unknown };
    let (address, echo_reply) = match first >> 4 {
        4 => {
            let protocol = read_kernel::<u8>(ip, 9).unwrap_or(0);
            let transport = u64::from(first & 0x0f) * 4;
            let icmp_type = read_kernel::<u8>(ip + transport, 0).unwrap_or(u8::MAX);
            let at = if received { 12 } else { 16 };
            let Some(octets) = read_kernel::<[u8; 4]>(ip, at) else { return unknown };
            (InnerAddress::ipv4(octets), protocol == 1 && icmp_type == 0)
        }
        6 => {
            let next_header = read_kernel::<u8>(ip, 6).unwrap_or(0);
            let icmp_type = read_kernel::<u8>(ip, 40).unwrap_or(0);
            let at = if received { 8 } else { 24 };
            let Some(octets) = read_kernel::<[u8; 16]>(ip, at) else { return unknown };
            (InnerAddress::ipv6(octets), next_header == 58 && icmp_type == 129)
        }
        _ => return unknown,
    };
    InnerPacket { peer: peer_of(ifindex, address).unwrap_or(NO_PEER_ID), echo_reply }
}

#[inline(always)]
fn read_kernel<T>(base: u64, offset: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}
