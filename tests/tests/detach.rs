//! Nothing stays attached after the daemon exits: tcx links, clsact qdiscs, tc filters.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::process::Command;

use wgtel::lab::{Lab, LabOptions};
use wgtel_tests::{Daemon, tcx_programs};

fn tc(lab: &Lab, args: &[&str]) -> String {
    let output = Command::new("tc")
        .args(["-n", &lab.gateway().namespace])
        .args(args)
        .args(["dev", &lab.gateway().interface])
        .output()
        .expect("running tc");
    assert!(output.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What tc shows on the gateway's WireGuard interface: qdiscs, ingress and egress filters.
fn tc_state(lab: &Lab) -> (String, String, String) {
    (
        tc(lab, &["qdisc", "show"]),
        tc(lab, &["filter", "show", "ingress"]),
        tc(lab, &["filter", "show", "egress"]),
    )
}

fn lab() -> Lab {
    Lab::build(LabOptions { peers: 1, ..LabOptions::default() }).unwrap()
}

#[test]
fn after_sigterm_no_tcx_program_remains() {
    let lab = lab();
    let untouched = tc_state(&lab);
    let daemon = Daemon::start(&lab, &["--interval", "200ms"]);
    daemon.wait_for(std::time::Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    assert_eq!(tcx_programs(&lab), ["tunnel_ingress", "tunnel_egress"]);
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert_eq!(tcx_programs(&lab), Vec::<String>::new());
    assert_eq!(tc_state(&lab), untouched);
}

#[test]
fn after_sigkill_no_tcx_program_remains() {
    let lab = lab();
    let daemon = Daemon::start(&lab, &["--interval", "200ms"]);
    daemon.wait_for(std::time::Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    assert_eq!(tcx_programs(&lab).len(), 2);
    daemon.kill();
    // tcx links die with the last file descriptor that holds them.
    assert_eq!(tcx_programs(&lab), Vec::<String>::new());
}

#[test]
fn after_sigterm_no_clsact_qdisc_or_filter_remains() {
    let lab = lab();
    let untouched = tc_state(&lab);
    assert!(!untouched.0.contains("clsact"), "{untouched:?}");
    let daemon = Daemon::start(&lab, &["--interval", "200ms", "--attach-mode", "clsact"]);
    daemon.wait_for(std::time::Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    let (qdiscs, ingress, egress) = tc_state(&lab);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    assert!(ingress.contains("tunnel_ingress"), "{ingress}");
    assert!(egress.contains("tunnel_egress"), "{egress}");
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert_eq!(tc_state(&lab), untouched);
}

#[test]
fn filters_a_killed_clsact_run_left_are_removed_by_the_next_run() {
    let lab = lab();
    let untouched = tc_state(&lab);
    let args = ["--interval", "200ms", "--attach-mode", "clsact"];
    let daemon = Daemon::start(&lab, &args);
    daemon.wait_for(std::time::Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    daemon.kill();
    let (_, ingress, egress) = tc_state(&lab);
    assert!(
        ingress.contains("tunnel_ingress") && egress.contains("tunnel_egress"),
        "SIGKILL detached?"
    );

    let daemon = Daemon::start(&lab, &args);
    daemon.wait_for(std::time::Duration::from_secs(5), "the peer", |peers| peers.len() == 1);
    let (_, ingress, egress) = tc_state(&lab);
    let filters =
        |text: &str, program: &str| text.lines().filter(|line| line.contains(program)).count();
    assert_eq!(filters(&ingress, "tunnel_ingress"), 1, "{ingress}");
    assert_eq!(filters(&egress, "tunnel_egress"), 1, "{egress}");
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    // The clsact qdisc the killed run added stays (the second run found it); no filter does.
    let (_, ingress, egress) = tc_state(&lab);
    assert_eq!((ingress.as_str(), egress.as_str()), (untouched.1.as_str(), untouched.2.as_str()));
}
