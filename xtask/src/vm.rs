//! `cargo xtask vm-test`: wgtel on the kernel WireGuard module, in a QEMU virtual machine.
//!
//! The host kernel may lack the WireGuard module, so this boots Debian's own kernel (taken
//! from its package with `apt-get download` and `dpkg-deb -x`, never installed) under TCG,
//! with an initramfs built here: busybox, the host's `ip` and `wg`, the release `wgtel`, the
//! modules the test needs, and the scripts of `tests/vm/`. The guest prints a verdict line on
//! the serial console; everything downloaded is cached under `.cache/vm/`.

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

use super::{cache, debian_packages, output, release_build, run, setup};

/// Debian packages the host needs to build and boot the virtual machine.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86"];

/// Kernel modules the test loads (their dependencies are added): kernel WireGuard, the veth
/// underlay, and the clsact qdisc with the BPF classifier that wgtel attaches through on
/// kernels without tcx.
const MODULES: &[&str] = &["wireguard", "veth", "sch_ingress", "cls_bpf"];

/// How long the guest may take, boot to verdict.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's verdict lines.
const PASS: &str = "WGTEL-VM: PASS";
const FAIL: &str = "WGTEL-VM: FAIL";

/// Setup, release build, initramfs, then boots the VM and checks its verdict.
pub fn vm_test(root: &Path) -> Result<()> {
    setup(root)?;
    debian_packages(HOST_PACKAGES)?;
    let wgtel = release_build(root)?;
    let dir = cache(root).join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let kernel = kernel(&dir)?;
    let busybox = busybox(&dir)?;
    let initrd = dir.join("initrd.cpio");
    initramfs(root, &kernel, &busybox, &wgtel, &initrd)?;
    eprintln!(
        "vm-test: kernel {} ready in {:.1} s, booting",
        kernel.version,
        started.elapsed().as_secs_f64()
    );
    boot(&kernel.vmlinuz, &initrd)?;
    eprintln!("vm-test: passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A Debian kernel, unpacked.
struct Kernel {
    /// Its release, e.g. `6.1.0-56-amd64`.
    version: String,
    /// The bootable image.
    vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the package.
    modules: PathBuf,
}

/// The kernel of Debian's `linux-image-amd64` (its `-unsigned` build where there is one),
/// downloaded and unpacked into `dir/kernel` unless it is there already.
fn kernel(dir: &Path) -> Result<Kernel> {
    let unpacked = dir.join("kernel");
    let stamp = dir.join("kernel.version");
    let version = match fs::read_to_string(&stamp) {
        Ok(version)
            if unpacked.join("boot").join(format!("vmlinuz-{}", version.trim())).exists() =>
        {
            version.trim().to_owned()
        }
        _ => {
            let package = kernel_package()?;
            let version = package
                .strip_prefix("linux-image-")
                .map(|rest| rest.trim_end_matches("-unsigned").to_owned())
                .with_context(|| format!("unexpected kernel package name {package}"))?;
            eprintln!("vm-test: downloading {package}");
            let _ = fs::remove_dir_all(&unpacked);
            unpack(dir, &package, &unpacked)?;
            fs::write(&stamp, &version).with_context(|| format!("writing {}", stamp.display()))?;
            version
        }
    };
    Ok(Kernel {
        vmlinuz: unpacked.join("boot").join(format!("vmlinuz-{version}")),
        modules: unpacked.join("lib/modules").join(&version),
        version,
    })
}

/// The package name of the kernel `linux-image-amd64` depends on, unsigned if available.
fn kernel_package() -> Result<String> {
    let depends = match output(Command::new("apt-cache").args(["depends", "linux-image-amd64"])) {
        Ok(depends) if depends.contains("Depends: linux-image-") => depends,
        // A fresh container has no package lists yet.
        _ => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?
        }
    };
    let signed = depends
        .lines()
        .find_map(|line| line.trim().strip_prefix("Depends: "))
        .filter(|name| name.starts_with("linux-image-"))
        .context("apt-cache depends linux-image-amd64 names no kernel (apt-get update?)")?
        .trim()
        .to_owned();
    let unsigned = format!("{signed}-unsigned");
    let known = Command::new("apt-cache")
        .args(["show", &unsigned])
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty());
    Ok(if known { unsigned } else { signed })
}

/// Downloads Debian package `package` into `dir` and unpacks it into `into`.
fn unpack(dir: &Path, package: &str, into: &Path) -> Result<()> {
    let downloads = dir.join("downloads");
    let _ = fs::remove_dir_all(&downloads);
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    run(Command::new("apt-get").args(["download", "-qq", package]).current_dir(&downloads))?;
    let deb = fs::read_dir(&downloads)
        .with_context(|| format!("reading {}", downloads.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
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
        eprintln!("vm-test: downloading busybox-static");
        let _ = fs::remove_dir_all(&unpacked);
        unpack(dir, "busybox-static", &unpacked)?;
    }
    Ok(unpacked.join("bin/busybox"))
}

/// Writes the initramfs to `initrd`: busybox and its applets, `ip`, `tc`, `wg`, `wgtel` with their
/// shared libraries, the modules in load order, `/init` and `/guest-test.sh`.
fn initramfs(
    root: &Path,
    kernel: &Kernel,
    busybox: &Path,
    wgtel: &Path,
    initrd: &Path,
) -> Result<()> {
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
    let mut order = String::new();
    for module in modules_in_load_order(&kernel.modules)? {
        let name = module.file_name().and_then(|name| name.to_str()).context("module name")?;
        archive.file(
            &format!("modules/{name}"),
            &fs::read(&module).with_context(|| format!("reading {}", module.display()))?,
            0o644,
        );
        order.push_str(name);
        order.push('\n');
    }
    archive.file("modules/order", order.as_bytes(), 0o644);
    let scripts = root.join("tests/vm");
    for (from, to) in [("init.sh", "init"), ("guest-test.sh", "guest-test.sh")] {
        let path = scripts.join(from);
        archive.file(
            to,
            &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            0o755,
        );
    }
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

/// Module name (dashes as underscores) to file, for every `.ko` under `dir`.
fn index_modules(dir: &Path, by_name: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.is_dir() {
            index_modules(&path, by_name)?;
        } else if let Some(name) = path.file_name().and_then(|name| name.to_str())
            && let Some(stem) = name.strip_suffix(".ko")
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
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
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

/// Boots `vmlinuz` with `initrd` under QEMU's TCG and waits for the guest's verdict.
fn boot(vmlinuz: &Path, initrd: &Path) -> Result<()> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
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
                eprintln!("guest| {line}");
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
    verdict.map_err(|reason| anyhow::anyhow!("vm-test failed: {reason}"))
}
