//! `cargo xtask test-kernel`: the verifier counts, the packet tests and one
//! end-to-end test on Debian bookworm's 6.1 kernel, booted in QEMU.
//!
//! The kernel comes out of Debian's package (`apt-get download`, `dpkg-deb
//! -x` into target/kernel; the host's /boot is not touched). A busybox
//! initramfs loads virtio, 9p and overlay from the package's modules, mounts
//! the host's `/` read-only over 9p under a tmpfs overlay and runs the
//! host-built test binaries there, with the host's `ip`, `curl` and
//! `python3`. QEMU emulates (TCG): this machine's /dev/kvm cannot boot a
//! stock kernel. The guest prints `LB-VM:` markers on its serial console,
//! which is saved to target/kernel/serial.log and parsed here.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{build, cargo, lb_binary, output, require_root, setup, status};

mod guest;
use guest::{guest_script, initramfs};

/// Modules the guest loads (with their dependencies, found in each module's
/// `depends=`): the 9p root and its overlay, then what the tests build
/// (veth pairs, a bridge).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "bridge",
];

/// The tests the guest runs, in order: (marker name, test target, arguments).
const STEPS: &[(&str, &str, &[&str])] = &[
    ("verifier", "verifier", &["--nocapture"]),
    ("packet", "packet", &[]),
    (
        "integration",
        "integration",
        &["end_to_end_generic", "--exact", "--nocapture"],
    ),
];

/// Builds the tests, boots Debian's 6.1 kernel in QEMU on them and fails
/// unless every step passed in the guest; `timeout` bounds the VM's run.
///
/// # Errors
/// Set-up, download, build or boot fails, a step fails in the guest, or the
/// guest does not finish in time.
pub fn test_kernel(root: &Path, target: &Path, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    require_root("installing QEMU, and the guest's tests load XDP programs")?;
    setup()?;
    ensure_vm_packages()?;
    let dir = target.join("kernel");
    let kernel = debian_kernel(&dir)?;
    build(root)?;
    let tests = test_binaries(root)?;
    let script = guest_script(root, target, &tests);
    let initrd = initramfs(&dir, &kernel, &script)?;
    eprintln!(
        "xtask: booting {} in QEMU (TCG emulation, no KVM; a few minutes, at most {} s)",
        kernel.release,
        timeout.as_secs()
    );
    let boot = Instant::now();
    let log = run_qemu(&dir, &kernel.vmlinuz, &initrd, timeout)?;
    let vm_time = boot.elapsed();
    let summary = summarize(&log);
    eprintln!(
        "\nxtask: on {} (serial log in {}):\n{summary}\nxtask: VM {:.0} s, in all {:.0} s",
        kernel.release,
        dir.join("serial.log").display(),
        vm_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let passed = STEPS
        .iter()
        .all(|(name, _, _)| log.contains(&format!("LB-VM: end {name} exit=0")));
    ensure!(
        passed && log.contains("LB-VM: RESULT PASS"),
        "tests failed on {} (see above)",
        kernel.release
    );
    Ok(())
}

/// Installs QEMU and a static busybox (for the initramfs) when missing.
fn ensure_vm_packages() -> anyhow::Result<()> {
    let has = |check: &str| output(Command::new("sh").args(["-c", check])).is_some();
    if !has("command -v qemu-system-x86_64") {
        eprintln!(
            "xtask: installing qemu-system-x86 and qemu-utils (same version: a newer qemu-utils would block qemu-system-x86) from the distribution's packages"
        );
        let install = || {
            let version = candidate("qemu-system-x86").context("no qemu-system-x86 package")?;
            status(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .arg("--allow-downgrades")
                    .arg(format!("qemu-system-x86={version}"))
                    .arg(format!("qemu-utils={version}")),
            )
        };
        if install().is_err() {
            status(Command::new("apt-get").args(["update", "-q"]))?;
            install()?;
        }
    }
    if !has("dpkg-query -W -f '${Status}' busybox-static | grep -q 'ok installed'") {
        eprintln!(
            "xtask: installing busybox-static from the distribution's packages (the VM's initramfs)"
        );
        let install =
            || status(Command::new("apt-get").args(["install", "-y", "-q", "busybox-static"]));
        if install().is_err() {
            status(Command::new("apt-get").args(["update", "-q"]))?;
            install()?;
        }
    }
    Ok(())
}

/// The version apt would install of `package`.
fn candidate(package: &str) -> Option<String> {
    let policy = output(Command::new("apt-cache").args(["policy", package]))?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .map(String::from)
}

/// An extracted Debian kernel package.
struct Kernel {
    /// `uname -r` of it, for example `6.1.0-57-amd64`.
    release: String,
    vmlinuz: PathBuf,
    /// lib/modules/RELEASE.
    modules: PathBuf,
}

/// The kernel image package `linux-image-amd64` points to, downloaded and
/// extracted into `dir/PACKAGE` unless already there.
fn debian_kernel(dir: &Path) -> anyhow::Result<Kernel> {
    let depends = || {
        let out = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-"))
            .map(String::from)
    };
    let package = match depends() {
        Some(p) => p,
        None => {
            status(Command::new("apt-get").args(["update", "-q"]))?;
            depends().context("apt-cache finds no image package behind linux-image-amd64")?
        }
    };
    let tree = dir.join(&package);
    if !tree.join("boot").is_dir() {
        eprintln!(
            "xtask: downloading {package} and extracting it into {} (not installed on this host)",
            tree.display()
        );
        let download = dir.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        status(
            Command::new("apt-get")
                .current_dir(&download)
                .args(["download", "-q", &package]),
        )?;
        let deb = fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {package} gave no .deb"))?;
        let partial = dir.join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &tree)?;
        fs::remove_dir_all(&download)?;
    }
    let vmlinuz = fs::read_dir(tree.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| file_name(p).starts_with("vmlinuz-"))
        .with_context(|| format!("no boot/vmlinuz-* in {}", tree.display()))?;
    let release = file_name(&vmlinuz)["vmlinuz-".len()..].to_string();
    let modules = tree.join("lib/modules").join(&release);
    ensure!(modules.is_dir(), "no {}", modules.display());
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `.ko` files of `wanted` and of what they depend on, dependencies
/// first (the order `insmod` needs). Modules built into the kernel are left
/// out.
fn module_files(modules: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let name = |path: &Path| file_name(path).trim_end_matches(".ko").replace('-', "_");
    let mut files = HashMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "ko") {
                files.insert(name(&path), path);
            }
        }
    }
    let builtin: HashSet<String> = fs::read_to_string(modules.join("modules.builtin"))?
        .lines()
        .map(|l| name(Path::new(l)))
        .collect();

    fn visit(
        module: &str,
        files: &HashMap<String, PathBuf>,
        builtin: &HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        if builtin.contains(module) {
            return Ok(());
        }
        let path = files
            .get(module)
            .with_context(|| format!("no module {module} in the kernel package"))?;
        if order.contains(path) {
            return Ok(());
        }
        for dep in depends(path)? {
            visit(&dep, files, builtin, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut order = Vec::new();
    for module in wanted {
        visit(module, &files, &builtin, &mut order)?;
    }
    Ok(order)
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated
/// `key=value` strings), without parsing the ELF: the string appears once.
fn depends(ko: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = fs::read(ko)?;
    let key = b"\0depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let value = &bytes[at + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Ok(String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect())
}

/// The test executables built for the guest, by test target name; builds
/// them as `cargo test` would.
fn test_binaries(root: &Path) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut cmd = cargo();
    cmd.current_dir(root).args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "lb-tests",
    ]);
    for (_, target, _) in STEPS {
        cmd.args(["--test", target]);
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
    // One JSON object a line; the artifacts of tests carry "executable".
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(target), Some(exe)) = (
            line.split_once("\"target\":")
                .and_then(|(_, t)| json_str(t, "name")),
            json_str(line, "executable"),
        ) else {
            continue;
        };
        found.insert(target.to_string(), PathBuf::from(exe));
    }
    for (_, target, _) in STEPS {
        ensure!(
            found.contains_key(*target),
            "cargo built no test executable {target}"
        );
    }
    Ok(found)
}

/// The first string value of `"key"` in a line of cargo's JSON (paths and
/// names here hold no escaped characters).
fn json_str<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = json.split_once(&format!("\"{key}\":\""))?;
    rest.split_once('"').map(|(value, _)| value)
}

/// Boots the kernel with the initramfs, the serial console on stdout (echoed
/// and saved to `dir/serial.log`); kills QEMU after `timeout`. Returns the
/// serial output.
fn run_qemu(
    dir: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "2", "-m", "3G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut qemu = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = qemu.stdout.take().context("QEMU's stdout")?;
    let log_path = dir.join("serial.log");
    let mut log_file = fs::File::create(&log_path)?;
    let reader = thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            println!("guest| {line}");
            let _ = writeln!(log_file, "{line}");
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(exit) = qemu.try_wait()? {
            break exit;
        }
        if Instant::now() > deadline {
            eprintln!(
                "xtask: the VM did not finish within {} s: killing QEMU (pid {})",
                timeout.as_secs(),
                qemu.id()
            );
            qemu.kill()?;
            qemu.wait()?;
            let _ = reader.join();
            bail!("timeout; serial log in {}", log_path.display());
        }
        thread::sleep(Duration::from_millis(500));
    };
    let log = reader
        .join()
        .map_err(|_| anyhow::anyhow!("serial reader panicked"))?;
    ensure!(exit.success(), "QEMU exited with {exit}");
    Ok(log)
}

/// The lines of the serial log worth repeating: markers, the verifier's
/// counts and the test harness's verdicts.
fn summarize(log: &str) -> String {
    log.lines()
        .filter(|l| {
            l.contains("LB-VM:")
                || l.contains(" insns")
                || l.starts_with("test result:")
                || l.contains("... FAILED")
                || l.contains("panicked")
        })
        .map(|l| format!("  {l}\n"))
        .collect()
}
