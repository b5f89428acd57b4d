//! Support for the privileged end-to-end tests in `tests/`: the release `wgtel` binary started
//! inside a [`Lab`]'s gateway namespace, and plain HTTP to its API.
//!
//! `cargo xtask test` builds the binary and sets `WGTEL_BIN`; run directly, the tests use
//! `target/release/wgtel`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};
use wgtel::{
    export::api::ApiPeer,
    lab::{self, Lab},
};

pub mod diagnosis;
pub mod netns;

/// The daemon's API address inside the gateway namespace.
pub const API: &str = "127.0.0.1:9587";

/// The release binary under test.
pub fn wgtel_bin() -> PathBuf {
    let path = std::env::var_os("WGTEL_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/wgtel"),
        PathBuf::from,
    );
    assert!(path.exists(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    path
}

/// The Python virtualenv of `cargo xtask setup` (rotel, prometheus_client).
pub fn venv() -> PathBuf {
    std::env::var_os("WGTEL_VENV").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv"),
        PathBuf::from,
    )
}

/// A `wgtel run` in the lab's gateway namespace; stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    namespace: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `wgtel run ARGS` in the gateway's namespace and waits until its first collection
    /// is done (its API answers and `/healthz` no longer says `starting`).
    pub fn start(lab: &Lab, args: &[&str]) -> Self {
        Self::start_with_env(lab, args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(lab, args, env).started()
    }

    /// [`Daemon::start`] under `wrapper` (a command that runs the rest of its arguments, such
    /// as `setpriv ...`, and execs it, so that the child's PID is the daemon's).
    pub fn start_wrapped(lab: &Lab, wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn_wrapped(lab, wrapper, args, &[]).started()
    }

    /// Waits until the first collection is done, failing after 20 s with the daemon's log.
    fn started(self) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((_, health)) = self.try_get("/healthz")
                && !health.starts_with("starting")
            {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never collected; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `wgtel run ARGS` in the gateway's namespace with extra environment variables,
    /// and returns at once (for a daemon that [`Daemon::try_get`] cannot reach: TLS, another
    /// address).
    pub fn spawn(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(lab, &[], args, env)
    }

    /// [`Daemon::spawn`] under `wrapper` (see [`Daemon::start_wrapped`]).
    pub fn spawn_wrapped(lab: &Lab, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = lab.dir().join(format!("daemon-{}.log", std::process::id()));
        let log_file = fs::File::create(&log).expect("creating the daemon log");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Lab::command(&lab.gateway().namespace, program);
                command.args(rest).arg(wgtel_bin());
                command
            }
            None => Lab::command(&lab.gateway().namespace, wgtel_bin()),
        };
        let child = command
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("duplicating the log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting wgtel run");
        Self { child: Some(child), namespace: lab.gateway().namespace.clone(), log }
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the daemon's API: status code and body.
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: {API}\r\n\r\n");
        lab::in_namespace(&self.namespace, move || http_get(&request))
            .map_err(std::io::Error::other)?
    }

    /// `GET path`, which must answer 200; the body.
    pub fn get(&self, path: &str) -> String {
        let (status, body) = self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Every peer, from `/api/v1/peers`.
    pub fn peers(&self) -> Vec<ApiPeer> {
        serde_json::from_str(&self.get("/api/v1/peers")).expect("/api/v1/peers is not a peer list")
    }

    /// The peer with `public_key`, if listed.
    pub fn peer(&self, public_key: &str) -> Option<ApiPeer> {
        self.peers().into_iter().find(|peer| peer.public_key == public_key)
    }

    /// Every interface, from `/api/v1/interfaces`.
    pub fn interfaces(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/v1/interfaces"))
            .expect("/api/v1/interfaces is not JSON")
    }

    /// Polls `/api/v1/peers` until `done` holds, failing after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ApiPeer]) -> bool,
    ) -> Vec<ApiPeer> {
        let deadline = Instant::now() + timeout;
        loop {
            let peers = self.peers();
            if done(&peers) {
                return peers;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last peers: {peers:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the daemon to exit on its own, failing (and killing it) after `timeout`; the
    /// exit status and the log.
    pub fn exit_status(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("the daemon runs");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the daemon") {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _killed = child.kill();
                let _reaped = child.wait();
                panic!("the daemon still ran after {timeout:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit (at most 10 s); the exit status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("the daemon runs");
        signal(&child, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the daemon") {
                break status;
            }
            if Instant::now() > deadline {
                let _killed = child.kill();
                panic!("the daemon ignored SIGTERM for 10 s; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.log())
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            lab::stop_child(child);
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw).expect("a child's pid");
    kill_process(pid, signal).expect("signalling the daemon");
}

/// Names of the tcx programs on the gateway's WireGuard interface, ingress then egress.
pub fn tcx_programs(lab: &Lab) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let interface = lab.gateway().interface.clone();
    lab::in_namespace(&lab.gateway().namespace, move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|direction| {
                let (_revision, programs) =
                    SchedClassifier::query_tcx(&interface, direction).expect("querying tcx");
                programs.into_iter().map(|program| program.name_as_str().unwrap_or("?").to_owned())
            })
            .collect()
    })
    .expect("entering the gateway's namespace")
}

/// A minimal HTTP/1.0 GET: status code and body.
fn http_get(request: &str) -> std::io::Result<(u16, String)> {
    http_get_at(API, request)
}

/// `GET path` on `address` inside `namespace` (HTTP/1.0): status code and body.
pub fn get_in_namespace(
    namespace: &str,
    address: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let address = address.to_owned();
    lab::in_namespace(namespace, move || http_get_at(&address, &request))
        .map_err(std::io::Error::other)?
}

fn http_get_at(address: &str, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &address.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Makes the gateway's firewall drop every echo request that `from` sends it through the
/// tunnel (an nft table of its own in the gateway's namespace); fails the test when nft refuses.
pub fn drop_echo_requests_from(lab: &Lab, from: &lab::LabNode) {
    for rule in [
        "add table inet wgteltest".to_owned(),
        "add chain inet wgteltest input { type filter hook input priority 0 ; }".to_owned(),
        format!(
            "add rule inet wgteltest input ip saddr {} icmp type echo-request drop",
            from.tunnel_v4
        ),
    ] {
        let status = Lab::command(&lab.gateway().namespace, "nft")
            .arg(&rule)
            .status()
            .unwrap_or_else(|error| panic!("running nft: {error}"));
        assert!(status.success(), "nft {rule}");
    }
}

/// The peer of lab node `node` in `peers`; fails the test when it is not listed.
pub fn peer<'a>(peers: &'a [ApiPeer], node: &lab::LabNode) -> &'a ApiPeer {
    let key = node.public_key.to_string();
    peers.iter().find(|peer| peer.public_key == key).expect("the daemon lists the lab's peer")
}

/// Runs `f` with the gateway's peers and asserts that it holds for `settle` after it first
/// held: counters that overshoot later fail the test.
pub fn settled<T: PartialEq + std::fmt::Debug>(
    daemon: &Daemon,
    settle: Duration,
    f: impl Fn(&[ApiPeer]) -> T,
) -> T {
    let first = f(&daemon.peers());
    std::thread::sleep(settle);
    let later = f(&daemon.peers());
    assert_eq!(first, later, "the counters moved after they settled");
    later
}

/// The rotel OTLP agent (from PyPI, installed by `cargo xtask setup`) in the gateway's
/// namespace, printing every metric it receives; stopped when dropped.
#[derive(Debug)]
pub struct Rotel {
    child: Option<Child>,
    log: PathBuf,
}

/// Where [`Rotel`] takes OTLP over gRPC, inside the gateway's namespace.
pub const ROTEL_GRPC: &str = "127.0.0.1:4317";
/// Where [`Rotel`] takes OTLP over HTTP, inside the gateway's namespace.
pub const ROTEL_HTTP: &str = "127.0.0.1:4318";

impl Rotel {
    /// Starts rotel on [`ROTEL_GRPC`] and [`ROTEL_HTTP`] and waits until both accept
    /// connections.
    pub fn start(lab: &Lab) -> Self {
        Self::start_on(lab, ROTEL_GRPC, ROTEL_HTTP)
    }

    /// Starts rotel taking OTLP on `grpc` and `http` (addresses in the gateway's namespace)
    /// and waits until both accept connections.
    pub fn start_on(lab: &Lab, grpc: &str, http: &str) -> Self {
        Self::spawn(lab, grpc, http, true)
    }

    /// Starts rotel like [`Rotel::start_on`] without printing what it receives (the bench:
    /// tens of MB per second).
    pub fn start_quiet(lab: &Lab, grpc: &str, http: &str) -> Self {
        Self::spawn(lab, grpc, http, false)
    }

    fn spawn(lab: &Lab, grpc: &str, http: &str, print: bool) -> Self {
        let agent = venv().join("lib/python3.11/site-packages/rotel/rotel-agent");
        assert!(agent.exists(), "{} is missing: run `cargo xtask setup`", agent.display());
        let log = lab.dir().join("rotel.log");
        let log_file = fs::File::create(&log).expect("creating rotel's log");
        let child = Lab::command(&lab.gateway().namespace, agent)
            .args(["start", "--otlp-grpc-endpoint", grpc, "--otlp-http-endpoint", http])
            .args(["--exporter", "blackhole"])
            .args(if print {
                &[
                    "--debug-log",
                    "metrics",
                    "--debug-log",
                    "logs",
                    "--debug-log-verbosity",
                    "detailed",
                ][..]
            } else {
                &[]
            })
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("duplicating rotel's log"))
            .stderr(log_file)
            .spawn()
            .expect("starting rotel");
        let rotel = Self { child: Some(child), log };
        let namespace = lab.gateway().namespace.clone();
        let deadline = Instant::now() + Duration::from_secs(15);
        let listening = |address: &str| {
            let address = address.parse().expect("an address");
            lab::in_namespace(&namespace, move || {
                TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false)
        };
        while !(listening(grpc) && listening(http)) {
            assert!(Instant::now() < deadline, "rotel never listened; its log:\n{}", rotel.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        rotel
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything rotel has printed: the metrics and log records it received.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until rotel's log contains every one of `needles`; the log.
    pub fn wait_for(&self, timeout: Duration, needles: &[&str]) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if needles.iter().all(|needle| log.contains(needle)) {
                return log;
            }
            let missing: Vec<_> = needles.iter().filter(|needle| !log.contains(*needle)).collect();
            assert!(Instant::now() < deadline, "rotel never received {missing:?}; its log:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            lab::stop_child(child);
        }
    }
}
