//! Debug mode (`wgtel run --debug-ebpf`): what the programs could not parse, logged through
//! aya-log's ring buffer into wgtel's own log. Every statement sits behind aya-log-ebpf's
//! `AYA_LOG_LEVEL`, a `.rodata` global the collector sets at load (`aya_log::LEVEL`): 0
//! without the flag, so the verifier knows each statement's branch is never taken and removes
//! it, and the programs pay nothing for logging; `Info` with the flag.
//!
//! Each function logs one kind of failure and is inlined at its one call site, after the
//! parse that failed: a packet that parses never reaches one. The `kfree_skb` program logs
//! nothing: with a log statement after a failed kernel read, the verifier rejected it
//! (`R1 !read_ok` on returning from the statement's subprogram, kernel 6.18).

use aya_ebpf::programs::TcContext;
use aya_log_ebpf::info;

/// A UDP payload to or from a WireGuard listen port that is no WireGuard message: shorter
/// than a message header, an unknown type, or a length its type never has.
#[inline(always)]
pub(crate) fn not_a_message(ctx: &TcContext, received: bool, port: u16, length: usize) {
    let length = length as u32;
    if received {
        info!(
            ctx,
            "underlay: a {}-byte UDP payload received on WireGuard port {} is no WireGuard message",
            length,
            port
        );
    } else {
        info!(
            ctx,
            "underlay: a {}-byte UDP payload sent from WireGuard port {} is no WireGuard message",
            length,
            port
        );
    }
}

/// A packet on a WireGuard interface whose IP header could not be read (truncated, or not
/// IPv4 or IPv6).
#[inline(always)]
pub(crate) fn no_ip_header(ctx: &TcContext, ifindex: u32, length: u32) {
    info!(ctx, "tunnel: a {}-byte packet on ifindex {} has no readable IP header", length, ifindex);
}
