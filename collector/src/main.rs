//! The `wgtel` binary: `run` (the daemon), `status`, `explain`, `demo` and `probe`.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use wgtel::{
    config::{RunArgs, RunConfig},
    demo::DemoArgs,
    explain::ExplainArgs,
    probe::cli::ProbeArgs,
    status::StatusArgs,
};

/// mimalloc instead of glibc's malloc. The OTLP SDK re-aggregates every series at every
/// collection (opentelemetry_sdk 0.33 drains observable instruments' value maps), allocating
/// and freeing a few small blocks per series: with glibc, at 12k peers more than half the
/// export's time went to `_int_malloc`, `unlink_chunk` and `malloc_consolidate` (perf).
/// With mimalloc that collection is 3-4 times faster (1.0-1.4 s -> 0.26-0.44 s at 12k
/// peers), and freed memory goes back to the kernel (RSS, bench/REPORT.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's settings for the daemon: commit arena memory only as it is used, and give freed
/// memory back at once. mimalloc reads them from the environment before the first allocation
/// (setting them later from `main` does not reach the arena it already made): RSS at 10k peers
/// was 67 MB with its defaults, 43 to 53 MB with them set from `main`, 27 MB from the
/// environment (measured on this lab; bench/REPORT.md).
const MIMALLOC_SETTINGS: [(&str, &str); 2] =
    [("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")];

/// Runs this binary again with [`MIMALLOC_SETTINGS`] in its environment, unless they are there
/// already (or the user set them). Returns only if the exec failed, which is logged: the daemon
/// then runs with mimalloc's defaults.
fn exec_with_allocator_settings() {
    if MIMALLOC_SETTINGS.iter().any(|(name, _)| std::env::var_os(name).is_some()) {
        return;
    }
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(std::env::args_os().next().unwrap_or_default())
        .args(std::env::args_os().skip(1))
        .envs(MIMALLOC_SETTINGS)
        .exec();
    eprintln!("wgtel: re-executing with the allocator settings failed ({error}); going on without");
}

/// Gives the process back its name after [`exec_with_allocator_settings`]: exec'ing
/// `/proc/self/exe` names it `exe`, which is what `ps`, `top` and `pkill wgtel` go by. The name
/// is argv\[0\]'s file name, cut to the 15 bytes the kernel keeps; without one, or when naming
/// fails, it stays `exe`.
fn restore_process_name() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().unwrap_or(&argv0).as_bytes();
    let name = &name[..name.len().min(15)];
    if !name.is_empty()
        && let Ok(name) = CString::new(name)
        && let Err(error) = rustix::thread::set_name(&name)
    {
        eprintln!("wgtel: naming the process {name:?} failed ({error})");
    }
}

#[derive(Parser)]
#[command(version, about = "WireGuard telemetry from the packets themselves")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: watch WireGuard interfaces, collect, export over OTLP and HTTP.
    Run(Box<RunArgs>),
    /// One snapshot of every peer, from a running daemon's HTTP API.
    Status(StatusArgs),
    /// Every diagnosis code of one peer, with its evidence and counters.
    Explain(ExplainArgs),
    /// A throw-away lab with the daemon on it and a live per-peer view.
    Demo(DemoArgs),
    /// A WireGuard handshake with a gateway from outside, as a monitoring peer, then ICMP
    /// echoes through the tunnel; exit 0 on success, 1 on failure, 2 on bad input.
    Probe(ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_)) {
        exec_with_allocator_settings();
        restore_process_name();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    // reqwest (webhook, http checks) is built without a crypto provider of its own: ring serves
    // every TLS client and server of the process.
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        log::debug!("a rustls crypto provider was installed already");
    }
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Status(args) => wgtel::status::run(&args).map_err(anyhow::Error::from),
        Command::Explain(args) => wgtel::explain::run(&args).map_err(anyhow::Error::from),
        Command::Demo(args) => wgtel::demo::run(&args).map_err(anyhow::Error::from),
        Command::Probe(args) => return wgtel::probe::cli::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wgtel: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = RunConfig::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wgtel")
        // The blocking pool serves `/metrics` and `/api/v1/peers` scrapes (OTLP encodes on a
        // thread of its own; the pool also joins the collector at shutdown). A thread idle for
        // a second ends, rather than after tokio's 10 s: between scrapes the daemon's threads
        // are its fixed set (this one, the workers, the collector, the OTLP encoder), not as
        // many as the busiest moment of the last 10 s.
        .thread_keep_alive(Duration::from_secs(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wgtel::run::run(config))?;
    Ok(())
}
