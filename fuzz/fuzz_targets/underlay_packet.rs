//! collector-common's underlay packet parsers (a five-byte prefix: direction, layer 3, GSO).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgtel::fuzzing::underlay_packet(data));
