//! What the tc programs share: packet reads through `bpf_skb_load_bytes` and the verdict that
//! leaves a packet's fate to others.

use aya_ebpf::programs::TcContext;
use collector_common::packet::Packet;

/// `TC_ACT_UNSPEC`, which tcx calls `TCX_NEXT`: carry on with the next program, or with the
/// default action when there is none. wgtel observes; it never decides a packet's fate.
pub(crate) const PASS_ON: i32 = -1;

/// Reads the packet through `bpf_skb_load_bytes`, from `skb->data` on.
pub(crate) struct Skb<'a>(pub(crate) &'a TcContext);

impl Packet for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}
