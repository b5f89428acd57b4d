//! `--netns`: wgtel, running in a lab's gateway namespace, watches WireGuard in other network
//! namespaces. Two tunnels whose watched ends are namespaces with a WireGuard interface of the
//! same name and the same index (and the same addresses) each get their own exact counts, with
//! the namespace as `wireguard_netns`, and the kernel's drops on the right one; bulk TCP
//! through one matches its stacks' own counters; a namespace that loses its name is released
//! (its series gone, its programs detached), one created later is picked up with `all`; the
//! label reaches `/metrics`, the API and OTLP; on exit nothing stays attached anywhere.
//!
//! Each tunnel's wireguard-go keeps its UAPI socket in a tmpfs of its own mount namespace (see
//! `wgtel_tests::netns`), reachable only through `/proc/PID/root`, as in a container. The `all`
//! run is held to its own interfaces with `--interface`, so that it never attaches to the
//! namespaces of tests running beside it.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::time::Duration;

use wgtel::{
    export::api::ApiPeer,
    lab::{Lab, LabOptions},
};
use wgtel_tests::{
    Daemon, ROTEL_GRPC, Rotel,
    netns::{Tunnel, tc_state_of, tcx_programs_of},
    settled,
};

const WAIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_millis(1000);

fn lab() -> Lab {
    Lab::build(LabOptions { peers: 0, ..LabOptions::default() }).unwrap()
}

/// One traffic test at a time: the bulk run of one on two cores makes the other's pings miss.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A name for the tunnels' interface that no other test's lab uses (labs number themselves
/// uniquely while they live).
fn interface(lab: &Lab) -> String {
    format!("wgns{}", lab.number())
}

/// The far peer of `tunnel` as wgtel lists it: (rx, tx) tunnel packets, if listed with the
/// tunnel's namespace's name as its `netns`.
fn counts(peers: &[ApiPeer], tunnel: &Tunnel) -> Option<(u64, u64)> {
    labelled(peers, tunnel, &tunnel.near)
}

/// [`counts`] with `label` as the `netns` expected.
fn labelled(peers: &[ApiPeer], tunnel: &Tunnel, label: &str) -> Option<(u64, u64)> {
    let peer = peers.iter().find(|peer| peer.public_key == tunnel.far_key)?;
    assert_eq!(peer.netns.as_deref(), Some(label), "{peer:?}");
    assert_eq!(peer.interface, tunnel.interface);
    Some((peer.rx_packets, peer.tx_packets))
}

/// The far peer of `tunnel`'s WireGuard messages on the underlay: (received, sent)
/// `transport_data` messages.
fn transport_data(peers: &[ApiPeer], tunnel: &Tunnel) -> Option<(u64, u64)> {
    let peer = peers.iter().find(|peer| peer.public_key == tunnel.far_key)?;
    let data = peer.messages.get("transport_data")?;
    Some((data.receive, data.transmit))
}

/// `/api/v1/interfaces` entries of `namespace`: (name, ifindex).
fn interfaces_in(daemon: &Daemon, namespace: &str) -> Vec<(String, u64)> {
    daemon
        .interfaces()
        .as_array()
        .unwrap()
        .iter()
        .filter(|interface| interface["netns"] == namespace)
        .map(|interface| {
            (interface["name"].as_str().unwrap().to_owned(), interface["ifindex"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn two_namespaces_with_the_same_interface_and_index_count_apart() {
    // A test that failed while holding the lock does not fail the others.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = lab();
    let name = interface(&lab);
    let (b, c) = (Tunnel::new(&lab, "b", &name), Tunnel::new(&lab, "c", &name));
    let daemon = Daemon::start(
        &lab,
        &["--interval", "200ms", "--netns", &b.near, "--netns", &c.near, "--interface", &name],
    );
    daemon.wait_for(WAIT, "both far peers", |peers| {
        counts(peers, &b).is_some() && counts(peers, &c).is_some()
    });
    let (in_b, in_c) = (interfaces_in(&daemon, &b.near), interfaces_in(&daemon, &c.near));
    assert_eq!(in_b.len(), 1, "{in_b:?}");
    assert_eq!(in_b, in_c, "the same interface name and index in both namespaces");
    assert_eq!(in_b[0].0, name);

    let messages = |peers: &[ApiPeer]| transport_data(peers, &b).zip(transport_data(peers, &c));
    let (before, messages_before) = settled(&daemon, SETTLE, |peers| {
        Some(((counts(peers, &b)?, counts(peers, &c)?), messages(peers)?))
    })
    .unwrap();
    assert_eq!(b.ping(20), 20);
    assert_eq!(c.ping(30), 30);
    let ((b_rx, b_tx), (c_rx, c_tx)) = before;
    let expected = ((b_rx + 20, b_tx + 20), (c_rx + 30, c_tx + 30));
    daemon.wait_for(WAIT, "20 packets each way in b, 30 in c", |peers| {
        counts(peers, &b).zip(counts(peers, &c)) == Some(expected)
    });
    let settled_counts =
        settled(&daemon, SETTLE, |peers| Some((counts(peers, &b)?, counts(peers, &c)?))).unwrap();
    assert_eq!(settled_counts, expected, "nothing more was counted");
    // On each namespace's underlay NIC (u0, attached from inside it too): one message each.
    let ((b_in, b_out), (c_in, c_out)) = messages_before;
    let ((b_in2, b_out2), (c_in2, c_out2)) = messages(&daemon.peers()).unwrap();
    assert_eq!(
        (b_in2 - b_in, b_out2 - b_out, c_in2 - c_in, c_out2 - c_out),
        (20, 20, 30, 30),
        "transport data messages on the underlay"
    );

    // The label on /metrics, on exactly the right series.
    let metrics = daemon.get("/metrics");
    for (tunnel, (rx, tx)) in [(&b, expected.0), (&c, expected.1)] {
        for (direction, value) in [("receive", rx), ("transmit", tx)] {
            let line = format!(
                "wireguard_peer_packets_total{{wireguard_interface=\"{name}\",wireguard_netns=\"{}\",\
                 wireguard_peer_public_key=\"{}\",network_io_direction=\"{direction}\"}} {value}",
                tunnel.near, tunnel.far_key
            );
            assert_eq!(metrics.lines().filter(|l| *l == line).count(), 1, "{line}\n{metrics}");
        }
    }

    // b's firewall drops 10 echo requests: kernel drops, tied to b's peer by b's own kfree_skb
    // program; c's peer (the same interface index, the same peer id in its own maps) has none.
    b.drop_echo_requests();
    assert_eq!(b.ping(10), 0);
    let drops = |peers: &[ApiPeer], tunnel: &Tunnel| {
        peers.iter().find(|peer| peer.public_key == tunnel.far_key).and_then(|p| p.drops.clone())
    };
    let netfilter = std::collections::BTreeMap::from([("NETFILTER_DROP".to_owned(), 10)]);
    let expected = ((expected.0.0 + 10, expected.0.1), expected.1);
    let peers = daemon.wait_for(WAIT, "10 drops in b", |peers| {
        drops(peers, &b).as_ref() == Some(&netfilter)
            && counts(peers, &b).zip(counts(peers, &c)) == Some(expected)
    });
    assert_eq!(drops(&peers, &c), Some(std::collections::BTreeMap::new()));

    // Bulk TCP through b: the tunnel's packets are what the two stacks sent, but those the
    // kernel dropped before WireGuard saw them (far's TUN queue, near's UDP receive buffer).
    let truth = |b: &Tunnel| {
        let sent = (Tunnel::tcp_transmitted(&b.near), Tunnel::tcp_transmitted(&b.far));
        (sent, b.far_queue_drops(), b.near_rcvbuf_errors())
    };
    let start = truth(&b);
    let received = b.iperf3(2);
    let end = truth(&b);
    assert!(received > 10_000_000, "iperf3 moved {received} bytes");
    let (near_sent, far_sent) = (end.0.0 - start.0.0, end.0.1 - start.0.1);
    let lost_before_wireguard = (end.1 - start.1) + (end.2 - start.2);
    eprintln!(
        "bulk through b: near sent {near_sent}, far sent {far_sent}, lost before WireGuard \
         {lost_before_wireguard}"
    );
    assert!(far_sent > 5_000, "{far_sent} segments from far");
    let rx = expected.0.0 + far_sent - lost_before_wireguard;
    let bulk = ((rx, expected.0.1 + near_sent), expected.1);
    daemon.wait_for(WAIT, "the bulk run's segments in b, nothing more in c", |peers| {
        counts(peers, &b).zip(counts(peers, &c)) == Some(bulk)
    });

    // b loses its name: released, its programs detached; c goes on counting.
    assert_eq!(tcx_programs_of(b.near_pid(), &name), ["tunnel_ingress", "tunnel_egress"]);
    b.unname_near();
    daemon.wait_for(WAIT, "b's series gone", |peers| {
        !peers.iter().any(|peer| peer.public_key == b.far_key)
    });
    assert_eq!(interfaces_in(&daemon, &b.near), Vec::new());
    assert_eq!(tcx_programs_of(b.near_pid(), &name), Vec::<String>::new());
    assert_eq!(c.ping(5), 5);
    let (c_rx, c_tx) = bulk.1;
    daemon.wait_for(WAIT, "5 more in c", |peers| counts(peers, &c) == Some((c_rx + 5, c_tx + 5)));

    assert_eq!(tcx_programs_of(c.near_pid(), &name), ["tunnel_ingress", "tunnel_egress"]);
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert_eq!(tcx_programs_of(c.near_pid(), &name), Vec::<String>::new());
    assert!(log.contains(&format!("network namespace {} is gone: released", b.near)), "{log}");
}

#[test]
fn all_picks_up_a_namespace_created_later_and_detaches_everywhere_on_exit() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = lab();
    let name = interface(&lab);
    // b has no name: `all` finds it through its wireguard-go, as a container's.
    let mut b = Tunnel::new(&lab, "b", &name);
    b.unname_near();
    let b_label = format!("pid:{}", b.near_pid());
    let rotel = Rotel::start(&lab);
    let endpoint = format!("http://{ROTEL_GRPC}");
    let daemon = Daemon::start(
        &lab,
        &[
            "--interval",
            "200ms",
            "--netns",
            "all",
            "--interface",
            &name,
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    daemon.wait_for(WAIT, "b's far peer", |peers| labelled(peers, &b, &b_label).is_some());
    let c = Tunnel::new(&lab, "c", &name);
    daemon.wait_for(WAIT, "c's far peer", |peers| counts(peers, &c).is_some());
    let before = settled(&daemon, SETTLE, |peers| counts(peers, &c)).unwrap();
    assert_eq!(c.ping(25), 25);
    daemon.wait_for(WAIT, "25 each way in c", |peers| {
        counts(peers, &c) == Some((before.0 + 25, before.1 + 25))
    });
    for tunnel in [&b, &c] {
        assert_eq!(tcx_programs_of(tunnel.near_pid(), &name), ["tunnel_ingress", "tunnel_egress"]);
    }
    assert_eq!(interfaces_in(&daemon, &b_label), interfaces_in(&daemon, &c.near));
    // Over OTLP, c's far peer carries c's namespace.
    let attributes = format!(
        "-> wireguard.netns: Str({})\n     -> wireguard.peer.public_key: Str({})",
        c.near, c.far_key
    );
    let log = rotel.wait_for(WAIT, &[&attributes]);
    assert!(log.contains(&attributes), "{log}");
    // b's last process exits: its namespace is gone, and so are its series.
    b.stop_near();
    daemon.wait_for(WAIT, "b's series gone", |peers| {
        !peers.iter().any(|peer| peer.public_key == b.far_key)
    });
    assert_eq!(interfaces_in(&daemon, &b_label), Vec::new());
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains(&format!("network namespace {b_label} is gone: released")), "{log}");
    assert_eq!(tcx_programs_of(c.near_pid(), &name), Vec::<String>::new());
}

#[test]
fn clsact_filters_in_another_namespace_count_and_are_removed_on_release_and_exit() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = lab();
    let name = interface(&lab);
    let (b, c) = (Tunnel::new(&lab, "b", &name), Tunnel::new(&lab, "c", &name));
    let untouched = tc_state_of(b.near_pid(), &name);
    assert!(!untouched.0.contains("clsact"), "{untouched:?}");
    let daemon = Daemon::start(
        &lab,
        &[
            "--interval",
            "200ms",
            "--attach-mode",
            "clsact",
            "--netns",
            &b.near,
            "--netns",
            &c.near,
            "--interface",
            &name,
        ],
    );
    daemon.wait_for(WAIT, "both far peers", |peers| {
        counts(peers, &b).is_some() && counts(peers, &c).is_some()
    });
    for tunnel in [&b, &c] {
        let (qdiscs, ingress, egress) = tc_state_of(tunnel.near_pid(), &name);
        assert!(qdiscs.contains("clsact"), "{qdiscs}");
        let filters =
            |text: &str, program: &str| text.lines().filter(|l| l.contains(program)).count();
        assert_eq!(filters(&ingress, "tunnel_ingress"), 1, "{ingress}");
        assert_eq!(filters(&egress, "tunnel_egress"), 1, "{egress}");
    }
    let before = settled(&daemon, SETTLE, |peers| counts(peers, &b)).unwrap();
    assert_eq!(b.ping(15), 15);
    daemon.wait_for(WAIT, "15 each way in b", |peers| {
        counts(peers, &b) == Some((before.0 + 15, before.1 + 15))
    });
    // Released when its name goes: its filters go with it (removed from inside it).
    b.unname_near();
    daemon.wait_for(WAIT, "b's series gone", |peers| {
        !peers.iter().any(|peer| peer.public_key == b.far_key)
    });
    let (_, ingress, egress) = tc_state_of(b.near_pid(), &name);
    assert_eq!((ingress.as_str(), egress.as_str()), (untouched.1.as_str(), untouched.2.as_str()));
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert_eq!(tc_state_of(c.near_pid(), &name), untouched);
}

#[test]
fn a_namespace_that_does_not_exist_ends_the_start() {
    let lab = lab();
    let daemon = Daemon::spawn(&lab, &["--netns", "wgtel-no-such-namespace"], &[]);
    let (status, log) = daemon.exit_status(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "network namespace wgtel-no-such-namespace: cannot open \
             /run/netns/wgtel-no-such-namespace: No such file or directory"
        ),
        "{log}"
    );
}
