//! `--debug-ebpf`: the eBPF programs log what they could not parse into wgtel's log; without
//! the flag they log nothing.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::{Duration, Instant};

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::{Daemon, venv};

const WAIT: Duration = Duration::from_secs(15);

/// What the underlay program logs about a 3-byte datagram received on port 51820.
const LINE: &str =
    "underlay: a 3-byte UDP payload received on WireGuard port 51820 is no WireGuard message";

/// Starts wgtel with `args`, sends one 3-byte UDP datagram from peer1 to the gateway's listen
/// port, waits until the underlay program has seen it (the interface's unknown-source count is
/// 1), and returns the daemon's log.
fn log_after_a_3_byte_datagram(args: &[&str]) -> String {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    let mut all = vec!["--interval", "500ms"];
    all.extend(args);
    let daemon = Daemon::start(&lab, &all);
    let peer1 = lab.peer("peer1").unwrap();
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{}', 40000))\ns.sendto(b'abc', ('{}', 51820))\n",
        peer1.underlay_v4,
        lab.gateway().underlay_v4
    );
    let status = Lab::command(&peer1.namespace, venv().join("bin/python3"))
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "sending the datagram failed");
    let unknown = |daemon: &Daemon| daemon.interfaces()[0]["underlay_unknown_source"].as_u64();
    let deadline = Instant::now() + WAIT;
    while unknown(&daemon) != Some(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(unknown(&daemon), Some(1), "the underlay program never saw the datagram");
    // The ring buffer is read as soon as it holds a record: a second is plenty.
    std::thread::sleep(Duration::from_secs(1));
    let (_, log) = daemon.stop();
    log
}

/// The log lines that carry `needle`, without their timestamp and level prefix.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|line| line.contains(needle))
        .map(|line| line.split_once("] ").map_or(line, |(_, message)| message))
        .collect()
}

#[test]
fn with_debug_ebpf_a_datagram_that_is_no_wireguard_message_is_logged_once() {
    let log = log_after_a_3_byte_datagram(&["--debug-ebpf"]);
    assert_eq!(lines_with(&log, "underlay: "), [LINE], "log:\n{log}");
}

#[test]
fn without_debug_ebpf_the_programs_log_nothing() {
    let log = log_after_a_3_byte_datagram(&[]);
    assert_eq!(lines_with(&log, "underlay: "), Vec::<&str>::new(), "log:\n{log}");
    assert_eq!(lines_with(&log, "tunnel: "), Vec::<&str>::new(), "log:\n{log}");
}
