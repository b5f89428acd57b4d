//! One datagram of a kernel WireGuard device dump: secret wiping, decoding, peer merge.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgtel::fuzzing::netlink_dump(data));
