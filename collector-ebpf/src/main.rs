//! wgtel's eBPF programs. One file per hook; the maps they share with the collector are in
//! `maps.rs`, their key and value types in `collector-common`.
//!
//! On the host this target is an empty `main`, so `cargo clippy --all-targets` covers the
//! workspace without the BPF toolchain; aya-build compiles the real programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod baseline;
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
