//! Types and packet parsing shared by wgtel's eBPF programs and its user-space collector.
//!
//! Everything here compiles for the BPF target (`no_std`, no allocation) and for the host,
//! so the parsing the kernel side does on every packet is covered by host unit tests on
//! crafted packets.
#![no_std]

pub mod latency;
pub mod maps;
pub mod packet;
pub mod underlay;
