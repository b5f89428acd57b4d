//! Builds the eBPF programs (`collector-ebpf`) for the BPF target with aya-build and leaves the
//! object in `OUT_DIR`, where `src/ebpf` includes it.
//!
//! Without bpf-linker (a machine where `cargo xtask setup` has not run) or with
//! `AYA_BUILD_SKIP=1`, an empty stub takes the object's place so that `cargo check` and
//! clippy still work; such a binary refuses to `run` with a message naming the fix.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const EBPF_OBJECT: &str = "collector";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let linker = manifest_dir.join("../.cache/tools/bin/bpf-linker");
    println!("cargo:rerun-if-changed={}", linker.display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip =
        env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || !linker.exists() {
        println!(
            "cargo:warning=building wgtel without its eBPF programs ({}); run `cargo xtask setup`",
            if skip { "AYA_BUILD_SKIP is set" } else { "no bpf-linker in .cache/tools" }
        );
        fs::write(out_dir.join(EBPF_OBJECT), []).context("writing the eBPF stub")?;
        return Ok(());
    }
    let ebpf_dir = manifest_dir.join("../collector-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to collector-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "collector-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
