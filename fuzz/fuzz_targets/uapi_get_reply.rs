//! The UAPI `get=1` reply parser (the first byte picks the implementation).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wgtel::fuzzing::uapi_get_reply(data));
