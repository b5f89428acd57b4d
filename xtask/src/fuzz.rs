//! Fuzzing: cargo-fuzz into `.cache/tools`, and runs of the targets of `fuzz/` (a workspace of
//! its own) on the nightly toolchain `setup` installs for the eBPF build.
//!
//! Builds are instrumented for coverage without a sanitizer (`-s none`: the code under test is
//! safe Rust, where a bug is a panic, not a silent memory error) and with debug assertions, so
//! an arithmetic overflow is a crash too. New inputs a run finds go to a scratch corpus under
//! `fuzz/target/`; the committed seeds in `fuzz/corpus/TARGET` are only read.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cache, run};

/// The fuzz targets, as `fuzz/Cargo.toml` names them.
pub(crate) const TARGETS: [&str; 6] = [
    "uapi_get_reply",
    "netlink_dump",
    "underlay_packet",
    "tunnel_packet",
    "names_file",
    "config_toml",
];

/// cargo-fuzz, pinned.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds each target runs in `cargo xtask test`.
pub(crate) const TEST_SECONDS: u64 = 20;

/// Installs cargo-fuzz into `.cache/tools` unless that version is there.
pub(crate) fn cargo_fuzz(root: &Path) -> Result<()> {
    let tools = cache(root).join("tools");
    if crate::runs(&tools.join("bin/cargo-fuzz"), CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} into .cache/tools (a minute)");
    run(crate::cargo(root)
        .args(["install", "--locked", "--quiet", "--root"])
        .arg(&tools)
        .args(["--version", CARGO_FUZZ_VERSION, "cargo-fuzz", "--target-dir"])
        .arg(cache(root).join("cargo-fuzz-target")))
}

/// `cargo +nightly fuzz ARGS` in the project root, cargo-fuzz found in `.cache/tools/bin`,
/// wgtel built without its eBPF object (the targets do not load it).
fn cargo_fuzz_command(root: &Path) -> Result<Command> {
    let tools = cache(root).join("tools/bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(tools).chain(env::split_paths(&path)))
        .context("PATH with .cache/tools/bin")?;
    let mut command = Command::new("cargo");
    command
        .args(["+nightly", "fuzz"])
        .current_dir(root)
        .env("PATH", path)
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO");
    Ok(command)
}

/// What one run of a target did, from libFuzzer's output.
struct Summary {
    target: &'static str,
    executions: u64,
    edges: u64,
}

/// Builds the targets, runs each of `targets` for `seconds` and prints executions and
/// covered edges per target; fails on the first crash, timeout or out-of-memory, printing the
/// input that caused it.
pub(crate) fn fuzz(root: &Path, seconds: u64, targets: &[&'static str]) -> Result<()> {
    run(cargo_fuzz_command(root)?.args(["build", "-s", "none", "--debug-assertions"]))?;
    let logs = root.join("target/fuzz");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut summaries = Vec::new();
    for &target in targets {
        summaries.push(run_target(root, &logs, target, seconds)?);
    }
    eprintln!("fuzz: {seconds} s per target, no crash");
    eprintln!("{:<16} {:>12} {:>6}", "target", "executions", "edges");
    for Summary { target, executions, edges } in summaries {
        eprintln!("{target:<16} {executions:>12} {edges:>6}");
    }
    Ok(())
}

/// One target's run; its libFuzzer output goes to `logs/TARGET.log`.
fn run_target(root: &Path, logs: &Path, target: &'static str, seconds: u64) -> Result<Summary> {
    let scratch = root.join("fuzz/target/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    for dir in [&scratch, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let before = artifact_files(&artifacts)?;
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("fuzz: {target} for {seconds} s (output in {})", log_path.display());
    let status = cargo_fuzz_command(root)?
        .args(["run", "-s", "none", "--debug-assertions", target])
        .arg(&scratch)
        .arg(root.join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let output =
        fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        for crash in artifact_files(&artifacts)?.into_iter().filter(|f| !before.contains(f)) {
            let bytes = fs::read(&crash).with_context(|| format!("reading {}", crash.display()))?;
            eprintln!("fuzz: {target} crash input {}: {}", crash.display(), escaped(&bytes));
        }
        bail!("fuzz target {target} failed: {status} (log {})", log_path.display());
    }
    summary(target, &output)
        .with_context(|| format!("libFuzzer's output in {}", log_path.display()))
}

/// The files in `dir`.
fn artifact_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
}

/// `bytes` printable: ASCII as is, the rest as `\xNN`.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|byte| std::ascii::escape_default(*byte)).map(char::from).collect()
}

/// Executions (`stat::number_of_executed_units`) and covered edges (the last `cov:`) of a
/// finished run.
fn summary(target: &'static str, output: &str) -> Result<Summary> {
    let executions = output
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .context("no stat::number_of_executed_units")?
        .trim()
        .parse()
        .context("executions")?;
    let edges = output
        .lines()
        .rev()
        .find_map(|line| line.split_once(" cov: ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no cov: line")?
        .parse()
        .context("edges")?;
    Ok(Summary { target, executions, edges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_libfuzzers_final_lines() {
        let output = "#2\tINITED cov: 120 ft: 130 corp: 3/1Kb exec/s: 0 rss: 40Mb\n\
                      #4096\tpulse  cov: 151 ft: 200 corp: 9/2Kb lim: 43 exec/s: 2048 rss: 41Mb\n\
                      #70000\tDONE   cov: 163 ft: 240 corp: 12/3Kb lim: 128 exec/s: 3500 rss: 42Mb\n\
                      Done 70000 runs in 21 second(s)\n\
                      stat::number_of_executed_units: 70001\n\
                      stat::average_exec_per_sec:     3333\n";
        let read = summary("names_file", output).expect("parses");
        assert_eq!((read.executions, read.edges), (70_001, 163));
        assert!(summary("names_file", "Done 3 runs\n").is_err());
        assert_eq!(escaped(b"a=\x00\n"), "a=\\x00\\n");
    }
}
