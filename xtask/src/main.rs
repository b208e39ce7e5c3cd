//! `cargo xtask`: set-up, build, test (on the host's kernel, and on Debian 12's
//! in QEMU), demo, bench and run. Installs what a fresh machine lacks (the
//! pinned nightly with rust-src, bpf-linker 0.10.4, and the lab's programs)
//! before building, saying what it does.

mod demo_ha;
mod package;
mod progress;
mod target;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// The nightly that builds the eBPF crate; keep in sync with
/// lb-userspace/build.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
/// bpf-linker drives the LLVM inside that nightly; later versions need a
/// system LLVM 22.
const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Parser)]
#[command(about = "Build, test, demo and run the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: the eBPF toolchain, bpf-linker, and the
    /// programs the lab uses (ip, nsenter, curl, python3).
    Setup,
    /// Set up, then build the agent (with the XDP programs embedded).
    Build,
    /// Set up, build (the Debian package too), then run every test (unit,
    /// packet, integration, package); needs root.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the verifier counts, the packet tests and one
    /// end-to-end test on Debian bookworm's 6.1 kernel in QEMU; needs root.
    TestKernel {
        /// Kill the VM after this many minutes.
        #[arg(long, default_value_t = 15)]
        timeout_minutes: u64,
    },
    /// Set up, build, then run the namespace demo; needs root.
    Demo {
        /// Scale-out instead: a router with ECMP over two nodes announcing
        /// the VIP over BGP; one node stops in the middle.
        #[arg(long)]
        ha: bool,
        /// The VIP in `mode = "nat"`: backends need nothing (no VIP, no
        /// decapsulation, no sysctl), servers on port 8080.
        #[arg(long, conflicts_with = "ha")]
        nat: bool,
    },
    /// Set up, build in release mode, then run the benchmark as root; prints
    /// one table and writes it to target/bench/report.md, its chart to
    /// target/bench/report.svg and (unless --quick or --no-lab) docs/bench.svg.
    Bench {
        /// Extra arguments for `lb-bench` (for example `--quick`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then build the Debian package `lb` (cargo-deb) into
    /// target/debian/: lb, its systemd units, an example /etc/lb/lb.toml,
    /// man pages and completions.
    Package,
    /// Set up, build, then run `lb ARGS` as root (via sudo when not root).
    Run {
        /// Arguments for `lb`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Lint the host crates and the eBPF crate.
    Clippy,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    let mut metadata = cargo();
    metadata.current_dir(&root);
    let target = target::dir(metadata)?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build(&root)
        }
        Task::Test { args } => {
            setup()?;
            build(&root)?;
            require_root("the tests create network namespaces and load XDP programs")?;
            let promtool = ensure_promtool(&target)?;
            let variant = build_variant(&root, &target)?;
            let deb = package::package(&root, &target)?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .args(["test", "--all-targets"])
                .args(with_ignored(&args))
                .env("LB_BIN", lb_binary(&target))
                .env("LB_PROMTOOL", promtool)
                .env("LB_BIN_VARIANT", variant)
                .env("LB_DEB", deb);
            status(&mut cmd)
        }
        Task::TestKernel { timeout_minutes } => {
            vm::test_kernel(&root, &target, Duration::from_secs(timeout_minutes * 60))
        }
        Task::Demo { ha: true, .. } => {
            setup()?;
            build(&root)?;
            demo_ha::run(&target)
        }
        Task::Demo { ha: false, nat } => {
            setup()?;
            build(&root)?;
            let mut cmd = as_root(&target.join("debug/lb-demo"))?;
            cmd.env("LB_BIN", lb_binary(&target));
            if nat {
                cmd.env("LB_DEMO_NAT", "1");
            }
            status(&mut cmd)
        }
        Task::Bench { args } => {
            let mut steps = progress::Steps::new(3);
            steps.next("set-up (eBPF toolchain, bpf-linker, lab programs)");
            setup()?;
            // Release: the bench times userspace code (Maglev builds, config
            // apply) and runs the agent under load.
            steps.next("building lb and lb-bench (release)");
            // lb alone first, as `cargo xtask package` builds it: one release
            // build of lb serves both.
            package::build_release_lb(&root)?;
            status(cargo().current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "lb-bench",
                "--bins",
            ]))?;
            let release = target.join("release");
            steps.next("running the bench (a few minutes; it prints each section)");
            // Only a full run (with the lab's veth and HTTP rows) replaces
            // the picture the README shows.
            let quick = args.iter().any(|a| a == "--quick" || a == "--no-lab");
            status(
                as_root(&release.join("lb-bench"))?
                    .current_dir(&root)
                    .args(&args)
                    .env("LB_BIN", release.join("lb")),
            )?;
            // The README shows the latest full run's picture.
            let picture = target.join("bench/report.svg");
            if !quick && picture.is_file() && !args.iter().any(|a| a == "--out") {
                std::fs::copy(&picture, root.join("docs/bench.svg"))
                    .context("copying the bench's SVG to docs/bench.svg")?;
                eprintln!("xtask: {} copied to docs/bench.svg", picture.display());
            }
            steps.finish("bench");
            Ok(())
        }
        Task::Package => {
            setup()?;
            package::package(&root, &target).map(|_| ())
        }
        Task::Run { args } => {
            setup()?;
            build(&root)?;
            status(as_root(&lb_binary(&target))?.args(args))
        }
        Task::Clippy => {
            setup()?;
            ensure_ebpf_clippy()?;
            status(cargo().current_dir(&root).args([
                "clippy",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            status(
                Command::new("rustup")
                    .current_dir(root.join("lb-ebpf"))
                    .args([
                        "run",
                        EBPF_TOOLCHAIN,
                        "cargo",
                        "clippy",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                    ])
                    .args(["--bins", "--", "-D", "warnings"]),
            )
        }
    }
}

/// `cargo test` arguments `args` with the test binaries' `--include-ignored`
/// added after their `--` (one is added when `args` has none): the root-only
/// tests are `#[ignore]`d so that a plain `cargo test` reports them as not
/// run, and `cargo xtask test` runs them.
fn with_ignored(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    match args.iter().position(|a| a == "--") {
        Some(i) => args.insert(i + 1, "--include-ignored".into()),
        None => args.extend(["--".into(), "--include-ignored".into()]),
    }
    args
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The debug `lb` in cargo's target directory `target` ([`target::dir`]).
fn lb_binary(target: &Path) -> PathBuf {
    target.join("debug/lb")
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("run as root: {why} (for example: sudo -E cargo xtask ...)");
    }
    Ok(())
}

/// A command that runs `program` as root: directly when we are root, else via sudo.
fn as_root(program: &Path) -> anyhow::Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if output(Command::new("sh").args(["-c", "command -v sudo"])).is_none() {
        bail!("{} needs root and sudo is not installed", program.display());
    }
    let mut cmd = Command::new("sudo");
    cmd.args(["-E", "--"]).arg(program);
    Ok(cmd)
}

fn setup() -> anyhow::Result<()> {
    ensure_ebpf_toolchain()?;
    ensure_bpf_linker()?;
    ensure_lab_programs()
}

fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    let sysroot =
        output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"]));
    let has_src = sysroot.as_deref().is_some_and(|s| {
        Path::new(s.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    });
    if has_src {
        return Ok(());
    }
    eprintln!("xtask: installing Rust {EBPF_TOOLCHAIN} with rust-src (builds the XDP programs)");
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Clippy for the eBPF toolchain (set-up installs it with the minimal
/// profile, which has none).
fn ensure_ebpf_clippy() -> anyhow::Result<()> {
    if output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "cargo", "clippy", "--version"]))
        .is_some()
    {
        return Ok(());
    }
    eprintln!("xtask: installing clippy for Rust {EBPF_TOOLCHAIN} (lints the XDP programs)");
    status(Command::new("rustup").args([
        "component",
        "add",
        "clippy",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} (links the XDP programs; about a minute)"
    );
    status(cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
}

/// The lab (tests and demo) runs `ip`, `nsenter`, `prlimit`, `curl`, `ping`,
/// `python3` and BIRD 2 (`bird`, `birdc`: also what `lb run` drives for
/// `[bgp]`); the tests parse `/metrics` with Python's `prometheus_client`,
/// run `lb` with a unit's capabilities (`setpriv`) and check the systemd units
/// (`systemd-analyze`).
fn ensure_lab_programs() -> anyhow::Result<()> {
    // (shell check, Debian package)
    let needed = [
        ("command -v ip", "iproute2"),
        ("command -v nsenter && command -v prlimit", "util-linux"),
        ("command -v curl", "curl"),
        ("command -v ping", "iputils-ping"),
        ("command -v setpriv", "util-linux"),
        ("command -v systemd-analyze", "systemd"),
        ("command -v python3", "python3"),
        // BGP: `lb run` with [bgp] drives BIRD 2; the tests' router runs it too.
        (
            "command -v birdc && (command -v bird || test -x /usr/sbin/bird)",
            "bird2",
        ),
        (
            "/usr/bin/python3 -c 'import prometheus_client'",
            "python3-prometheus-client",
        ),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(check, _)| output(Command::new("sh").args(["-c", check])).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing programs for the namespace lab; install the packages {missing:?}");
    }
    eprintln!(
        "xtask: installing {missing:?} from the distribution's packages (the namespace lab uses them)"
    );
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )
}

/// `promtool` (checks `/metrics` in the tests): on PATH, else taken out of
/// Debian's `prometheus` package into `tools` under cargo's target directory
/// `target` without installing the package (which would start a Prometheus
/// server).
fn ensure_promtool(target: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = output(Command::new("sh").args(["-c", "command -v promtool"])) {
        return Ok(PathBuf::from(path.trim()));
    }
    let tools = target.join("tools");
    let promtool = tools.join("usr/bin/promtool");
    if promtool.is_file() {
        return Ok(promtool);
    }
    eprintln!(
        "xtask: extracting promtool from Debian's prometheus package into {} (the tests check /metrics with it)",
        tools.display()
    );
    let download = target.join("tools-download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    if status(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["download", "-q", "prometheus"]),
    )
    .is_err()
    {
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(Command::new("apt-get").current_dir(&download).args([
            "download",
            "-q",
            "prometheus",
        ]))?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download prometheus gave no .deb")?;
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tools))?;
    let _ = std::fs::remove_dir_all(&download);
    anyhow::ensure!(
        promtool.is_file(),
        "no usr/bin/promtool in {}",
        deb.display()
    );
    Ok(promtool)
}

/// Builds the upgrade test's second `lb`: the same agent whose `xdp_lb`
/// puts TTL 63 on outer headers (lb-ebpf feature `test-outer-ttl-63`), in
/// its own target directory (`variant` under `target`) so the main build is
/// not rebuilt back and forth.
fn build_variant(root: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let dir = target.join("variant");
    status(
        cargo()
            .current_dir(root)
            .args(["build", "-p", "lb-userspace", "--bin", "lb"])
            .env("LB_EBPF_FEATURES", "test-outer-ttl-63")
            .env("CARGO_TARGET_DIR", &dir),
    )?;
    Ok(dir.join("debug/lb"))
}

fn build(root: &Path) -> anyhow::Result<()> {
    status(cargo().current_dir(root).args([
        "build",
        "-p",
        "lb-userspace",
        "-p",
        "lb-tests",
        "--bins",
    ]))
}
