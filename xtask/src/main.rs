//! Developer commands: `cargo xtask setup | test | demo | bench`.
//!
//! Everything installed lands in `.cache/` (git-ignored) or comes from Debian's packages, so a
//! second `setup` only checks and returns in seconds.

use std::{
    env,
    ffi::OsStr,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod vm;

/// Debian packages the lab and the tests use.
const DEBIAN_PACKAGES: &[&str] = &[
    "wireguard-go",
    "wireguard-tools",
    "iperf3",
    "nftables",
    "tcpdump",
    "iproute2",
    "iputils-ping",
    // promtool checks the alert rules in deploy/.
    "prometheus",
];

/// PyPI packages of the test receivers: the rotel OTLP agent and a Prometheus text parser.
const PYTHON_PACKAGES: &[&str] = &["rotel==0.0.1a15", "prometheus_client==0.21.1"];

/// The exporter the benchmark compares collection against, from crates.io.
const EXPORTER_CRATE: &str = "prometheus_wireguard_exporter";

/// Its version, pinned so that reports compare like with like.
const EXPORTER_VERSION: &str = "3.6.6";

#[derive(Parser)]
#[command(about = "wgtel developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent, cached in .cache/).
    Setup,
    /// Setup, lints, release build, then every test: unit and privileged lab tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, release build, then `wgtel demo ARGS`.
    Demo {
        /// Arguments for `wgtel demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, release build, then the benchmarks (as root): writes bench/REPORT.md.
    Bench {
        /// Shorter loops, for a smoke run (the report says so in its sizes row).
        #[arg(long)]
        quick: bool,
        /// Where to write the report (default: bench/REPORT.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Setup, release build, then wgtel on the kernel WireGuard module in a QEMU VM.
    VmTest,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root()?;
    match cli.command {
        Task::Setup => setup(&root),
        Task::Test { args } => test(&root, &args),
        Task::Demo { args } => demo(&root, &args),
        Task::Bench { quick, out } => bench(&root, quick, out),
        Task::VmTest => vm::vm_test(&root),
    }
}

fn project_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest.parent().context("xtask has no parent directory")?.to_path_buf())
}

fn cache(root: &Path) -> PathBuf {
    root.join(".cache")
}

/// Runs `command`, failing with its rendering when it does not succeed.
fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its standard output.
fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

fn setup(root: &Path) -> Result<()> {
    debian_packages(DEBIAN_PACKAGES)?;
    tracefs()?;
    nightly_rust_src()?;
    let llvm = llvm_prefix(root)?;
    bpf_linker(root, &llvm)?;
    python_venv(root)?;
    Ok(())
}

/// Installs those of `packages` that are missing (idempotent; quiet when none are).
fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", package])
                .output()
                .map_or(true, |out| {
                    !String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // Without --no-install-recommends wireguard-tools drags in a kernel image.
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The kernel-drop tracepoint is attached through tracefs; systemd mounts it at boot, a bare
/// container may not have it.
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// A folder whose `lib/` holds the nightly's libLLVM under the names bpf-linker's build looks
/// for: `libLLVM.so` and the library's own soname.
fn llvm_prefix(root: &Path) -> Result<PathBuf> {
    let lib = nightly_sysroot()?.join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|name| name.starts_with("libLLVM.so.") || name.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let soname = llvm.file_name().context("libLLVM has no file name")?.to_owned();
    let prefix = cache(root).join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = prefix_lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == llvm) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

fn bpf_linker(root: &Path, llvm: &Path) -> Result<()> {
    let tools = cache(root).join("tools");
    let linker = tools.join("bin/bpf-linker");
    if linker.exists()
        && Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let major = llvm_major()?;
    eprintln!("setup: building bpf-linker against the nightly's LLVM {major} (about a minute)");
    run(Command::new("cargo")
        .args(["+nightly", "install", "--force", "--root"])
        .arg(&tools)
        .args(["bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", llvm))
}

/// The LLVM major version of the nightly, from `rustc +nightly -vV`.
fn llvm_major() -> Result<String> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let line = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?;
    Ok(line.split('.').next().unwrap_or(line).to_owned())
}

fn python_venv(root: &Path) -> Result<()> {
    let venv = cache(root).join("venv");
    let stamp = venv.join("wgtel-packages");
    let wanted = PYTHON_PACKAGES.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|have| have == wanted) {
        return Ok(());
    }
    eprintln!("setup: installing {} into .cache/venv", PYTHON_PACKAGES.join(" "));
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    command
}

fn release_build(root: &Path) -> Result<PathBuf> {
    run(cargo(root).args(["build", "--release", "--package", "wgtel"]))?;
    Ok(root.join("target/release/wgtel"))
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    setup(root)?;
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let wgtel = release_build(root)?;
    run(cargo(root)
        .args(["test", "--workspace"])
        .args(args)
        .env("WGTEL_BIN", &wgtel)
        .env("WGTEL_VENV", cache(root).join("venv")))?;
    // The kernel WireGuard module in a VM; skipped when a test filter is given.
    if args.is_empty() { vm::vm_test(root) } else { Ok(()) }
}

fn demo(root: &Path, args: &[String]) -> Result<()> {
    setup(root)?;
    let wgtel = release_build(root)?;
    run(Command::new(wgtel).arg("demo").args(args))
}

/// Installs prometheus_wireguard_exporter into `.cache/tools` unless it is there.
fn exporter(root: &Path) -> Result<()> {
    let tools = cache(root).join("tools");
    let installed = tools.join("bin").join(EXPORTER_CRATE);
    if Command::new(&installed)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(EXPORTER_VERSION))
    {
        return Ok(());
    }
    eprintln!("bench: installing {EXPORTER_CRATE} {EXPORTER_VERSION} into .cache/tools");
    run(cargo(root)
        .args(["install", "--locked", "--root"])
        .arg(&tools)
        .args(["--version", EXPORTER_VERSION, EXPORTER_CRATE])
        .arg("--target-dir")
        .arg(cache(root).join("exporter-target")))
}

fn bench(root: &Path, quick: bool, out: Option<PathBuf>) -> Result<()> {
    setup(root)?;
    if let Err(error) = exporter(root) {
        // The report then says the exporter was not measured.
        eprintln!("bench: {EXPORTER_CRATE} unavailable: {error:#}");
    }
    let wgtel = release_build(root)?;
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "wgtel-tests",
        "--bin",
        "wgtel-bench",
    ]))?;
    let report = out.unwrap_or_else(|| root.join("bench/REPORT.md"));
    let mut command = Command::new(root.join("target/release/wgtel-bench"));
    command.arg(&report).env("WGTEL_BIN", &wgtel);
    if quick {
        command.env("WGTEL_BENCH_QUICK", "1");
    }
    run(&mut command)?;
    eprintln!("bench: wrote {}", report.display());
    Ok(())
}
