//! What `cargo xtask dist` ships, installed and run as an operator would: the `.deb` in a fresh
//! root (dpkg's own database there, nothing of this host's touched), the tarball unpacked, the
//! unit file checked by systemd's own tools, and the Kubernetes manifest by its schema.
//!
//! `cargo xtask test` builds both packages first and names them in `WGTEL_DEB` and
//! `WGTEL_TARBALL`; without them these tests fail, saying so.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The regular files the `.deb` installs, as `dpkg-deb --contents` lists them.
const DEB_FILES: [&str; 5] = [
    "./etc/wgtel.toml",
    "./lib/systemd/system/wgtel.service",
    "./usr/bin/wgtel",
    "./usr/share/doc/wgtel/README.md",
    "./usr/share/doc/wgtel/copyright",
];

/// What `wgtel run` prints when its configuration was read and it stopped at the first thing
/// after: the capability check (setpriv took every capability away).
const LACKS_CAP_BPF: &str = "wgtel run lacks CAP_BPF (";

fn package(variable: &str) -> PathBuf {
    let path = env::var_os(variable).unwrap_or_else(|| {
        panic!("{variable} is not set: run these tests through `cargo xtask test` (it builds the packages)")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{variable}={} is not a file", path.display());
    path
}

/// Runs `command`, failing the test when it cannot start; returns its output whatever its status.
fn output(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| panic!("starting {command:?}: {error}"))
}

/// Runs `command`, which must succeed; returns its standard output.
fn stdout(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A folder of this test's own under the temporary directory, empty, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = env::temp_dir().join(format!("wgtel-package-{name}-{}", std::process::id()));
        let _stale = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _gone = fs::remove_dir_all(&self.0);
    }
}

/// `wgtel run --config CONFIG` as root with every capability taken away: the error it stops at.
fn run_without_capabilities(wgtel: &Path, config: &Path) -> String {
    let out = output(
        Command::new("setpriv")
            .args(["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"])
            .arg(wgtel)
            .arg("run")
            .arg("--config")
            .arg(config),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// A dpkg database of its own in `root`, with this host's systemd units beside (the targets
/// the unit is ordered after, for `systemd-analyze verify`).
fn fresh_root(root: &Path) {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/lib/systemd"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    stdout(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(root.join("usr/lib/systemd")),
    );
}

fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    // No libc6 in the fresh root: the host's serves; nothing written to the host's dpkg log.
    command.arg(format!("--root={}", root.display())).args(["--force-depends", "--log=/dev/null"]);
    command
}

#[test]
fn the_deb_installs_into_a_fresh_root_runs_and_removes_cleanly() {
    let deb = package("WGTEL_DEB");
    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "wgtel");
    assert_eq!(field("Architecture").trim(), "amd64");
    assert!(field("Depends").starts_with("libc6 (>= "), "{}", field("Depends"));
    let version = field("Version");
    let upstream = version.trim().strip_suffix("-1").unwrap();

    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: BTreeSet<&str> = listing
        .lines()
        .filter(|line| line.starts_with('-'))
        .map(|line| line.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(files, BTreeSet::from(DEB_FILES));
    let binary = listing.lines().find(|line| line.ends_with("./usr/bin/wgtel")).unwrap();
    assert!(binary.starts_with("-rwxr-xr-x 0/0"), "{binary}");

    let scratch = Scratch::new("deb");
    let root = scratch.0.join("root");
    fresh_root(&root);
    stdout(dpkg(&root).arg("--install").arg(&deb));
    let status = stdout(dpkg(&root).args(["--status", "wgtel"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/wgtel.toml "), "{status}");

    let wgtel = root.join("usr/bin/wgtel");
    assert_eq!(stdout(Command::new(&wgtel).arg("--version")).trim(), format!("wgtel {upstream}"));
    // The shipped configuration is read (the run gets as far as the capability check) ...
    let config = root.join("etc/wgtel.toml");
    let error = run_without_capabilities(&wgtel, &config);
    assert!(error.contains(LACKS_CAP_BPF), "{error}");
    // ... which a configuration wgtel refuses does not reach.
    let broken = scratch.0.join("broken.toml");
    fs::write(&broken, fs::read_to_string(&config).unwrap().replace("\"10s\"", "\"soon\""))
        .unwrap();
    let error = run_without_capabilities(&wgtel, &broken);
    assert!(!error.contains(LACKS_CAP_BPF) && error.contains("soon"), "{error}");

    unit_checks(&root);

    stdout(dpkg(&root).args(["--remove", "wgtel"]));
    assert!(!wgtel.exists() && !root.join("lib/systemd/system/wgtel.service").exists());
    assert!(config.exists(), "a removed package keeps its conffile");
    stdout(dpkg(&root).args(["--purge", "wgtel"]));
    assert!(!config.exists(), "a purged package leaves no conffile");
}

/// The installed unit: systemd-analyze finds nothing to say about it, and rates its exposure
/// at 3.0 at most ("OK"; 2.5 when written).
fn unit_checks(root: &Path) {
    let root_arg = format!("--root={}", root.display());
    let verify =
        output(Command::new("systemd-analyze").args(["verify", &root_arg, "wgtel.service"]));
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(String::from_utf8_lossy(&verify.stderr), "", "systemd-analyze verify complains");
    let security = stdout(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        &root_arg,
        "--threshold=30",
        "wgtel.service",
    ]));
    assert!(security.contains("Overall exposure level for wgtel.service: 2.5 OK"), "{security}");
    // A unit systemd would refuse to start is caught: the binary missing.
    let unit = root.join("lib/systemd/system/wgtel.service");
    let text = fs::read_to_string(&unit).unwrap();
    fs::write(&unit, text.replace("/usr/bin/wgtel", "/usr/bin/wgtel-missing")).unwrap();
    let verify =
        output(Command::new("systemd-analyze").args(["verify", &root_arg, "wgtel.service"]));
    assert!(!verify.status.success(), "{verify:?}");
    fs::write(&unit, text).unwrap();
}

#[test]
fn the_tarball_unpacks_to_the_binary_the_unit_and_the_configuration() {
    let tarball = package("WGTEL_TARBALL");
    let name = tarball.file_name().unwrap().to_str().unwrap().strip_suffix(".tar.gz").unwrap();
    assert!(name.starts_with("wgtel-") && name.ends_with("-x86_64-linux"), "{name}");
    let listing =
        stdout(Command::new("tar").arg("--list").arg("--gzip").arg("--file").arg(&tarball));
    let entries: BTreeSet<&str> = listing.lines().collect();
    let expected: BTreeSet<String> = ["", "wgtel", "wgtel.service", "wgtel.toml", "README.md"]
        .iter()
        .map(|file| format!("{name}/{file}"))
        .collect();
    assert_eq!(entries, expected.iter().map(String::as_str).collect());

    let scratch = Scratch::new("tarball");
    stdout(
        Command::new("tar")
            .arg("--extract")
            .arg("--gzip")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&scratch.0),
    );
    let unpacked = scratch.0.join(name);
    let version = name.strip_prefix("wgtel-").unwrap().strip_suffix("-x86_64-linux").unwrap();
    let wgtel = unpacked.join("wgtel");
    assert_eq!(stdout(Command::new(&wgtel).arg("--version")).trim(), format!("wgtel {version}"));
    // Stripped: no section of debug information left.
    let sections = stdout(Command::new("readelf").arg("--section-headers").arg(&wgtel));
    assert!(!sections.contains(".debug_info"), "{sections}");
    let error = run_without_capabilities(&wgtel, &unpacked.join("wgtel.toml"));
    assert!(error.contains(LACKS_CAP_BPF), "{error}");
}

#[test]
fn the_kubernetes_manifest_passes_its_schema_and_its_configuration_is_read() {
    let venv =
        PathBuf::from(env::var_os("WGTEL_VENV").expect("WGTEL_VENV (cargo xtask test sets it)"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/wgtel.yaml");
    let report =
        stdout(Command::new(venv.join("bin/kubernetes-validate")).arg("--strict").arg(&manifest));
    for resource in ["namespace/wgtel", "configmap/wgtel", "daemonset/wgtel"] {
        assert!(report.contains(&format!("passed for resource {resource} ")), "{report}");
    }
    // The same check refuses a misspelt field: it is strict.
    let scratch = Scratch::new("kubernetes");
    let misspelt = scratch.0.join("misspelt.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&misspelt, text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem")).unwrap();
    let refused =
        output(Command::new(venv.join("bin/kubernetes-validate")).arg("--strict").arg(&misspelt));
    assert!(!refused.status.success(), "{refused:?}");

    // The DaemonSet's capabilities are the README's three, and its wgtel.toml is one wgtel reads.
    let document = |selector: &str| {
        let script = format!(
            "import sys, yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    {selector}"
        );
        stdout(Command::new(venv.join("bin/python")).arg("-c").arg(script).arg(&manifest))
    };
    let capabilities = document(
        "if d['kind'] == 'DaemonSet': print(d['spec']['template']['spec']['containers'][0]['securityContext']['capabilities'])",
    );
    assert_eq!(capabilities.trim(), "{'drop': ['ALL'], 'add': ['BPF', 'NET_ADMIN', 'PERFMON']}");
    let config = scratch.0.join("wgtel.toml");
    fs::write(&config, document("if d['kind'] == 'ConfigMap': print(d['data']['wgtel.toml'])"))
        .unwrap();
    let wgtel =
        PathBuf::from(env::var_os("WGTEL_BIN").expect("WGTEL_BIN (cargo xtask test sets it)"));
    let error = run_without_capabilities(&wgtel, &config);
    assert!(error.contains(LACKS_CAP_BPF), "{error}");
}
