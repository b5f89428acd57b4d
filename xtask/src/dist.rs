//! `cargo xtask dist`: the release tarball and the `.deb` of the release build.
//!
//! Both carry the same four files: the stripped binary, the hardened systemd unit, the default
//! `/etc/wgtel.toml` and the README. The `.deb` is cargo-deb's, from `[package.metadata.deb]` in
//! `collector/Cargo.toml`; `tests/tests/package.rs` installs it into a fresh root.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cache, cargo, output, run, runs};

/// cargo-deb, from crates.io, pinned.
const CARGO_DEB_VERSION: &str = "3.6.3";

/// What `dist` wrote.
pub struct Dist {
    /// `target/dist/wgtel_VERSION-1_ARCH.deb`.
    pub deb: PathBuf,
    /// `target/dist/wgtel-VERSION-ARCH-linux.tar.gz`, one folder of the same name inside.
    pub tarball: PathBuf,
}

/// cargo-deb into `.cache/tools` unless it is there (a few minutes the first time).
pub fn cargo_deb(root: &Path) -> Result<()> {
    let tools = cache(root).join("tools");
    if runs(&tools.join("bin/cargo-deb"), CARGO_DEB_VERSION) {
        return Ok(());
    }
    eprintln!("setup: building cargo-deb {CARGO_DEB_VERSION} into .cache/tools (minutes)");
    run(cargo(root)
        .args(["install", "--locked", "--quiet", "--root"])
        .arg(&tools)
        .args(["--version", CARGO_DEB_VERSION, "cargo-deb", "--target-dir"])
        .arg(cache(root).join("cargo-deb-target")))
}

/// Packs the release binary `wgtel` into `target/dist/`, replacing what an earlier run left.
pub fn dist(root: &Path, wgtel: &Path) -> Result<Dist> {
    let out = root.join("target/dist");
    let _stale = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    run(Command::new(cache(root).join("tools/bin/cargo-deb"))
        .current_dir(root)
        .args(["--package", "wgtel", "--no-build", "--strip", "--output"])
        .arg(&out))?;
    let deb = only_file_with_extension(&out, "deb")?;
    let tarball = tarball(root, wgtel, &out)?;
    eprintln!("dist: {}\ndist: {}", deb.display(), tarball.display());
    Ok(Dist { deb, tarball })
}

/// `wgtel-VERSION-ARCH-linux.tar.gz` in `out`.
fn tarball(root: &Path, wgtel: &Path, out: &Path) -> Result<PathBuf> {
    let version = output(Command::new(wgtel).arg("--version"))?;
    let version = version
        .trim()
        .strip_prefix("wgtel ")
        .with_context(|| format!("`wgtel --version` printed {version:?}"))?;
    let name = format!("wgtel-{version}-{}-linux", env::consts::ARCH);
    let staging = out.join(&name);
    fs::create_dir_all(&staging)?;
    run(Command::new("strip").arg("-o").arg(staging.join("wgtel")).arg(wgtel))?;
    for (from, to) in [
        ("deploy/systemd/wgtel.service", "wgtel.service"),
        ("deploy/wgtel.toml", "wgtel.toml"),
        ("README.md", "README.md"),
    ] {
        fs::copy(root.join(from), staging.join(to))
            .with_context(|| format!("copying {from} into the tarball"))?;
    }
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("--create")
        .arg("--gzip")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("--file")
        .arg(&tarball)
        .arg("--directory")
        .arg(out)
        .arg(&name))?;
    fs::remove_dir_all(&staging)?;
    Ok(tarball)
}

/// The one file in `dir` whose name ends in `.extension`.
fn only_file_with_extension(dir: &Path, extension: &str) -> Result<PathBuf> {
    let mut found = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|found| found == extension));
    match (found.next(), found.next()) {
        (Some(path), None) => Ok(path),
        (None, _) => bail!("cargo-deb left no .{extension} in {}", dir.display()),
        (Some(_), Some(_)) => bail!("more than one .{extension} in {}", dir.display()),
    }
}
