//! Rebuild the eBPF object when the bpf-linker it is linked with changes.
//!
//! The link step has an undeclared dependency on `bpf-linker` (cargo has no artifact
//! dependencies on binaries yet); tracking the binary's path is the closest cargo offers.

use std::path::Path;

fn main() {
    let project_linker =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tools/bin/bpf-linker");
    let linker =
        if project_linker.exists() { Ok(project_linker) } else { which::which("bpf-linker") };
    if let Ok(linker) = linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
