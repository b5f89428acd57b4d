//! Least privilege, proven: `wgtel run` holding only the three capabilities the README lists
//! counts exactly, and without any one of them it refuses to start, naming the one it lacks;
//! with `--netns` the same for the two more it needs (`CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`).
//!
//! Userspace WireGuard's UAPI sockets are `0700 root` (wireguard-go makes them so, and exits
//! when a socket's attributes change: a `chown` ends it), so the daemon that reads them runs
//! as uid 0 with its bounding set cut to the three, as systemd's `CapabilityBoundingSet=`
//! does; a non-root user with them as ambient capabilities reads the kernel module only.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{fs, time::Duration};

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::{Daemon, netns::Tunnel, settled, tcx_programs};

const WAIT: Duration = Duration::from_secs(10);
/// `nobody`.
const NOBODY: &str = "65534";
const ALL: [&str; 3] = ["bpf", "net_admin", "perfmon"];
/// What `--netns` needs: [`ALL`] and two more.
const NETNS: [&str; 5] = ["bpf", "net_admin", "perfmon", "sys_admin", "sys_ptrace"];

/// `setpriv` running the rest with exactly `capabilities` (names as setpriv takes them,
/// without `cap_`): as `user` with them ambient (systemd's `User=` with
/// `AmbientCapabilities=`), or as root with the bounding set cut to them (systemd's
/// `CapabilityBoundingSet=`: root's permitted set is its bounding set after `execve`).
fn setpriv(user: Option<&str>, capabilities: &[&str]) -> Vec<String> {
    let set: String = capabilities.iter().map(|cap| format!(",+{cap}")).collect();
    let mut command = vec!["setpriv".to_owned()];
    if let Some(user) = user {
        command.extend([
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps=-all{set}"),
            format!("--ambient-caps=-all{set}"),
        ]);
    }
    command.extend([format!("--bounding-set=-all{set}"), "--".to_owned()]);
    command
}

fn start(lab: &Lab, wrapper: &[String]) -> Daemon {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Daemon::start_wrapped(lab, &wrapper, &["--interval", "500ms"])
}

fn lab() -> Lab {
    let lab = Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap();
    lab.wait_for_handshakes(WAIT).unwrap();
    lab
}

/// The effective capability set of `pid`, from `/proc/PID/status` (hexadecimal).
fn effective_capabilities(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|line| line.strip_prefix("CapEff:")).unwrap();
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn the_three_capabilities_suffice_to_count_exactly() {
    let lab = lab();
    let daemon = start(&lab, &setpriv(None, &ALL));
    // CAP_NET_ADMIN is bit 12, CAP_PERFMON 38, CAP_BPF 39: nothing else.
    assert_eq!(effective_capabilities(daemon.pid()), (1 << 12) | (1 << 38) | (1 << 39));

    let peer = lab.peer("peer1").unwrap();
    let key = peer.public_key.to_string();
    let counts = |peers: &[wgtel::export::api::ApiPeer]| {
        peers.iter().find(|p| p.public_key == key).map(|p| (p.rx_packets, p.tx_packets))
    };
    daemon.wait_for(WAIT, "peer1 listed", |peers| counts(peers).is_some());
    let (rx, tx) = settled(&daemon, Duration::from_millis(1200), counts).unwrap();
    assert_eq!(lab.ping(lab.gateway(), peer.tunnel_v4.into(), 50).unwrap(), 50);
    daemon.wait_for(WAIT, "50 packets each way", |peers| counts(peers) == Some((rx + 50, tx + 50)));
    // Nothing was turned off for want of a privilege: drop reasons and tcx are there.
    let interfaces = daemon.interfaces();
    assert_eq!(interfaces[0]["unavailable"], serde_json::json!([]), "{interfaces:#}");
    let peers = daemon.peers();
    let drops = &peers.iter().find(|p| p.public_key == key).unwrap().drops;
    assert_eq!(drops, &Some(Default::default()), "drops counted (CAP_PERFMON), and none");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("Operation not permitted"), "{log}");
}

#[test]
fn without_any_one_of_them_it_refuses_to_start_and_names_it() {
    let lab = lab();
    for (dropped, name) in ALL.iter().zip(["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]) {
        let rest: Vec<&str> = ALL.iter().copied().filter(|cap| cap != dropped).collect();
        let wrapper = setpriv(Some(NOBODY), &rest);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::spawn_wrapped(&lab, &wrapper, &["--interval", "500ms"], &[]);
        let (status, log) = daemon.exit_status(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "without {name}: {log}");
        let lacks: Vec<&str> = log.lines().filter(|line| line.contains("lacks")).collect();
        assert_eq!(lacks.len(), 1, "one line names what is missing: {log}");
        assert!(lacks[0].contains(&format!("lacks {name} (")), "without {name}: {log}");
        for other in ["CAP_BPF (", "CAP_NET_ADMIN (", "CAP_PERFMON ("] {
            if !other.starts_with(name) {
                assert!(!lacks[0].contains(&format!("lacks {other}")), "{log}");
            }
        }
    }
    // Nothing was attached by the runs that refused.
    assert_eq!(tcx_programs(&lab), Vec::<String>::new());
}

#[test]
fn a_user_that_cannot_open_a_uapi_socket_is_told_why_and_what_to_do() {
    let lab = lab();
    let daemon = start(&lab, &setpriv(Some(NOBODY), &ALL));
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    assert!(status.lines().any(|line| line.starts_with("Uid:\t65534\t65534")), "{status}");
    assert!(daemon.peers().is_empty(), "nobody reads no userspace interface");
    let socket = format!("/var/run/wireguard/{}.sock", lab.gateway().interface);
    let expected = format!(
        "interface {}: no permission to open the UAPI socket {socket} (userspace WireGuard makes \
         it 0700 root: run wgtel as root with its capabilities cut to CAP_BPF CAP_NET_ADMIN \
         CAP_PERFMON, as the README's systemd unit does)",
        lab.gateway().interface
    );
    let log = daemon.log();
    assert_eq!(log.lines().filter(|line| line.ends_with(&expected)).count(), 1, "{log}");
}

#[test]
fn netns_needs_sys_admin_and_sys_ptrace_and_counts_exactly_with_them() {
    let lab = Lab::build(LabOptions { peers: 0, ..LabOptions::default() }).unwrap();
    let name = format!("wgpv{}", lab.number());
    let tunnel = Tunnel::new(&lab, "p", &name);
    let args = ["--interval", "500ms", "--netns", &tunnel.near, "--interface", &name];
    for (dropped, missing, other) in [
        ("sys_admin", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"),
        ("sys_ptrace", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"),
    ] {
        let rest: Vec<&str> = NETNS.iter().copied().filter(|cap| *cap != dropped).collect();
        let wrapper = setpriv(None, &rest);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::spawn_wrapped(&lab, &wrapper, &args, &[]);
        let (status, log) = daemon.exit_status(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "without {missing}: {log}");
        let lacks: Vec<&str> = log.lines().filter(|line| line.contains("lacks")).collect();
        assert_eq!(lacks.len(), 1, "one line names what is missing: {log}");
        assert!(lacks[0].contains(&format!("--netns lacks {missing} (")), "{log}");
        assert!(!lacks[0].contains(other), "{log}");
    }
    let wrapper = setpriv(None, &NETNS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(&lab, &wrapper, &args);
    // CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        effective_capabilities(daemon.pid()),
        (1 << 12) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39)
    );
    let counts = |peers: &[wgtel::export::api::ApiPeer]| {
        let peer = peers.iter().find(|p| p.public_key == tunnel.far_key)?;
        assert_eq!(peer.netns.as_deref(), Some(tunnel.near.as_str()));
        Some((peer.rx_packets, peer.tx_packets))
    };
    daemon.wait_for(WAIT, "the far peer listed", |peers| counts(peers).is_some());
    let (rx, tx) = settled(&daemon, Duration::from_millis(1200), counts).unwrap();
    assert_eq!(tunnel.ping(40), 40);
    daemon.wait_for(WAIT, "40 packets each way", |peers| counts(peers) == Some((rx + 40, tx + 40)));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("Permission denied"), "{log}");
}
