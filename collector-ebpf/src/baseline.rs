//! Attaches to: nothing. Empty programs of each type wgtel uses, so that `cargo xtask bench`
//! can subtract what `BPF_PROG_TEST_RUN` itself costs from the cost of the real programs.

use aya_ebpf::{
    macros::{classifier, raw_tracepoint},
    programs::{RawTracePointContext, TcContext},
};

use crate::skb::PASS_ON;

#[classifier]
pub fn baseline_classifier(_ctx: TcContext) -> i32 {
    PASS_ON
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn baseline_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}
