//! What the tc programs share: packet reads, direct from the packet where the verifier allows
//! it, and the verdict that leaves a packet's fate to others.

use aya_ebpf::programs::TcContext;
use collector_common::packet::Packet;

/// `TC_ACT_UNSPEC`, which tcx calls `TCX_NEXT`: carry on with the next program, or with the
/// default action when there is none. wgtel observes; it never decides a packet's fate.
pub(crate) const PASS_ON: i32 = -1;

/// Reads the packet from `skb->data` on.
///
/// `__sk_buff.data` .. `data_end` is the skb's linear area (`skb->data` to
/// `skb->data + skb_headlen(skb)`, set by `bpf_compute_data_pointers` before a tc program
/// runs): bytes inside it are read directly, after a bounds check the verifier follows
/// (direct packet access, `may_access_direct_pkt_data` allows reads for `sched_cls`). Bytes
/// beyond it, in the paged fragments of a non-linear skb, are read through
/// `bpf_skb_load_bytes`, which walks the fragments: the same bytes either way, so the parsing
/// does not depend on how the skb is laid out. No program here calls a helper that changes
/// packet data (`bpf_helper_changes_pkt_data`), so `data` and `data_end` stay valid for the
/// whole run.
pub(crate) struct Skb<'a> {
    ctx: &'a TcContext,
    data: usize,
    data_end: usize,
}

impl<'a> Skb<'a> {
    #[inline(always)]
    pub(crate) fn new(ctx: &'a TcContext) -> Self {
        Self { ctx, data: ctx.data(), data_end: ctx.data_end() }
    }

    /// The program's context.
    #[inline(always)]
    pub(crate) fn context(&self) -> &'a TcContext {
        self.ctx
    }

    /// `skb->len`: the whole packet, paged fragments included.
    #[inline(always)]
    pub(crate) fn len(&self) -> u32 {
        self.ctx.len()
    }

    /// The `N` bytes at `offset`, always through `bpf_skb_load_bytes`: for an offset the
    /// verifier cannot bound (one computed from `gso_size`), which a direct read may not use
    /// ("math between pkt pointer and register with unbounded min value"). Such bytes lie past
    /// the first segment, in the paged fragments of a GSO or GRO skb, where the helper goes
    /// anyway.
    #[inline(always)]
    pub(crate) fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.ctx.load::<[u8; N]>(offset).ok()
    }

    /// `(gso_size, gso_segs)` of the skb: both 0 unless it is a GSO or GRO packet.
    /// `__sk_buff.gso_segs` exists since Linux 5.1, `gso_size` since 5.7.
    #[inline(always)]
    pub(crate) fn gso(&self) -> (u32, u32) {
        // SAFETY: the context pointer is the kernel's `__sk_buff` for this invocation.
        unsafe { ((*self.ctx.skb.skb).gso_size, (*self.ctx.skb.skb).gso_segs) }
    }
}

/// Bytes the bounds check covers at the least. LLVM turns a one-byte check,
/// `data + offset + 1 <= data_end`, into `data + offset < data_end`, from which the verifier
/// learns no range when the pointer's constant offset is 0 (offset 0, or one it knows only as
/// a bounded variable: `find_good_pkt_pointers` returns early for `off == 0` compared
/// right-open) and then rejects the read. A one-byte read of the linear area's last byte takes
/// the helper instead: the same byte.
const CHECKED_AT_LEAST: usize = 2;

impl Packet for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.data + offset;
        if start + N.max(CHECKED_AT_LEAST) <= self.data_end {
            // SAFETY: `start .. start + N` lies in the linear area, as checked just above.
            Some(unsafe { (start as *const [u8; N]).read_unaligned() })
        } else {
            self.ctx.load::<[u8; N]>(offset).ok()
        }
    }
}
