//! Developer commands: `cargo xtask setup | test | dist | demo | bench | soak | fuzz | vm-test`.
//!
//! Everything installed lands in `.cache/` (git-ignored) or comes from Debian's packages, so a
//! second `setup` only checks and returns in seconds.
//!
//! Longer than most modules: each tool setup installs has its installer and idempotence check
//! here, beside the lists of what is installed (fuzzing, packaging and the VM have modules of
//! their own).

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

mod dist;
mod fuzz;
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
    // `gro: true` labs turn GRO on for their veths.
    "ethtool",
    // promtool checks the alert rules in deploy/.
    "prometheus",
    // The fleet tests make their CA and certificates, and wgtel's https OTLP endpoints
    // need the system's roots.
    "openssl",
    "ca-certificates",
    // pahole: the kernel_layout test compares wgtel's BTF reading with it.
    "dwarves",
];

/// PyPI packages of the test receivers (the rotel OTLP agent, a Prometheus text parser) and
/// the Kubernetes schema check of `deploy/kubernetes/` (it carries the schemas: no cluster).
const PYTHON_PACKAGES: &[&str] =
    &["rotel==0.0.1a15", "prometheus_client==0.21.1", "kubernetes-validate==1.37.0"];

/// boringtun, the lab's third WireGuard implementation, from crates.io.
const BORINGTUN_CRATE: &str = "boringtun-cli";

/// Its version, pinned (the newest release).
const BORINGTUN_VERSION: &str = "0.7.1";

/// The current wireguard-go (UDP GSO and GRO): Debian trixie's package.
const WIREGUARD_GO_CURRENT_SUITE: &str = "trixie";

/// The package version taken from it (its binary calls itself v0.0.20230223: upstream did not
/// bump `version.go` for this snapshot).
const WIREGUARD_GO_CURRENT_VERSION: &str = "0.0.20231211";

/// The name it is kept under in `.cache/tools/bin`, beside bookworm's `/usr/bin/wireguard-go`.
const WIREGUARD_GO_CURRENT: &str = "wireguard-go-current";

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
    Setup {
        /// Only what `cargo build --release` needs (the nightly's rust-src, bpf-linker): no
        /// Debian packages, no lab tools, no mounts (a container build stage).
        #[arg(long)]
        build_only: bool,
    },
    /// Setup, lints, release build, then every test: unit, privileged lab tests, the soak,
    /// 20 s of each fuzz target and the kernel-WireGuard VM stage (a test filter does not skip
    /// it; only `--no-vm` does).
    Test {
        /// Skip the kernel-WireGuard VM stage (for a quick local run; CI never passes it).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, release build, then the release tarball and the `.deb` in `target/dist/`.
    Dist,
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
        /// Only the sections whose name starts with this: `per-packet`, `throughput` or
        /// `collection` (the report then holds only those).
        #[arg(long)]
        only: Option<String>,
    },
    /// Setup, release build, then wgtel under churn (as root): writes bench/SOAK.md, fails
    /// when an invariant breaks.
    Soak {
        /// Minutes of churn before the final measured phase (at least 2: 1 of warm-up).
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Where to write the report (default: bench/SOAK.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Setup, then every fuzz target (or TARGET) for N minutes each; fails on a crash,
    /// printing the input.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
        /// One target (uapi_get_reply, netlink_dump, underlay_packet, tunnel_packet,
        /// names_file, config_toml); default: all of them.
        target: Option<String>,
    },
    /// Setup, release build, then wgtel on the kernel WireGuard module in a QEMU VM.
    VmTest,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root()?;
    match cli.command {
        Task::Setup { build_only: true } => setup_build(&root),
        Task::Setup { build_only: false } => setup(&root),
        Task::Test { no_vm, args } => test(&root, no_vm, &args),
        Task::Dist => {
            setup(&root)?;
            let wgtel = release_build(&root)?;
            dist::dist(&root, &wgtel).map(drop)
        }
        Task::Demo { args } => demo(&root, &args),
        Task::Bench { quick, out, only } => bench(&root, quick, out, only.as_deref()),
        Task::Soak { minutes, out } => {
            setup(&root)?;
            let wgtel = release_build(&root)?;
            let report = out.unwrap_or_else(|| root.join("bench/SOAK.md"));
            soak(&root, &wgtel, minutes, &report)
        }
        Task::Fuzz { minutes, target } => {
            let targets = match target {
                None => fuzz::TARGETS.to_vec(),
                Some(name) => match fuzz::TARGETS.iter().find(|known| **known == name) {
                    Some(known) => vec![*known],
                    None => bail!("no fuzz target {name:?}; targets: {}", fuzz::TARGETS.join(", ")),
                },
            };
            setup(&root)?;
            fuzz::fuzz(&root, minutes.saturating_mul(60), &targets)
        }
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
    setup_build(root)?;
    python_venv(root)?;
    wireguard_go_current(root)?;
    boringtun(root)?;
    dist::cargo_deb(root)?;
    fuzz::cargo_fuzz(root)?;
    Ok(())
}

/// What the release build needs: the eBPF programs' toolchain.
fn setup_build(root: &Path) -> Result<()> {
    nightly_rust_src()?;
    let llvm = llvm_prefix(root)?;
    bpf_linker(root, &llvm)
}

/// Whether `program --version` runs and prints `expected`.
fn runs(program: &Path, expected: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(expected)
    })
}

/// boringtun-cli into `.cache/tools` unless it is there, built in a target folder of its own.
fn boringtun(root: &Path) -> Result<()> {
    let tools = cache(root).join("tools");
    if runs(&tools.join("bin").join(BORINGTUN_CRATE), BORINGTUN_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building {BORINGTUN_CRATE} {BORINGTUN_VERSION} into .cache/tools (minutes)");
    run(cargo(root)
        .args(["install", "--locked", "--quiet", "--root"])
        .arg(&tools)
        .args(["--version", BORINGTUN_VERSION, BORINGTUN_CRATE, "--target-dir"])
        .arg(cache(root).join("boringtun-target")))
}

/// Debian trixie's wireguard-go as `.cache/tools/bin/wireguard-go-current` unless it is there:
/// `apt-get download` with a configuration of its own under `.cache/apt-trixie` (sources,
/// lists, cache, hooks cleared), so the system's apt state is neither read for sources nor
/// changed.
fn wireguard_go_current(root: &Path) -> Result<()> {
    let binary = cache(root).join("tools/bin").join(WIREGUARD_GO_CURRENT);
    if runs(&binary, "wireguard-go") {
        return Ok(());
    }
    eprintln!(
        "setup: downloading wireguard-go {WIREGUARD_GO_CURRENT_VERSION} from Debian \
         {WIREGUARD_GO_CURRENT_SUITE}"
    );
    let apt = cache(root).join(format!("apt-{WIREGUARD_GO_CURRENT_SUITE}"));
    let config = private_apt_config(&apt, &debian_mirror()?)?;
    let apt_get = || {
        let mut command = Command::new("apt-get");
        command.env("APT_CONFIG", &config);
        command
    };
    run(apt_get().args(["update", "-qq"]))?;
    let download = apt.join("download");
    let _stale = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    run(apt_get().args(["download", "-qq", "wireguard-go"]).current_dir(&download))?;
    let deb = fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .context("apt-get download left no .deb")?;
    let version = output(Command::new("dpkg-deb").arg("--field").arg(&deb).arg("Version"))?;
    if !version.starts_with(WIREGUARD_GO_CURRENT_VERSION) {
        bail!(
            "Debian {WIREGUARD_GO_CURRENT_SUITE} has wireguard-go {}, not {WIREGUARD_GO_CURRENT_VERSION}",
            version.trim()
        );
    }
    let unpacked = download.join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    fs::create_dir_all(binary.parent().context("no bin folder")?)?;
    fs::copy(unpacked.join("usr/bin/wireguard-go"), &binary)
        .with_context(|| format!("installing {}", binary.display()))?;
    if !runs(&binary, "wireguard-go") {
        bail!("{} does not run", binary.display());
    }
    fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))
}

/// The Debian mirror of this system's own apt sources: the first `deb` entry of the main
/// archive (a suite without `-security` / `-updates`), from `/etc/apt/sources.list` (one-line
/// format) or `/etc/apt/sources.list.d/*.sources` (deb822 `URIs:`).
fn debian_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "sources" || extension == "list")
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .find_map(|text| mirror_in(&text))
        .context("no Debian main archive in /etc/apt/sources.list{,.d}")
}

/// The main archive's URI in one sources file, if it names one.
fn mirror_in(text: &str) -> Option<String> {
    let main_suite = |suite: &str| !suite.contains('-') && !suite.contains('/');
    // One-line format: `deb [options] URI SUITE COMPONENTS`.
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => {
                let Some((_, rest)) = options.split_once(']') else { continue };
                rest
            }
            None => rest,
        };
        let mut fields = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (fields.next(), fields.next())
            && main_suite(suite)
            && uri.contains("debian")
        {
            return Some(uri.to_owned());
        }
    }
    // deb822: stanzas separated by blank lines, `Types:`, `URIs:` and `Suites:` fields.
    text.split("\n\n").find_map(|stanza| {
        let field =
            |name: &str| stanza.lines().find_map(|line| line.strip_prefix(name).map(str::trim));
        let is_deb = field("Types:")?.split_whitespace().any(|kind| kind == "deb");
        let uri = field("URIs:")?.split_whitespace().next()?;
        let main = field("Suites:")?.split_whitespace().any(main_suite);
        (is_deb && main && uri.contains("debian")).then(|| uri.to_owned())
    })
}

/// An apt configuration of its own under `dir` (for `APT_CONFIG`, read before everything
/// else): sources naming `mirror` at the suite, lists, cache and state there; the system's
/// `apt.conf.d` settings (proxies, languages) copied, then its update and dpkg hooks cleared.
fn private_apt_config(dir: &Path, mirror: &str) -> Result<PathBuf> {
    let etc = dir.join("etc");
    let parts = etc.join("apt.conf.d");
    let _stale = fs::remove_dir_all(&etc);
    for folder in [
        parts.clone(),
        etc.join("sources.list.d"),
        dir.join("lists/partial"),
        dir.join("cache/archives/partial"),
    ] {
        fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/apt.conf.d") {
        for entry in entries.flatten() {
            fs::copy(entry.path(), parts.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    let hooks = [
        "APT::Update::Pre-Invoke",
        "APT::Update::Post-Invoke",
        "APT::Update::Post-Invoke-Success",
        "DPkg::Pre-Invoke",
        "DPkg::Post-Invoke",
    ];
    let mut private: String = hooks.iter().map(|hook| format!("#clear {hook};\n")).collect();
    // Only the package lists: no AppStream metadata.
    private.push_str("Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n");
    fs::write(parts.join("zz-wgtel-private"), private)?;
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources = etc.join("sources.list");
    fs::write(
        &sources,
        format!("deb [signed-by={keyring}] {mirror} {WIREGUARD_GO_CURRENT_SUITE} main\n"),
    )?;
    let path = |path: PathBuf| path.display().to_string();
    let config = etc.join("apt.conf");
    fs::write(
        &config,
        format!(
            "Dir::Etc::SourceList \"{}\";\n\
             Dir::Etc::SourceParts \"{}\";\n\
             Dir::Etc::Parts \"{}\";\n\
             Dir::State::Lists \"{}\";\n\
             Dir::Cache \"{}\";\n\
             APT::Sandbox::User \"root\";\n",
            path(sources),
            path(etc.join("sources.list.d")),
            path(parts),
            path(dir.join("lists")),
            path(dir.join("cache")),
        ),
    )?;
    Ok(config)
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

fn test(root: &Path, no_vm: bool, args: &[String]) -> Result<()> {
    setup(root)?;
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let wgtel = release_build(root)?;
    let packages = dist::dist(root, &wgtel)?;
    run(cargo(root)
        .args(["test", "--workspace"])
        .args(args)
        .env("WGTEL_BIN", &wgtel)
        .env("WGTEL_DEB", &packages.deb)
        .env("WGTEL_TARBALL", &packages.tarball)
        .env("WGTEL_VENV", cache(root).join("venv"))
        .env("WGTEL_TOOLS", cache(root).join("tools/bin")))?;
    soak_stage(root, &wgtel)?;
    fuzz::fuzz(root, fuzz::TEST_SECONDS, &fuzz::TARGETS)?;
    // The kernel WireGuard module in a VM: always, unless asked not to in so many words.
    if no_vm {
        eprintln!("xtask test: --no-vm: the kernel-WireGuard VM stage was NOT run");
        Ok(())
    } else {
        vm::vm_test(root)
    }
}

/// Minutes of churn of the soak run in `cargo xtask test`.
const TEST_SOAK_MINUTES: u64 = 3;

/// The soak of `cargo xtask test`: [`TEST_SOAK_MINUTES`] of churn, its report under `target/`
/// (bench/SOAK.md is the long run's).
fn soak_stage(root: &Path, wgtel: &Path) -> Result<()> {
    soak(root, wgtel, TEST_SOAK_MINUTES, &root.join("target/soak/SOAK.md"))
}

/// Builds `wgtel-soak` and runs it for `minutes` with the release daemon `wgtel`, writing
/// `report`. It fails when an invariant breaks, and checks itself that its lab left no
/// process, namespace or socket behind.
fn soak(root: &Path, wgtel: &Path, minutes: u64, report: &Path) -> Result<()> {
    run(cargo(root).args([
        "build",
        "--release",
        "--package",
        "wgtel-tests",
        "--bin",
        "wgtel-soak",
    ]))?;
    run(Command::new(root.join("target/release/wgtel-soak"))
        .arg("--minutes")
        .arg(minutes.to_string())
        .arg("--out")
        .arg(report)
        .env("WGTEL_BIN", wgtel)
        .env("WGTEL_VENV", cache(root).join("venv"))
        .env("WGTEL_TOOLS", cache(root).join("tools/bin")))?;
    eprintln!("soak: wrote {}", report.display());
    Ok(())
}

fn demo(root: &Path, args: &[String]) -> Result<()> {
    setup(root)?;
    let wgtel = release_build(root)?;
    run(Command::new(wgtel)
        .arg("demo")
        .args(args)
        .env("WGTEL_TOOLS", cache(root).join("tools/bin")))
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

fn bench(root: &Path, quick: bool, out: Option<PathBuf>, only: Option<&str>) -> Result<()> {
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
    if let Some(only) = only {
        command.env("WGTEL_BENCH_ONLY", only);
    }
    run(&mut command)?;
    eprintln!("bench: wrote {}", report.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mirror_in;

    #[test]
    fn the_main_archive_is_found_in_both_formats() {
        let deb822 = "Types: deb\n\
                      URIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\n\
                      Components: main\n\
                      \n\
                      Types: deb deb-src\n\
                      # a comment\n\
                      URIs: http://deb.debian.org/debian\n\
                      Suites: bookworm bookworm-updates\n\
                      Components: main\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://deb.debian.org/debian"));
        let one_line = "# deb http://old.example/debian bookworm main\n\
                        deb http://security.debian.org/debian-security bookworm-security main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main\n";
        assert_eq!(mirror_in(one_line).as_deref(), Some("http://ftp.example/debian"));
        assert_eq!(mirror_in("deb https://packages.cloud.google.com/apt cloud-sdk main\n"), None);
    }
}
