//! The wg-quick names file reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgtel::fuzzing::names_file(data));
