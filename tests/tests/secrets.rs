//! No private key stays in the daemon's memory: the UAPI replies that carry the gateway's
//! private key are wiped before they are freed, and so are the stack frames that decoded it.
//! The test reads every readable mapping of the running daemon (`/proc/PID/mem`) after many
//! collections and looks for each of the lab's private keys, in base64, hex (as the UAPI
//! writes it) and raw; the gateway's public key, which the daemon keeps, must be found there,
//! so the scan is known to see the daemon's data.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    fs,
    os::unix::fs::FileExt as _,
    thread,
    time::{Duration, Instant},
};

use wgtel::{
    lab::{Lab, LabOptions},
    wg::PublicKey,
};
use wgtel_tests::Daemon;

const INTERVAL: Duration = Duration::from_millis(200);

/// Every readable mapping of process `pid`: (description, bytes); mappings the kernel refuses
/// to read (`[vvar]` and the like) are left out.
fn readable_memory(pid: u32) -> Vec<(String, Vec<u8>)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut regions = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, permissions) = (fields[0], fields[1]);
        if !permissions.starts_with('r') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; usize::try_from(end - start).unwrap()];
        if mem.read_exact_at(&mut bytes, start).is_ok() {
            regions.push((line.to_owned(), bytes));
        }
    }
    regions
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[test]
fn no_private_key_of_the_lab_is_in_the_daemons_memory_after_collections() {
    let lab = Lab::build(LabOptions { peers: 2, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(INTERVAL * 50).unwrap();
    let daemon = Daemon::start(&lab, &["--interval", "200ms"]);
    daemon.wait_for(INTERVAL * 25, "both peers", |peers| peers.len() == 2);
    // Twenty collections, each with a reply holding the gateway's private key.
    let started = Instant::now();
    thread::sleep(INTERVAL * 20);
    let collected = started.elapsed();

    let mut forms = Vec::new();
    for (index, key) in lab.private_keys().iter().enumerate() {
        // 32 bytes in base64, as a public key is written.
        let raw = key.parse::<PublicKey>().unwrap().0.to_vec();
        let hex: String = raw.iter().map(|byte| format!("{byte:02x}")).collect();
        forms.push((index, "base64", key.as_bytes().to_vec()));
        forms.push((index, "hex", hex.into_bytes()));
        forms.push((index, "raw", raw));
    }
    let memory = readable_memory(daemon.pid());
    let total: usize = memory.iter().map(|(_, bytes)| bytes.len()).sum();
    assert!(memory.iter().any(|(line, _)| line.ends_with("[heap]") || line.ends_with("[stack]")));

    let public = lab.gateway().public_key.0;
    assert!(
        memory.iter().any(|(_, bytes)| contains(bytes, &public)),
        "the scan of {total} bytes did not even find the gateway's public key"
    );
    let mut found = Vec::new();
    for (index, form, needle) in &forms {
        for (line, bytes) in &memory {
            if contains(bytes, needle) {
                // Which key (by index), in which form, where: never the key itself.
                found.push(format!("key {index} ({form}) in {line}"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new(), "after {collected:?} of collections");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
