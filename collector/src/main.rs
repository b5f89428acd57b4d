//! The `wgtel` binary: `run` (the daemon), `status` and `demo`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use wgtel::{
    config::{RunArgs, RunConfig},
    demo::DemoArgs,
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

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (include/mimalloc.h), which
/// libmimalloc-sys 0.1.49 does not name.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_delay`, as above.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give freed memory back at once and commit arena memory only as it is used:
/// RSS at 10k peers 67 MB with its defaults, 43 MB with these set here (27 MB when set by
/// `MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=0` in the environment, read before
/// the first allocation; measured on this lab, see bench/REPORT.md).
fn return_freed_memory() {
    // SAFETY: mi_option_set only stores an option value; both options are read when memory
    // is committed or purged, so setting them early in main takes effect for what follows.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
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
    Run(RunArgs),
    /// One snapshot of every peer, from a running daemon's HTTP API.
    Status(StatusArgs),
    /// A throw-away lab with the daemon on it and a live per-peer view.
    Demo(DemoArgs),
}

fn main() -> ExitCode {
    return_freed_memory();
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

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = RunConfig::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wgtel")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(wgtel::run::run(config))?;
    Ok(())
}
