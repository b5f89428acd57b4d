//! `wgtel demo`: a throw-away lab (three working peers, one peer holding a wrong key, one
//! peer behind a too-small underlay MTU, one behind a 20 ms round trip), steady and bursty traffic, the daemon watching the
//! gateway, and a live per-peer view that redraws in place until Ctrl-C or `--duration`.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::{
    lab::{self, Lab, LabError, LabOptions},
    status,
};

/// Flags of `wgtel demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Building or changing the lab failed.
    #[error("building the lab")]
    Lab(#[from] LabError),
    /// A process of the demo could not be started.
    #[error("starting {what}")]
    Spawn {
        /// Which process.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon exited early.
    #[error("the daemon exited early ({status}); its log: {log}")]
    DaemonExited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Where its log is.
        log: PathBuf,
    },
}

/// Where the demo's daemon listens, inside the gateway's namespace.
const DAEMON_ENDPOINT: &str = "http://127.0.0.1:9587";

/// Set by SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The daemon's config in the demo: alerts that fire and resolve within seconds.
const DEMO_CONFIG: &str = "[alerts]\nfor = \"3s\"\ngrowth-window = \"10s\"\n";

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    // libc: rustix installs no signal handlers.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, request_stop as *const () as libc::sighandler_t) };
    }
    eprintln!("building the lab (network namespaces, wireguard-go peers)...");
    let lab = Lab::build(LabOptions {
        peers: 3,
        broken_peer: true,
        mtu_peer: true,
        delayed_peer: Some(Duration::from_millis(10)),
        ..LabOptions::default()
    })?;
    let mut children = Children(Vec::new());
    let daemon_log = lab.dir().join("daemon.log");
    let names = lab.write_names_file()?;
    // Alerts quick enough to watch: the broken peer's unanswered handshakes and the MTU
    // peer's fragments fire within seconds.
    let config = lab.dir().join("wgtel.toml");
    fs::write(&config, DEMO_CONFIG)
        .map_err(|source| DemoError::Spawn { what: "the daemon's config", source })?;
    let exe =
        std::env::current_exe().map_err(|source| DemoError::Spawn { what: "wgtel", source })?;
    let log = fs::File::create(&daemon_log)
        .map_err(|source| DemoError::Spawn { what: "the daemon's log", source })?;
    children.spawn(
        "the daemon",
        Lab::command(&lab.gateway().namespace, exe)
            .args(["run", "--interval", "1s", "--names-from"])
            .arg(&names)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log),
    )?;
    start_traffic(&lab, &mut children)?;

    let started = Instant::now();
    let mut out = io::stdout().lock();
    while !STOP.load(Ordering::SeqCst)
        && args.duration.is_none_or(|limit| started.elapsed() < limit)
    {
        if let Some(status) =
            children.0.first_mut().and_then(|daemon| daemon.try_wait().ok().flatten())
        {
            return Err(DemoError::DaemonExited { status, log: daemon_log });
        }
        let fetched = lab::in_namespace(&lab.gateway().namespace, || {
            Ok::<_, status::StatusError>((
                status::fetch_peers(DAEMON_ENDPOINT)?,
                status::fetch_interfaces(DAEMON_ENDPOINT)?,
                status::fetch_alerts(DAEMON_ENDPOINT)?,
            ))
        });
        let view = match fetched {
            Ok(Ok((peers, interfaces, alerts))) => {
                status::render_view(&peers, &interfaces, &alerts)
            }
            Ok(Err(error)) => format!("waiting for the daemon: {error}\n"),
            Err(error) => format!("cannot enter the gateway's namespace: {error}\n"),
        };
        // Home the cursor and clear the screen, then draw: the view refreshes in place.
        let _shown = write!(
            out,
            "\x1b[H\x1b[2Jwgtel demo: lab {} ({} up, gateway {} in namespace {}); Ctrl-C to stop\n\
             traffic: steady pings to every peer and the unrouted {}, iperf3 bursts to peer1, \
             big pings to the MTU peer\n\n{view}",
            lab.number(),
            humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
            lab.gateway().interface,
            lab.gateway().namespace,
            lab.unrouted_v4(),
        )
        .and_then(|()| out.flush());
        sleep_unless_stopped(Duration::from_secs(1));
    }
    let _shown = writeln!(out, "\nstopping: daemon, traffic, lab");
    drop(children);
    drop(lab);
    Ok(())
}

fn sleep_unless_stopped(duration: Duration) {
    let deadline = Instant::now() + duration;
    while !STOP.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Steady pings from the gateway to every peer and to the unrouted address (`no_peer` drops),
/// oversized pings to the MTU peer, and an iperf3 burst to peer1 every few seconds.
fn start_traffic(lab: &Lab, children: &mut Children) -> Result<(), DemoError> {
    let gateway = &lab.gateway().namespace;
    for peer in lab.peers() {
        let size = if peer.name == "mtu" { "1372" } else { "56" };
        children.spawn(
            "ping",
            Lab::command(gateway, "ping")
                .args(["-q", "-i", "0.2", "-s", size])
                .arg(peer.tunnel_v4.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
    }
    children.spawn(
        "ping",
        Lab::command(gateway, "ping")
            .args(["-q", "-i", "1"])
            .arg(lab.unrouted_v4().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    if let Some(peer1) = lab.peer("peer1") {
        children.spawn(
            "iperf3 -s",
            Lab::command(&peer1.namespace, "iperf3")
                .args(["-s", "-B"])
                .arg(peer1.tunnel_v4.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        // Two seconds of bulk transfer, four seconds of quiet, forever.
        let script = format!(
            "while :; do sleep 4; iperf3 -c {} -t 2 -b 200M >/dev/null 2>&1; done",
            peer1.tunnel_v4
        );
        children.spawn(
            "iperf3 bursts",
            Lab::command(gateway, "sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
    }
    Ok(())
}

/// The demo's processes, stopped (SIGTERM, then SIGKILL) when dropped. The first is the daemon.
struct Children(Vec<Child>);

impl Children {
    fn spawn(
        &mut self,
        what: &'static str,
        command: &mut std::process::Command,
    ) -> Result<(), DemoError> {
        // Their own process group: Ctrl-C reaches the demo, which stops them in order.
        let child = command
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| DemoError::Spawn { what, source })?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // Traffic first, the daemon last: it detaches on SIGTERM.
        while let Some(child) = self.0.pop() {
            let pid = child.id();
            // A shell loop's iperf3 child would outlive the shell: stop the whole group.
            if let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _gone = kill_process_group(group, Signal::TERM);
            }
            lab::stop_child(child);
        }
    }
}
