//! The TOML configuration reader and its checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgtel::fuzzing::config_toml(data));
