//! A throw-away WireGuard network on this host, for `wgtel demo` and the privileged tests.
//!
//! Every lab gets a number `L` (1..=250) claimed under [`LAB_RUN_DIR`], and builds:
//!
//! ```text
//!  wgtel-L-gw                       wgtel-L-sw                     wgtel-L-pN
//!  u0 198.18.L.1/24  ----------->   br0 (bridge)   <-----------    u0 198.18.L.(10+N)/24
//!  wgtLg (WireGuard)                                               wgtLpN (WireGuard)
//!     198.19.L.1/24, fd00:19:0:L::1/64                                198.19.L.(10+N)/24, fd00:19:0:L::(10+N)/64
//! ```
//!
//! Each node runs a userspace WireGuard of its own choosing ([`Implementation`]: bookworm's
//! wireguard-go by default, the current wireguard-go, or boringtun). The gateway routes all of
//! 198.19.L.0/24 and fd00:19:0:L::/64 into its tunnel, but each peer's AllowedIPs only cover
//! its own /32 and /128: [`Lab::unrouted_v4`] is routed into the tunnel and accepted by no peer.
//! Interface names are unique across labs because every implementation puts its UAPI socket in
//! `/var/run/wireguard/`, which all namespaces share.
//!
//! [`Lab::add_monitoring_peer`] adds a namespace on the underlay that runs no WireGuard, for
//! the outside-in probe (`wgtel probe`, `/probe`).
//!
//! Dropping the [`Lab`] (also while a test panics) stops its processes and deletes its
//! namespaces; a lab whose process died is swept by the next one that claims its number.
//!
//! Longer than most modules: the lab builds namespaces, three WireGuard implementations, peers of
//! five kinds and their traffic; helpers with one job each live beside it (`netns`, `relay`,
//! `outer`, `traffic`, `implementation`, `monitor`).

mod implementation;
mod monitor;
mod netns;
mod outer;
mod relay;
mod traffic;

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};

pub use implementation::Implementation;
pub use monitor::MonitoringPeer;
pub use netns::in_namespace;
pub use traffic::{Datagrams, Iperf3Run, TcpSegments, UdpCounters};

use crate::wg::PublicKey;

/// Where labs claim their number: one directory per live lab, holding its owner's pid.
pub const LAB_RUN_DIR: &str = "/run/wgtel-lab";

/// Where the implementations put their UAPI sockets.
const UAPI_SOCKET_DIR: &str = "/var/run/wireguard";

/// The UDP port every WireGuard interface of the lab listens on (each in its own namespace).
pub const WIREGUARD_PORT: u16 = 51820;

/// The UDP port of a delayed peer's relay, on its underlay address and on its loopback.
pub const RELAY_PORT: u16 = 51821;

/// Tunnel MTU, wireguard-go's default.
pub const TUNNEL_MTU: u32 = 1420;

/// Underlay MTU of the MTU-problem peer: below what a full-size tunnel packet needs.
pub const SMALL_UNDERLAY_MTU: u32 = 1280;

/// Why a lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A command could not be started.
    #[error("starting `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{what} {path}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Entering a network namespace failed.
    #[error("entering network namespace {namespace}")]
    Setns {
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every lab number is taken by a live lab.
    #[error("all {0} lab numbers are taken by running labs")]
    NoFreeNumber(u8),
    /// The WireGuard implementation did not create its interface in time.
    #[error("{program} did not create {interface} within 10 s")]
    StartTimeout {
        /// The implementation's program.
        program: PathBuf,
        /// The interface.
        interface: String,
    },
    /// The WireGuard implementation exited while starting.
    #[error("{program} exited ({status}) while creating {interface}: {log}")]
    Exited {
        /// The implementation's program.
        program: PathBuf,
        /// The interface.
        interface: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        log: String,
    },
    /// An implementation's program is not installed.
    #[error("{} is missing: run `cargo xtask setup`", .0.display())]
    MissingProgram(PathBuf),
    /// No handshake with a peer within the time allowed.
    #[error("no handshake with {0} in time")]
    HandshakeTimeout(String),
    /// No node of the lab has the address.
    #[error("no node of the lab has the address {0}")]
    NoSuchAddress(IpAddr),
    /// A tool failed, or its output is not what it should be.
    #[error("{tool}: {reason}")]
    ToolOutput {
        /// The tool.
        tool: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// iperf3's `--json` report is not JSON.
    #[error("iperf3 printed no JSON report ({stderr})")]
    Iperf3Report {
        /// What iperf3 printed on standard error.
        stderr: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// `/proc/net/snmp` of a namespace does not parse.
    #[error("/proc/net/snmp in {namespace}")]
    Snmp {
        /// The namespace.
        namespace: String,
        /// Why it does not parse.
        #[source]
        source: procfs::ProcError,
    },
    /// A key from `wg` was not a key.
    #[error("`wg` printed something that is not a key")]
    BadKey,
    /// A peer name that the lab does not have.
    #[error("the lab has no peer named {0}")]
    NoSuchPeer(String),
    /// The peer's address block is exhausted.
    #[error("a lab holds at most {MAX_PEERS} peers")]
    TooManyPeers,
}

/// Most peers a lab can hold (addresses 198.19.L.10 to .209).
pub const MAX_PEERS: usize = 200;

/// What to build.
#[derive(Clone, Copy, Debug, Default)]
pub struct LabOptions {
    /// The WireGuard implementation of every node.
    pub implementation: Implementation,
    /// The gateway's implementation, when not [`LabOptions::implementation`].
    pub gateway_implementation: Option<Implementation>,
    /// GRO on every veth of the lab (both ends, the switch's ports too), as on a NIC with GRO:
    /// datagrams to a socket that asks for UDP GRO (the current wireguard-go's) arrive
    /// coalesced. (A veth passes a UDP GSO datagram on whole even without GRO, so a current
    /// wireguard-go receives the batches of a current sender either way.)
    pub gro: bool,
    /// Working peers.
    pub peers: usize,
    /// Add a peer that holds a wrong key for the gateway: its handshakes never complete.
    pub broken_peer: bool,
    /// Add a peer whose underlay path delays every datagram by this much each way (a relay
    /// between its WireGuard and the gateway).
    pub delayed_peer: Option<Duration>,
    /// Add a peer whose underlay MTU is [`SMALL_UNDERLAY_MTU`], below the tunnel's needs.
    pub mtu_peer: bool,
}

/// A WireGuard private key, kept out of `Debug` and `Display`.
#[derive(Clone)]
struct PrivateKey(String);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// One end of the lab's tunnels.
#[derive(Clone, Debug)]
pub struct LabNode {
    /// Short name: `gateway`, `peer1`, `broken`, `mtu`, ...
    pub name: String,
    /// Network namespace.
    pub namespace: String,
    /// WireGuard interface (the TUN device of its implementation).
    pub interface: String,
    /// The WireGuard implementation running it.
    pub implementation: Implementation,
    /// Its public key.
    pub public_key: PublicKey,
    private_key: PrivateKey,
    /// Underlay address.
    pub underlay_v4: Ipv4Addr,
    /// Tunnel IPv4 address.
    pub tunnel_v4: Ipv4Addr,
    /// Tunnel IPv6 address.
    pub tunnel_v6: Ipv6Addr,
    /// Host index: 1 for the gateway, 10 + n for peer n.
    host: u8,
}

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    number: u8,
    dir: PathBuf,
    gateway: LabNode,
    peers: Vec<LabNode>,
    /// The WireGuard processes, by interface.
    wireguard: Vec<(String, Child)>,
    relays: Vec<relay::DelayRelay>,
    next_host: u8,
    /// The implementation of peers added without naming one.
    implementation: Implementation,
    gro: bool,
    /// What the gateway was told of each peer: key, AllowedIPs, endpoint (for a restart).
    gateway_peers: Vec<(PublicKey, String, String)>,
}

impl Lab {
    /// Builds a lab as `options` says.
    pub fn build(options: LabOptions) -> Result<Self, LabError> {
        let (number, dir) = claim_number()?;
        let mut lab = Self {
            number,
            dir,
            gateway: LabNode {
                name: "gateway".into(),
                namespace: String::new(),
                interface: String::new(),
                implementation: options.gateway_implementation.unwrap_or(options.implementation),
                public_key: PublicKey([0; 32]),
                private_key: PrivateKey(String::new()),
                underlay_v4: Ipv4Addr::UNSPECIFIED,
                tunnel_v4: Ipv4Addr::UNSPECIFIED,
                tunnel_v6: Ipv6Addr::UNSPECIFIED,
                host: 1,
            },
            peers: Vec::new(),
            wireguard: Vec::new(),
            relays: Vec::new(),
            next_host: 10,
            implementation: options.implementation,
            gro: options.gro,
            gateway_peers: Vec::new(),
        };
        // From here on, Drop cleans up whatever was built.
        lab.build_switch_and_gateway()?;
        for _ in 0..options.peers {
            lab.add_peer()?;
        }
        if options.broken_peer {
            lab.add_special_peer("broken", PeerKind::Broken)?;
        }
        if options.mtu_peer {
            lab.add_special_peer("mtu", PeerKind::SmallUnderlayMtu)?;
        }
        if let Some(one_way) = options.delayed_peer {
            lab.add_special_peer("slow", PeerKind::Delayed(one_way))?;
        }
        Ok(lab)
    }

    /// The lab's number `L`.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The gateway: the node the daemon watches.
    pub fn gateway(&self) -> &LabNode {
        &self.gateway
    }

    /// The peers, in the order they were added.
    pub fn peers(&self) -> &[LabNode] {
        &self.peers
    }

    /// The peer named `name`.
    pub fn peer(&self, name: &str) -> Option<&LabNode> {
        self.peers.iter().find(|peer| peer.name == name)
    }

    /// An IPv4 address the gateway routes into its tunnel that no peer's AllowedIPs cover.
    pub fn unrouted_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.number, 250)
    }

    /// An IPv6 address the gateway routes into its tunnel that no peer's AllowedIPs cover.
    pub fn unrouted_v6(&self) -> Ipv6Addr {
        tunnel_v6(self.number, 250)
    }

    /// The lab's scratch directory (key files, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every private key of the lab in base64, for tests that prove none of them leaks.
    pub fn private_keys(&self) -> Vec<String> {
        std::iter::once(&self.gateway)
            .chain(&self.peers)
            .map(|node| node.private_key.0.clone())
            .collect()
    }

    /// A wg-quick style file naming each peer (`# Name = peerN` above its `PublicKey`), for
    /// `--names-from`.
    pub fn write_names_file(&self) -> Result<PathBuf, LabError> {
        let mut text = String::from("[Interface]\n# the gateway's config, keys elided\n");
        for peer in &self.peers {
            let _infallible =
                write!(text, "\n[Peer]\n# Name = {}\nPublicKey = {}\n", peer.name, peer.public_key);
        }
        let path = self.dir.join("names.conf");
        write_file(&path, &text)?;
        Ok(path)
    }

    /// A command that runs `program` in `namespace`.
    pub fn command(namespace: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]).arg(program);
        command
    }

    /// Sends `count` pings from `from` to `to`, 10 ms apart, and returns how many were
    /// answered ("0 received" is an answer of 0). Sends exactly `count` requests, answered or
    /// not. Fails when ping printed no summary line to read the answer from.
    pub fn ping(&self, from: &LabNode, to: IpAddr, count: u32) -> Result<u32, LabError> {
        let output = Self::command(&from.namespace, "ping")
            .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.01", "-W", "1"])
            .arg(to.to_string())
            .output()
            .map_err(|source| LabError::Spawn { command: format!("ping {to}"), source })?;
        received_of_ping(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
            LabError::ToolOutput {
                tool: "ping",
                reason: format!(
                    "no \"N packets transmitted, M received\" line ({}): stdout {:?}, stderr {:?}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout).trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            }
        })
    }

    /// Pings from the gateway to every working peer until each answers (handshakes done).
    pub fn wait_for_handshakes(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for peer in self.peers.iter().filter(|peer| peer.name != "broken") {
            while self.ping(&self.gateway, peer.tunnel_v4.into(), 1)? != 1 {
                if Instant::now() > deadline {
                    return Err(LabError::HandshakeTimeout(peer.name.clone()));
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Adds a working peer of the lab's implementation and returns it.
    pub fn add_peer(&mut self) -> Result<&LabNode, LabError> {
        self.add_peer_with(self.implementation)
    }

    /// Adds a working peer running `implementation` and returns it.
    pub fn add_peer_with(&mut self, implementation: Implementation) -> Result<&LabNode, LabError> {
        let name =
            format!("peer{}", self.peers.iter().filter(|p| p.name.starts_with("peer")).count() + 1);
        self.add_node_peer(&name, PeerKind::Working, implementation)
    }

    /// Removes the peer named `name` from the gateway and stops it.
    pub fn remove_peer(&mut self, name: &str) -> Result<LabNode, LabError> {
        let index = self
            .peers
            .iter()
            .position(|peer| peer.name == name)
            .ok_or_else(|| LabError::NoSuchPeer(name.to_owned()))?;
        let peer = self.peers.remove(index);
        wg_set(&self.gateway, &["peer", &peer.public_key.to_string(), "remove"])?;
        self.gateway_peers.retain(|(key, _, _)| *key != peer.public_key);
        self.stop_wireguard(&peer.interface);
        delete_namespace(&peer.namespace);
        Ok(peer)
    }

    /// Stops the gateway's WireGuard: its interface vanishes from under the daemon.
    pub fn stop_gateway(&mut self) {
        let interface = self.gateway.interface.clone();
        self.stop_wireguard(&interface);
    }

    /// Changes the delay of the delayed peer's relay (each way) for the datagrams it receives
    /// from now on; nothing when the lab has no delayed peer.
    pub fn set_path_delay(&self, one_way: Duration) {
        for relay in &self.relays {
            relay.set_one_way(one_way);
        }
    }

    /// The process id of the WireGuard implementation running `node`, while it runs.
    pub fn wireguard_pid(&self, node: &LabNode) -> Option<u32> {
        self.wireguard.iter().find(|(name, _)| *name == node.interface).map(|(_, child)| child.id())
    }

    /// Starts the gateway's WireGuard again after [`Lab::stop_gateway`]: the interface comes
    /// back under its name (with a new ifindex), its key, addresses and peers.
    pub fn start_gateway(&mut self) -> Result<(), LabError> {
        let gateway = self.gateway.clone();
        self.start_wireguard(&gateway, Ipv4Addr::new(198, 19, self.number, 1), 24, WIREGUARD_PORT)?;
        for (key, allowed, endpoint) in &self.gateway_peers {
            wg_set(
                &gateway,
                &["peer", &key.to_string(), "allowed-ips", allowed, "endpoint", endpoint],
            )?;
        }
        Ok(())
    }

    fn namespace(&self, role: &str) -> String {
        format!("wgtel-{}-{role}", self.number)
    }

    fn build_switch_and_gateway(&mut self) -> Result<(), LabError> {
        let switch = self.namespace("sw");
        add_namespace(&switch)?;
        ip(&switch, &["link", "add", "br0", "type", "bridge"])?;
        ip(&switch, &["link", "set", "br0", "up"])?;
        let number = self.number;
        let gateway =
            self.new_node("gateway", self.namespace("gw"), 1, self.gateway.implementation)?;
        add_namespace(&gateway.namespace)?;
        self.connect_underlay(&gateway, None)?;
        self.start_wireguard(&gateway, Ipv4Addr::new(198, 19, number, 1), 24, WIREGUARD_PORT)?;
        self.gateway = gateway;
        Ok(())
    }

    fn add_special_peer(&mut self, name: &str, kind: PeerKind) -> Result<&LabNode, LabError> {
        self.add_node_peer(name, kind, self.implementation)
    }

    fn add_node_peer(
        &mut self,
        name: &str,
        kind: PeerKind,
        implementation: Implementation,
    ) -> Result<&LabNode, LabError> {
        if self.next_host as usize >= 10 + MAX_PEERS {
            return Err(LabError::TooManyPeers);
        }
        let host = self.next_host;
        self.next_host += 1;
        let namespace = self.namespace(&format!("p{}", host - 9));
        let peer = self.new_node(name, namespace, host, implementation)?;
        add_namespace(&peer.namespace)?;
        let mtu = matches!(kind, PeerKind::SmallUnderlayMtu).then_some(SMALL_UNDERLAY_MTU);
        self.connect_underlay(&peer, mtu)?;
        self.start_wireguard(&peer, peer.tunnel_v4, 24, WIREGUARD_PORT)?;
        let number = self.number;
        if let Some(mtu) = mtu {
            // The gateway learns the small MTU towards this peer from its route, as a gateway
            // would from path MTU discovery, so both ends fragment their big datagrams.
            let route = format!("{}/32", peer.underlay_v4);
            ip(
                &self.gateway.namespace,
                &["route", "add", &route, "dev", "u0", "mtu", &mtu.to_string()],
            )?;
        }
        // The gateway accepts exactly the peer's own addresses and knows where it is: a
        // delayed peer's datagrams come from its relay.
        let allowed = format!("{}/32,{}/128", peer.tunnel_v4, peer.tunnel_v6);
        let gateway_endpoint = SocketAddr::from((self.gateway.underlay_v4, WIREGUARD_PORT));
        let (endpoint, gateway_endpoint) = match kind {
            PeerKind::Delayed(one_way) => {
                let outer = SocketAddr::from((peer.underlay_v4, RELAY_PORT));
                let local = SocketAddr::from((Ipv4Addr::LOCALHOST, RELAY_PORT));
                let wireguard = SocketAddr::from((Ipv4Addr::LOCALHOST, WIREGUARD_PORT));
                self.relays.push(relay::DelayRelay::start(
                    &peer.namespace,
                    local,
                    wireguard,
                    outer,
                    gateway_endpoint,
                    one_way,
                )?);
                (outer, local)
            }
            _ => (SocketAddr::from((peer.underlay_v4, WIREGUARD_PORT)), gateway_endpoint),
        };
        let endpoint = endpoint.to_string();
        wg_set(
            &self.gateway,
            &["peer", &peer.public_key.to_string(), "allowed-ips", &allowed, "endpoint", &endpoint],
        )?;
        self.gateway_peers.push((peer.public_key, allowed, endpoint));
        // The peer sends the whole tunnel subnet to the gateway; a broken peer holds a wrong
        // key for it, so that no handshake in either direction completes.
        let gateway_key = match kind {
            PeerKind::Broken => generate_keys()?.1,
            PeerKind::Working | PeerKind::SmallUnderlayMtu | PeerKind::Delayed(_) => {
                self.gateway.public_key
            }
        };
        let gateway_allowed = format!("198.19.{number}.0/24,{}/64", tunnel_v6(number, 0));
        let gateway_endpoint = gateway_endpoint.to_string();
        wg_set(
            &peer,
            &[
                "peer",
                &gateway_key.to_string(),
                "allowed-ips",
                &gateway_allowed,
                "endpoint",
                &gateway_endpoint,
            ],
        )?;
        self.peers.push(peer);
        Ok(self.peers.last().unwrap_or(&self.gateway))
    }

    fn new_node(
        &self,
        name: &str,
        namespace: String,
        host: u8,
        implementation: Implementation,
    ) -> Result<LabNode, LabError> {
        let (private_key, public_key) = generate_keys()?;
        let interface = if host == 1 {
            format!("wgt{}g", self.number)
        } else {
            format!("wgt{}p{}", self.number, host - 9)
        };
        Ok(LabNode {
            name: name.into(),
            namespace,
            interface,
            implementation,
            public_key,
            private_key,
            underlay_v4: Ipv4Addr::new(198, 18, self.number, host),
            tunnel_v4: Ipv4Addr::new(198, 19, self.number, host),
            tunnel_v6: tunnel_v6(self.number, host.into()),
            host,
        })
    }

    /// A veth pair from `node` (`u0`) to the switch's bridge.
    fn connect_underlay(&self, node: &LabNode, mtu: Option<u32>) -> Result<(), LabError> {
        let switch = self.namespace("sw");
        let port = format!("s{}", node.host);
        ip(
            &switch,
            &["link", "add", &port, "type", "veth", "peer", "name", "u0", "netns", &node.namespace],
        )?;
        if let Some(mtu) = mtu {
            ip(&switch, &["link", "set", &port, "mtu", &mtu.to_string()])?;
            ip(&node.namespace, &["link", "set", "u0", "mtu", &mtu.to_string()])?;
        }
        ip(&switch, &["link", "set", &port, "master", "br0", "up"])?;
        ip(&node.namespace, &["addr", "add", &format!("{}/24", node.underlay_v4), "dev", "u0"])?;
        ip(&node.namespace, &["link", "set", "u0", "up"])?;
        ip(&node.namespace, &["link", "set", "lo", "up"])?;
        if self.gro {
            for (namespace, device) in [(switch.as_str(), port.as_str()), (&node.namespace, "u0")] {
                run(Lab::command(namespace, "ethtool").args(["-K", device, "gro", "on"]))?;
            }
        }
        Ok(())
    }

    /// Starts `node`'s WireGuard, gives it its key, port and addresses, and brings it up.
    fn start_wireguard(
        &mut self,
        node: &LabNode,
        v4: Ipv4Addr,
        v4_prefix: u8,
        listen_port: u16,
    ) -> Result<(), LabError> {
        let socket = Path::new(UAPI_SOCKET_DIR).join(format!("{}.sock", node.interface));
        let _stale = fs::remove_file(&socket);
        let log_path = self.dir.join(format!("{}.log", node.interface));
        let log = fs::File::create(&log_path).map_err(|source| LabError::File {
            what: "creating",
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| LabError::File {
            what: "duplicating",
            path: log_path.clone(),
            source,
        })?;
        let program = node.implementation.program()?;
        let child = node
            .implementation
            .command(&node.namespace, &node.interface)?
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| LabError::Spawn { command: program.display().to_string(), source })?;
        self.wireguard.push((node.interface.clone(), child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            let exited = self.wireguard.last_mut().and_then(|(_, child)| child.try_wait().ok()?);
            if let Some(status) = exited {
                self.wireguard.pop();
                let log = fs::read_to_string(&log_path).unwrap_or_default().trim().to_owned();
                let interface = node.interface.clone();
                return Err(LabError::Exited { program, interface, status, log });
            }
            if Instant::now() > deadline {
                return Err(LabError::StartTimeout { program, interface: node.interface.clone() });
            }
            thread::sleep(Duration::from_millis(20));
        }
        let key_file = self.dir.join(format!("{}.key", node.interface));
        write_file(&key_file, &format!("{}\n", node.private_key.0))?;
        let key_path = key_file.to_string_lossy().into_owned();
        wg_set(node, &["private-key", &key_path, "listen-port", &listen_port.to_string()])?;
        let dev = node.interface.as_str();
        ip(&node.namespace, &["addr", "add", &format!("{v4}/{v4_prefix}"), "dev", dev])?;
        let v6 = format!("{}/64", node.tunnel_v6);
        ip(&node.namespace, &["-6", "addr", "add", &v6, "dev", dev, "nodad"])?;
        ip(&node.namespace, &["link", "set", dev, "mtu", &TUNNEL_MTU.to_string(), "up"])?;
        Ok(())
    }

    /// Stops the WireGuard process of `interface` by its pid, and removes its socket.
    fn stop_wireguard(&mut self, interface: &str) {
        if let Some(index) = self.wireguard.iter().position(|(name, _)| name == interface) {
            let (_, child) = self.wireguard.remove(index);
            stop_child(child);
        }
        let _gone = fs::remove_file(Path::new(UAPI_SOCKET_DIR).join(format!("{interface}.sock")));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.relays.clear();
        let interfaces: Vec<String> = self.wireguard.iter().map(|(name, _)| name.clone()).collect();
        for interface in interfaces {
            self.stop_wireguard(&interface);
        }
        sweep_namespaces(self.number);
        let _gone = fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy)]
enum PeerKind {
    Working,
    Broken,
    SmallUnderlayMtu,
    Delayed(Duration),
}

/// How many answers ping's summary line ("50 packets transmitted, 50 received, ...") counts;
/// `None` without such a line.
fn received_of_ping(stdout: &str) -> Option<u32> {
    let line = stdout.lines().find(|line| line.contains(" packets transmitted, "))?;
    let answered = line.split(", ").nth(1)?.strip_suffix(" received")?;
    answered.parse().ok()
}

fn tunnel_v6(number: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0, number.into(), 0, 0, 0, host)
}

/// Claims the lowest free lab number, sweeping labs whose owner died.
fn claim_number() -> Result<(u8, PathBuf), LabError> {
    let run_dir = Path::new(LAB_RUN_DIR);
    fs::create_dir_all(run_dir).map_err(|source| LabError::File {
        what: "creating",
        path: run_dir.into(),
        source,
    })?;
    const LAST: u8 = 250;
    for number in 1..=LAST {
        let dir = run_dir.join(number.to_string());
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(dir.join("pid"))
                    .ok()
                    .and_then(|pid| pid.trim().parse().ok());
                let alive =
                    owner.is_some_and(|pid: i32| Path::new(&format!("/proc/{pid}")).exists());
                // A directory without a pid file may be a lab being claimed right now: leave it.
                if alive || owner.is_none() {
                    continue;
                }
                log::info!("sweeping lab {number}, whose owner {owner:?} is gone");
                sweep_namespaces(number);
                let _gone = fs::remove_dir_all(&dir);
                if fs::create_dir(&dir).is_err() {
                    continue;
                }
            }
            Err(source) => return Err(LabError::File { what: "creating", path: dir, source }),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|source| LabError::File { what: "restricting", path: dir.clone(), source })?;
        write_file(&dir.join("pid"), &std::process::id().to_string())?;
        // Leftovers of an earlier lab with this number whose directory was removed by hand.
        sweep_namespaces(number);
        return Ok((number, dir));
    }
    Err(LabError::NoFreeNumber(LAST))
}

/// Deletes every namespace of lab `number` and stops whatever still runs in them.
fn sweep_namespaces(number: u8) {
    let prefix = format!("wgtel-{number}-");
    let Ok(entries) = fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        // `ip netns pids` lists processes still inside: a killed lab's WireGuard.
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Some(pid) = pid.parse::<i32>().ok().and_then(Pid::from_raw) {
                    let _gone = kill_process(pid, Signal::KILL);
                }
            }
        }
        delete_namespace(&name);
    }
    // A killed WireGuard leaves its socket behind.
    let socket_prefix = format!("wgt{number}");
    if let Ok(entries) = fs::read_dir(UAPI_SOCKET_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let interface = name.strip_suffix(".sock").unwrap_or(&name);
            let rest = interface.strip_prefix(&socket_prefix);
            if rest.is_some_and(|rest| rest.starts_with('g') || rest.starts_with('p')) {
                let _gone = fs::remove_file(entry.path());
            }
        }
    }
}

fn add_namespace(name: &str) -> Result<(), LabError> {
    delete_namespace(name);
    run(Command::new("ip").args(["netns", "add", name]))?;
    // No IPv6 chatter on new interfaces (router solicitations, duplicate address detection)
    // that would reach the tunnel and blur exact packet counts.
    for setting in [
        "net.ipv6.conf.default.accept_ra=0",
        "net.ipv6.conf.default.router_solicitations=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.default.addr_gen_mode=1",
    ] {
        run(Lab::command(name, "sysctl").args(["-q", "-w", setting]))?;
    }
    Ok(())
}

fn delete_namespace(name: &str) {
    let _result = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

fn ip(namespace: &str, args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(["-n", namespace]).args(args)).map(drop)
}

fn wg_set(node: &LabNode, args: &[&str]) -> Result<(), LabError> {
    run(Lab::command(&node.namespace, "wg").args(["set", &node.interface]).args(args)).map(drop)
}

/// Runs `command`, returning its output when it succeeds.
fn run(command: &mut Command) -> Result<Output, LabError> {
    let shown = render(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn { command: shown.clone(), source })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: shown,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

fn render(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh key pair from `wg genkey | wg pubkey`; the private key never touches argv.
fn generate_keys() -> Result<(PrivateKey, PublicKey), LabError> {
    let private = run(Command::new("wg").arg("genkey"))?;
    let private =
        String::from_utf8(private.stdout).map_err(|_| LabError::BadKey)?.trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { command: "wg pubkey".into(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(private.as_bytes())
            .map_err(|source| LabError::Spawn { command: "wg pubkey".into(), source })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| LabError::Spawn { command: "wg pubkey".into(), source })?;
    let public =
        String::from_utf8_lossy(&output.stdout).trim().parse().map_err(|_| LabError::BadKey)?;
    Ok((PrivateKey(private), public))
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| LabError::File { what: "writing", path: path.into(), source })?;
    file.write_all(text.as_bytes()).map_err(|source| LabError::File {
        what: "writing",
        path: path.into(),
        source,
    })
}

/// SIGTERM, a moment to exit, then SIGKILL.
pub fn stop_child(mut child: Child) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _gone = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _killed = child.kill();
    let _reaped = child.wait();
}

#[cfg(test)]
mod tests {
    use super::received_of_ping;

    #[test]
    fn ping_answers_come_from_its_summary_line_or_not_at_all() {
        let summary = |line: &str| {
            format!(
                "PING 198.19.1.11 (198.19.1.11) 56(84) bytes of data.\n\n--- 198.19.1.11 ping statistics ---\n{line}\nrtt min/avg/max/mdev = 0.1/0.2/0.3/0.1 ms\n"
            )
        };
        assert_eq!(
            received_of_ping(&summary(
                "50 packets transmitted, 48 received, 4% packet loss, time 490ms"
            )),
            Some(48)
        );
        assert_eq!(
            received_of_ping(&summary(
                "1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms"
            )),
            Some(0)
        );
        assert_eq!(received_of_ping(""), None);
        assert_eq!(received_of_ping("ping: connect: Network is unreachable\n"), None);
        assert_eq!(received_of_ping(&summary("1 packets transmitted, many received")), None);
    }
}
