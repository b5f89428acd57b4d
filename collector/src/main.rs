//! The `wgtel` binary: `run` (the daemon), `status` and `demo`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wgtel::{
    config::{RunArgs, RunConfig},
    demo::DemoArgs,
    status::StatusArgs,
};

#[derive(Parser)]
#[command(version, about = "WireGuard telemetry from the packets themselves")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: watch WireGuard interfaces, collect, export over OTLP and HTTP.
    Run(RunArgs),
    /// One snapshot of every peer, from a running daemon's HTTP API.
    Status(StatusArgs),
    /// A throw-away lab with the daemon on it and a live per-peer view.
    Demo(DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Status(args) => wgtel::status::run(&args).map_err(anyhow::Error::from),
        Command::Demo(args) => wgtel::demo::run(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wgtel: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Freed memory above this at the top of a malloc heap goes back to the kernel.
const MALLOC_TRIM_THRESHOLD: libc::c_int = 1 << 20;

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = RunConfig::from_args(args)?;
    // Each collection allocates and frees a few MB at 10k peers (the UAPI reply, per-peer
    // maps and strings). glibc raises its trim threshold to twice the largest mmap'd block
    // freed so far (up to 64 MiB: `_int_free`/`munmap_chunk` in malloc/malloc.c), so that
    // memory was kept, never returned: RSS 56 MB at 10k peers, 33-36 MB with a fixed 1 MiB
    // threshold (measured on this lab, bench/REPORT.md). A fixed threshold also turns the
    // dynamic adjustment off.
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) } != 1 {
        log::debug!("mallopt(M_TRIM_THRESHOLD) refused; memory use may stay higher");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wgtel")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wgtel::run::run(config))?;
    Ok(())
}
