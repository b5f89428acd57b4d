//! A WireGuard tunnel between two network namespaces of its own, for the `--netns` tests: `near`
//! (the one wgtel watches) and `far` (its peer), joined by a veth pair. Each side's wireguard-go
//! runs in a mount namespace of its own with a tmpfs on `/run/wireguard`, as in a container, so
//! that tunnels in several namespaces can share an interface name; its UAPI socket is reachable
//! only through `/proc/PID/root`.
//!
//! Every tunnel uses the same addresses (underlay 198.18.255.1 near, .2 far; tunnel
//! 198.19.255.1 and .2): its namespaces reach nothing else.

use std::{
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use wgtel::lab::{Implementation, Lab, stop_child};

/// The near side's tunnel address.
pub const NEAR_TUNNEL: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const FAR_TUNNEL: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
const NEAR_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
const FAR_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
const PORT: &str = "51820";
const IPERF3_PORT: &str = "5201";

/// A tunnel between two namespaces; dropping it stops its processes and deletes its namespaces.
#[derive(Debug)]
pub struct Tunnel {
    /// The watched namespace's name (under `/run/netns`).
    pub near: String,
    /// The peer's namespace.
    pub far: String,
    /// The WireGuard interface, the same name on both sides.
    pub interface: String,
    /// The far side's public key: the peer wgtel sees in `near`.
    pub far_key: String,
    /// The wireguard-go processes.
    processes: Vec<Child>,
    /// The near side's wireguard-go.
    near_pid: u32,
}

/// Runs `command`, failing the test with its stderr when it fails; its stdout.
fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A private key and its public key (the private key never leaves this process but to `wg`'s
/// standard input).
fn keys() -> (String, String) {
    let private = run(Command::new("wg").arg("genkey")).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    child.stdin.take().expect("stdin").write_all(private.as_bytes()).expect("writing the key");
    let output = child.wait_with_output().expect("wg pubkey");
    assert!(output.status.success(), "wg pubkey failed");
    (private, String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Tunnel {
    /// Builds the namespaces `wgtel-L-<tag>n` and `wgtel-L-<tag>f` (L the lab's number, so the
    /// lab sweeps them if the test dies) and a handshaken tunnel over `interface` between them.
    pub fn new(lab: &Lab, tag: &str, interface: &str) -> Self {
        let near = format!("wgtel-{}-{tag}n", lab.number());
        let far = format!("wgtel-{}-{tag}f", lab.number());
        let mut tunnel = Self {
            near: near.clone(),
            far: far.clone(),
            interface: interface.to_owned(),
            far_key: String::new(),
            processes: Vec::new(),
            near_pid: 0,
        };
        for namespace in [&near, &far] {
            ip(&["netns", "add", namespace]);
            ip(&["-n", namespace, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &far, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", &near,
        ]);
        let (near_private, near_public) = keys();
        let (far_private, far_public) = keys();
        tunnel.far_key.clone_from(&far_public);
        let sides = [
            (
                &near,
                NEAR_UNDERLAY,
                NEAR_TUNNEL,
                near_private,
                &far_public,
                FAR_TUNNEL,
                FAR_UNDERLAY,
            ),
            (&far, FAR_UNDERLAY, FAR_TUNNEL, far_private, &near_public, NEAR_TUNNEL, NEAR_UNDERLAY),
        ];
        for (namespace, underlay, address, private, peer, peer_tunnel, peer_underlay) in sides {
            ip(&["-n", namespace, "addr", "add", &format!("{underlay}/24"), "dev", "u0"]);
            ip(&["-n", namespace, "link", "set", "u0", "up"]);
            let pid = tunnel.start_wireguard(lab, namespace);
            if *namespace == near {
                tunnel.near_pid = pid;
            }
            let mut wg = Command::new("nsenter");
            wg.args(["-t", &pid.to_string(), "-m", "-n", "wg", "set", interface]);
            wg.args(["private-key", "/dev/stdin", "listen-port", PORT, "peer", peer]);
            wg.args(["allowed-ips", &format!("{peer_tunnel}/32")]);
            wg.args(["endpoint", &format!("{peer_underlay}:{PORT}")]);
            let mut child = wg.stdin(Stdio::piped()).spawn().expect("wg set");
            child.stdin.take().expect("stdin").write_all(private.as_bytes()).expect("the key");
            assert!(child.wait().expect("wg set").success(), "wg set in {namespace}");
            ip(&["-n", namespace, "addr", "add", &format!("{address}/24"), "dev", interface]);
            ip(&["-n", namespace, "link", "set", interface, "mtu", "1420", "up"]);
        }
        // The handshake, so that the counts the tests compare start from a working tunnel.
        assert_eq!(tunnel.ping(1), 1, "the tunnel {near} - {far} works");
        tunnel
    }

    /// Starts wireguard-go for the interface in `namespace` inside a mount namespace of its own
    /// (`ip netns exec` makes one) with a fresh tmpfs on `/run/wireguard`; waits for its socket.
    fn start_wireguard(&mut self, lab: &Lab, namespace: &str) -> u32 {
        let program = Implementation::WireguardGo.program().expect("wireguard-go");
        let log = lab.dir().join(format!("{namespace}.log"));
        let log = File::create(&log).expect("creating the wireguard-go log");
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "sh", "-c"])
            .arg(r#"mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 wgtel /run/wireguard && exec "$0" -f "$1""#)
            .arg(program)
            .arg(&self.interface)
            .env("LOG_LEVEL", "error")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log)
            .spawn()
            .expect("starting wireguard-go");
        let pid = child.id();
        self.processes.push(child);
        let socket =
            PathBuf::from(format!("/proc/{pid}/root/run/wireguard/{}.sock", self.interface));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            let child = self.processes.last_mut().expect("just pushed");
            assert!(
                child.try_wait().expect("wait").is_none(),
                "wireguard-go in {namespace} exited"
            );
            assert!(Instant::now() < deadline, "no UAPI socket in {namespace} after 10 s");
            thread::sleep(Duration::from_millis(20));
        }
        pid
    }

    /// The near side's wireguard-go: its process id.
    pub fn near_pid(&self) -> u32 {
        self.near_pid
    }

    /// Stops the near side's wireguard-go (by its pid).
    pub fn stop_near(&mut self) {
        if let Some(index) = self.processes.iter().position(|child| child.id() == self.near_pid) {
            stop_child(self.processes.remove(index));
        }
    }

    /// Sends `count` pings from far to near through the tunnel, 10 ms apart; how many were
    /// answered (ping fails when none is: its summary line still counts them).
    pub fn ping(&self, count: u32) -> u32 {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.far, "ping", "-c", &count.to_string(), "-i", "0.01"])
            .args(["-W", "2", &NEAR_TUNNEL.to_string()])
            .output()
            .expect("running ping");
        let output = String::from_utf8_lossy(&output.stdout);
        let line = output
            .lines()
            .find(|line| line.contains(" packets transmitted, "))
            .unwrap_or_else(|| panic!("no ping summary: {output}"));
        let received = line.split(", ").nth(1).and_then(|part| part.strip_suffix(" received"));
        received.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    /// Counter `name` of the `protocol` lines (`Tcp:`, `Udp:`) of `/proc/net/snmp` in
    /// `namespace`.
    fn snmp(namespace: &str, protocol: &str, name: &str) -> u64 {
        let snmp =
            run(Command::new("ip").args(["netns", "exec", namespace, "cat", "/proc/net/snmp"]));
        let mut lines = snmp.lines().filter(|line| line.starts_with(protocol));
        let (names, values) = (lines.next().expect("header"), lines.next().expect("values"));
        let index = names.split_whitespace().position(|field| field == name).expect(name);
        values.split_whitespace().nth(index).and_then(|v| v.parse().ok()).expect(name)
    }

    /// TCP segments the stack of `namespace` sent, new and retransmitted (`OutSegs` +
    /// `RetransSegs`).
    pub fn tcp_transmitted(namespace: &str) -> u64 {
        Self::snmp(namespace, "Tcp:", "OutSegs") + Self::snmp(namespace, "Tcp:", "RetransSegs")
    }

    /// WireGuard datagrams the near side's UDP receive buffer had no room for (`RcvbufErrors`):
    /// dropped before WireGuard saw them.
    pub fn near_rcvbuf_errors(&self) -> u64 {
        Self::snmp(&self.near, "Udp:", "RcvbufErrors")
    }

    /// Packets dropped from the far side's TUN transmit queue before its wireguard-go read
    /// them (`ip -s` statistics).
    pub fn far_queue_drops(&self) -> u64 {
        let json = run(Command::new("ip")
            .args(["-n", &self.far, "-j", "-s", "link", "show"])
            .args(["dev", &self.interface]));
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
        links[0]["stats64"]["tx"]["dropped"].as_u64().expect("tx dropped")
    }

    /// An iperf3 TCP run of `seconds` from far to near through the tunnel; the bytes the
    /// receiver read.
    pub fn iperf3(&self, seconds: u32) -> u64 {
        let mut server = Command::new("ip")
            .args(["netns", "exec", &self.near, "iperf3", "-s", "-1", "-p", IPERF3_PORT])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s");
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{IPERF3_PORT}");
        while run(Command::new("ip").args(["netns", "exec", &self.near, "ss", "-Hltn", &filter]))
            .is_empty()
        {
            assert!(Instant::now() < deadline, "iperf3 never listened");
            thread::sleep(Duration::from_millis(50));
        }
        let report = run(Command::new("ip").args(["netns", "exec", &self.far, "iperf3"]).args([
            "-c",
            &NEAR_TUNNEL.to_string(),
            "-p",
            IPERF3_PORT,
            "-t",
            &seconds.to_string(),
            "--json",
        ]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                stop_child(server);
                panic!("iperf3 -s -1 did not exit after its test");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let report: serde_json::Value = serde_json::from_str(&report).expect("iperf3 --json");
        report["end"]["sum_received"]["bytes"].as_u64().expect("received bytes")
    }

    /// Makes near's firewall drop every echo request from far (an nft table of its own).
    pub fn drop_echo_requests(&self) {
        for rule in [
            "add table inet wgteltest".to_owned(),
            "add chain inet wgteltest input { type filter hook input priority 0 ; }".to_owned(),
            format!(
                "add rule inet wgteltest input ip saddr {FAR_TUNNEL} icmp type echo-request drop"
            ),
        ] {
            run(Command::new("ip").args(["netns", "exec", &self.near, "nft", &rule]));
        }
    }

    /// Removes the near namespace's name; its wireguard-go keeps the namespace alive.
    pub fn unname_near(&self) {
        ip(&["netns", "delete", &self.near]);
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for child in self.processes.drain(..) {
            stop_child(child);
        }
        for namespace in [&self.near, &self.far] {
            let _absent = Command::new("ip").args(["netns", "delete", namespace]).output();
        }
    }
}

/// What tc shows on `interface` in the network namespace of process `pid`: qdiscs, ingress
/// filters, egress filters.
pub fn tc_state_of(pid: u32, interface: &str) -> (String, String, String) {
    let tc = |args: &[&str]| {
        run(Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "tc"])
            .args(args)
            .args(["dev", interface]))
    };
    (tc(&["qdisc", "show"]), tc(&["filter", "show", "ingress"]), tc(&["filter", "show", "egress"]))
}

/// The tcx programs on `interface` in the network namespace of process `pid`, ingress then
/// egress.
pub fn tcx_programs_of(pid: u32, interface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let handle = File::open(format!("/proc/{pid}/ns/net")).expect("the process's namespace");
    thread::scope(|scope| {
        scope
            .spawn(|| {
                move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network))
                    .expect("entering the namespace");
                [TcAttachType::Ingress, TcAttachType::Egress]
                    .into_iter()
                    .flat_map(|direction| {
                        let (_revision, programs) =
                            SchedClassifier::query_tcx(interface, direction).expect("querying tcx");
                        programs
                            .into_iter()
                            .map(|program| program.name_as_str().unwrap_or("?").to_owned())
                    })
                    .collect()
            })
            .join()
            .expect("the query thread")
    })
}
