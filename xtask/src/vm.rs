//! `cargo xtask vm-test`: wgtel on the kernel WireGuard module, in a QEMU virtual machine.
//!
//! The host kernel may lack the WireGuard module, so this boots Debian's own kernels (taken
//! from their packages with `apt-get download` and `dpkg-deb -x`, never installed) under TCG,
//! with an initramfs built here: busybox, the host's `ip` and `wg`, the release `wgtel`, the
//! modules the test needs, and the scripts of `tests/vm/`. The guest prints a verdict line on
//! the serial console; everything downloaded is cached under `.cache/vm/`.

mod apt;
mod cpio;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::apt::{Apt, Archive};
use super::{cache, cargo, debian_packages, output, release_build, run, setup};

/// Debian packages the host needs to build and boot the virtual machine.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "xz-utils", "binutils"];

/// Kernel modules the test loads (their dependencies are added): kernel WireGuard, the veth
/// underlay, and the clsact qdisc with the BPF classifier that wgtel attaches through on
/// kernels without tcx.
const MODULES: &[&str] = &["wireguard", "veth", "sch_ingress", "cls_bpf"];

/// A kernel the test boots: its short name (also the version prefix its package must have),
/// the meta package that depends on its newest build, and where that comes from.
#[derive(Clone, Copy, Debug)]
struct KernelSource {
    name: &'static str,
    meta: &'static str,
    archive: Archive,
}

/// The kernels the test boots: Debian bullseye's 5.10 (the oldest wgtel supports: clsact, no
/// drop reasons, which came with 5.17; its cloud flavour, which has every module of
/// [`MODULES`] and BTF, at a third of the plain one's size), bookworm's own 6.1 (no tcx: wgtel
/// attaches clsact filters) and its 6.12 (from bookworm-security: tcx links, and a `sk_buff`
/// and drop-reason enum laid out differently).
const KERNELS: &[KernelSource] = &[
    KernelSource {
        name: "5.10",
        meta: "linux-image-cloud-amd64",
        archive: Archive::Release("bullseye"),
    },
    KernelSource { name: "6.1", meta: "linux-image-amd64", archive: Archive::System },
    KernelSource { name: "6.12", meta: "linux-image-6.12-amd64", archive: Archive::System },
];

/// How long a guest may take, boot to verdict.
const TIMEOUT: Duration = Duration::from_secs(480);

/// The guest's verdict lines.
const PASS: &str = "WGTEL-VM: PASS";
const FAIL: &str = "WGTEL-VM: FAIL";

/// The helper binary the guest compares JSON with (`tests/src/bin/wgtel-vm-check.rs`).
const CHECKER: &str = "wgtel-vm-check";

/// Setup, release build, one initramfs per kernel, then boots every kernel (at once) and
/// checks each verdict.
pub fn vm_test(root: &Path) -> Result<()> {
    setup(root)?;
    debian_packages(HOST_PACKAGES)?;
    let wgtel = release_build(root)?;
    run(cargo(root).args(["build", "--release", "--package", "wgtel-tests", "--bin", CHECKER]))?;
    let checker = root.join("target/release").join(CHECKER);
    let dir = cache(root).join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = root.join("target/vm");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let busybox = busybox(&dir)?;
    // Without their debug information (80 MB of wgtel's 90): a smaller initramfs boots faster.
    let wgtel = stripped(&wgtel, &out)?;
    let checker = stripped(&checker, &out)?;
    let base = base_archive(root, &busybox, &wgtel, &checker)?;
    let mut guests = Vec::new();
    for source in KERNELS {
        let kernel = kernel(&dir, source)?;
        let initrd = out.join(format!("initrd-{}.cpio", source.name));
        initramfs(base.clone(), &kernel, &initrd)?;
        guests.push((kernel, initrd));
    }
    eprintln!(
        "vm-test: kernels {} ready in {:.1} s, booting",
        guests.iter().map(|(kernel, _)| kernel.version.as_str()).collect::<Vec<_>>().join(", "),
        started.elapsed().as_secs_f64()
    );
    let runs: Vec<_> = guests
        .into_iter()
        .map(|(kernel, initrd)| {
            let tag = kernel.name;
            (tag, thread::spawn(move || boot(tag, &kernel.vmlinuz, &initrd)))
        })
        .collect();
    let mut failures = Vec::new();
    for (tag, handle) in runs {
        match handle.join() {
            Ok(Ok(seconds)) => eprintln!("vm-test: {tag} passed in {seconds:.1} s"),
            Ok(Err(error)) => failures.push(format!("{tag}: {error:#}")),
            Err(_) => failures.push(format!("{tag}: the boot thread panicked")),
        }
    }
    if !failures.is_empty() {
        bail!("vm-test failed: {}", failures.join("; "));
    }
    eprintln!("vm-test: passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A copy of `binary` in `dir` without debug information.
fn stripped(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let name = binary.file_name().context("a binary without a name")?;
    let copy = dir.join(name);
    run(Command::new("strip").arg("--strip-debug").arg("-o").arg(&copy).arg(binary))?;
    Ok(copy)
}

/// A Debian kernel: its image and the modules the test loads, cached in `dir/linux-<name>`.
struct Kernel {
    /// Short name, e.g. `6.12`.
    name: &'static str,
    /// Its release, e.g. `6.1.0-56-amd64`.
    version: String,
    /// The bootable image.
    vmlinuz: PathBuf,
    /// [`MODULES`] with their dependencies, uncompressed, in load order.
    modules: Vec<PathBuf>,
}

/// The kernel `source` names, from the cache, else downloaded: only the image and the modules
/// of [`MODULES`] (with their dependencies, decompressed) are kept, not the package's 400 MB.
fn kernel(dir: &Path, source: &KernelSource) -> Result<Kernel> {
    let KernelSource { name, meta, archive } = *source;
    let kept = dir.join(format!("linux-{name}"));
    let stamp = kept.join("stamp");
    // The stamp: the release, then the module files in load order.
    let wanted = MODULES.join(",");
    if let Ok(text) = fs::read_to_string(&stamp) {
        let mut lines = text.lines();
        if let (Some(version), Some(modules)) = (lines.next(), lines.next())
            && modules == wanted
        {
            let files: Vec<PathBuf> = lines.map(|file| kept.join("modules").join(file)).collect();
            let vmlinuz = kept.join("vmlinuz");
            if vmlinuz.exists() && files.iter().all(|file| file.exists()) {
                return Ok(Kernel { name, version: version.to_owned(), vmlinuz, modules: files });
            }
        }
    }
    let apt = Apt::new(archive, dir)?;
    let packages = kernel_packages(&apt, meta)?;
    let version = packages[0]
        .strip_prefix("linux-image-")
        .map(|rest| rest.trim_end_matches("-unsigned").to_owned())
        .with_context(|| format!("unexpected kernel package name {}", packages[0]))?;
    if !version.starts_with(&format!("{name}.")) {
        bail!("{meta} depends on {}, not a {name} kernel", packages[0]);
    }
    let unpacked = dir.join(format!("linux-{name}.unpacked"));
    let _ = fs::remove_dir_all(&unpacked);
    unpack(&apt, dir, &packages, &unpacked)?;
    let _ = fs::remove_dir_all(&kept);
    let modules_dir = kept.join("modules");
    fs::create_dir_all(&modules_dir)
        .with_context(|| format!("creating {}", modules_dir.display()))?;
    let vmlinuz = kept.join("vmlinuz");
    let image = unpacked.join("boot").join(format!("vmlinuz-{version}"));
    fs::copy(&image, &vmlinuz).with_context(|| format!("copying {}", image.display()))?;
    let mut text = format!("{version}\n{wanted}\n");
    let mut files = Vec::new();
    for module in modules_in_load_order(&unpacked.join("lib/modules").join(&version))? {
        let (file, bytes) = module_file(&module)?;
        let path = modules_dir.join(&file);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        text.push_str(&file);
        text.push('\n');
        files.push(path);
    }
    fs::remove_dir_all(&unpacked).with_context(|| format!("removing {}", unpacked.display()))?;
    // Written last: a stamp means everything it names is there.
    fs::write(&stamp, text).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(Kernel { name, version, vmlinuz, modules: files })
}

/// A module's file name without a compression suffix, and its uncompressed bytes (Debian's
/// 5.10 and 6.1 ship plain `.ko` files, its 6.12 compresses them with xz, and busybox's insmod
/// takes only plain ones).
fn module_file(module: &Path) -> Result<(String, Vec<u8>)> {
    let name = module.file_name().and_then(|name| name.to_str()).context("module name")?;
    match name.strip_suffix(".xz") {
        Some(plain) => {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(module)
                .output()
                .with_context(|| format!("xz -dc {}", module.display()))?;
            if !out.status.success() {
                bail!("xz -dc {} failed: {}", module.display(), out.status);
            }
            Ok((plain.to_owned(), out.stdout))
        }
        None => Ok((
            name.to_owned(),
            fs::read(module).with_context(|| format!("reading {}", module.display()))?,
        )),
    }
}

/// The packages of the kernel `meta` depends on, in the order to try them: the unsigned one
/// when the lists know it (a mirror may still lack it: bullseye-security's cloud kernel has
/// none there), then the signed one, which boots the same without Secure Boot.
fn kernel_packages(apt: &Apt, meta: &str) -> Result<Vec<String>> {
    let depends = || output(apt.command("apt-cache").args(["depends", meta]));
    let depends = match depends() {
        Ok(depends) if depends.contains("Depends: linux-image-") => depends,
        // A fresh container has no package lists yet.
        _ => {
            run(apt.command("apt-get").args(["update", "-qq"]))?;
            depends()?
        }
    };
    let signed = depends
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .filter(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {meta} names no kernel (apt-get update?)"))?
        .trim()
        .to_owned();
    let unsigned = format!("{signed}-unsigned");
    let known = apt
        .command("apt-cache")
        .args(["show", &unsigned])
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
    Ok(if known { vec![unsigned, signed] } else { vec![signed] })
}

/// Downloads the first of `packages` the mirror has into `dir` and unpacks it into `into`.
fn unpack(apt: &Apt, dir: &Path, packages: &[String], into: &Path) -> Result<()> {
    let downloads = dir.join("downloads");
    let _ = fs::remove_dir_all(&downloads);
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    let mut failures = Vec::new();
    for package in packages {
        eprintln!("vm-test: downloading {package}");
        match output(
            apt.command("apt-get").args(["download", "-qq", package]).current_dir(&downloads),
        ) {
            Ok(_) => break,
            Err(error) => {
                let error = format!("{error:#}");
                eprintln!("vm-test: {package} could not be downloaded: {error}");
                failures.push(error);
            }
        }
    }
    let deb = fs::read_dir(&downloads)
        .with_context(|| format!("reading {}", downloads.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| {
            format!("no package of {} downloaded: {}", packages.join(", "), failures.join("; "))
        })?;
    let partial = into.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    fs::rename(&partial, into).with_context(|| format!("renaming to {}", into.display()))?;
    fs::remove_dir_all(&downloads).with_context(|| format!("removing {}", downloads.display()))
}

/// The static busybox of Debian's `busybox-static`, downloaded and unpacked into
/// `dir/busybox` unless it is there already.
fn busybox(dir: &Path) -> Result<PathBuf> {
    let unpacked = dir.join("busybox");
    if !unpacked.join("bin/busybox").exists() {
        let _ = fs::remove_dir_all(&unpacked);
        unpack(&Apt::new(Archive::System, dir)?, dir, &["busybox-static".to_owned()], &unpacked)?;
    }
    Ok(unpacked.join("bin/busybox"))
}

/// The part of the initramfs every kernel shares: busybox and its applets, `ip`, `tc`, `wg`,
/// `wgtel` and the checker with their shared libraries, `/init` and `/guest-test.sh`.
fn base_archive(
    root: &Path,
    busybox: &Path,
    wgtel: &Path,
    checker: &Path,
) -> Result<cpio::Archive> {
    let mut archive = cpio::Archive::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "proc", "sys", "dev", "run", "tmp",
        "etc", "var", "modules",
    ] {
        archive.dirs(dir);
    }
    archive.file("bin/busybox", &fs::read(busybox).context("reading busybox")?, 0o755);
    let binaries = [
        ("/usr/sbin/ip", "usr/sbin/ip"),
        ("/usr/sbin/tc", "usr/sbin/tc"),
        ("/usr/bin/wg", "usr/bin/wg"),
        (path_str(wgtel)?, "usr/bin/wgtel"),
        (path_str(checker)?, "usr/bin/wgtel-vm-check"),
    ];
    let provided: BTreeSet<&str> =
        binaries.iter().filter_map(|(_, to)| to.rsplit('/').next()).collect();
    let applets = output(Command::new(busybox).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if name == "busybox" || provided.contains(name) {
            continue;
        }
        archive.symlink(applet, "/bin/busybox");
    }
    let mut libraries = BTreeSet::new();
    for (from, to) in binaries {
        archive.file(to, &fs::read(from).with_context(|| format!("reading {from}"))?, 0o755);
        libraries.extend(shared_libraries(Path::new(from))?);
    }
    for library in libraries {
        let inside = library.trim_start_matches('/');
        let parent = Path::new(inside).parent().and_then(Path::to_str).unwrap_or("");
        archive.dirs(parent);
        archive.file(
            inside,
            &fs::read(&library).with_context(|| format!("reading {library}"))?,
            0o755,
        );
    }
    let scripts = root.join("tests/vm");
    for (from, to) in [("init.sh", "init"), ("guest-test.sh", "guest-test.sh")] {
        let path = scripts.join(from);
        archive.file(
            to,
            &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            0o755,
        );
    }
    Ok(archive)
}

/// Writes the initramfs of `kernel` to `initrd`: `base` and the kernel's modules with
/// `/modules/order`, their load order.
fn initramfs(mut archive: cpio::Archive, kernel: &Kernel, initrd: &Path) -> Result<()> {
    let mut order = String::new();
    for module in &kernel.modules {
        let name = module.file_name().and_then(|name| name.to_str()).context("module name")?;
        archive.file(
            &format!("modules/{name}"),
            &fs::read(module).with_context(|| format!("reading {}", module.display()))?,
            0o644,
        );
        order.push_str(name);
        order.push('\n');
    }
    archive.file("modules/order", order.as_bytes(), 0o644);
    fs::write(initrd, archive.finish()).with_context(|| format!("writing {}", initrd.display()))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The shared libraries `binary` loads, the dynamic loader included, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// [`MODULES`] and everything they depend on, dependencies first, as files of `modules`.
fn modules_in_load_order(modules: &Path) -> Result<Vec<PathBuf>> {
    let mut by_name = BTreeMap::new();
    index_modules(&modules.join("kernel"), &mut by_name)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for module in MODULES {
        visit(module, &by_name, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// Module name (dashes as underscores) to file, for every `.ko` (or `.ko.xz`) under `dir`.
fn index_modules(dir: &Path, by_name: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.is_dir() {
            index_modules(&path, by_name)?;
        } else if let Some(name) = path.file_name().and_then(|name| name.to_str())
            && let Some(stem) = name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz"))
        {
            by_name.insert(stem.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

/// Adds `module` after its dependencies (read from its `.modinfo` section) to `order`.
fn visit(
    module: &str,
    by_name: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<()> {
    let name = module.replace('-', "_");
    if depth > 32 {
        bail!("module dependencies of {name} nest too deep");
    }
    if !seen.insert(name.clone()) {
        return Ok(());
    }
    let path =
        by_name.get(&name).with_context(|| format!("no module {name} in the kernel package"))?;
    let (_, bytes) = module_file(path)?;
    for dependency in module_depends(&bytes) {
        visit(&dependency, by_name, seen, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` strings (NUL-separated `key=value`).
fn module_depends(bytes: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = bytes.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = &bytes[start + KEY.len()..];
    let end = value.iter().position(|&byte| byte == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Boots `vmlinuz` with `initrd` under QEMU's TCG, prints the console with `tag` and the
/// seconds since the boot before each line, and waits for the guest's verdict; the seconds it
/// took.
fn boot(tag: &str, vmlinuz: &Path, initrd: &Path) -> Result<f64> {
    let started = Instant::now();
    // One vCPU per guest: three vCPU threads for the host's two cores, not six (where a vCPU
    // may spin on a lock its descheduled sibling holds). Measured on a 2-core host busy with
    // other work (load 13 to 18): the stage took 219 and 242 s with two vCPUs per guest, 186
    // and 210 s with one; the two guests of before, with two each, 180 s.
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let (lines, received) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let stderr = child.stderr.take().context("qemu's stderr")?;
    let err_lines = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_lines.send(format!("qemu: {line}"));
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned();
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let verdict = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                eprintln!("{tag} {:5.1}| {line}", started.elapsed().as_secs_f64());
                let verdict = if line.contains(PASS) {
                    Some(Ok(()))
                } else if let Some(at) = line.find(FAIL) {
                    Some(Err(line[at..].to_owned()))
                } else if line.contains("Kernel panic") {
                    Some(Err(format!("kernel panic: {line}")))
                } else {
                    None
                };
                if let Some(verdict) = verdict {
                    break verdict;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!("no verdict within {} s", TIMEOUT.as_secs()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("the VM stopped without a verdict".to_owned());
            }
        }
    };
    // After a verdict the guest powers off by itself; give it a moment, then stop it.
    let stop = Instant::now() + Duration::from_secs(10);
    while Instant::now() < stop && child.try_wait().ok().flatten().is_none() {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    verdict.map_err(|reason| anyhow::anyhow!("{reason}"))?;
    Ok(started.elapsed().as_secs_f64())
}
