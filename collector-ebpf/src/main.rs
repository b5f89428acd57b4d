//! wgtel's eBPF programs. One file per hook; the maps they share with the collector are in
//! `maps.rs`, their key and value types in `collector-common`.
//!
//! The oldest kernel they load on is 5.10 (`cargo xtask vm-test` boots Debian's): everything
//! they use came by then: global data for the collector's layout constants (`.rodata`, 5.2),
//! `__sk_buff.gso_segs` (5.1), `bpf_probe_read_kernel` (5.5), global functions in BTF (5.6),
//! and only kinds of BTF that 5.10 knows. tcx (6.6) is the collector's choice per kernel, and
//! only the `kfree_skb` program reads the tracepoint's reason (5.17): `kfree_skb_no_reason`
//! serves older kernels (`drops.rs`).
//!
//! On the host this target is an empty `main`, so `cargo clippy --all-targets` covers the
//! workspace without the BPF toolchain; aya-build compiles the real programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod baseline;
#[cfg(target_arch = "bpf")]
mod debug;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod latency;
#[cfg(target_arch = "bpf")]
mod map_errors;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod peers;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod tunnel;
#[cfg(target_arch = "bpf")]
mod underlay;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach this: there is no unwinding in BPF.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
