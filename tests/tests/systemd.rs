//! The systemd units in `packaging/systemd`: `systemd-analyze verify` passes
//! on them, and the capabilities they grant (`CapabilityBoundingSet=`)
//! suffice: under exactly that set, `lb run --keep-attached` starts fresh,
//! tells systemd it is ready, stops leaving the data plane attached, a second
//! agent adopts it, `lb detach` removes it, and `lb decap` attaches and
//! detaches.
//!
//! `verify` checks that every command a unit runs exists: the copies it
//! verifies have `/usr/bin/lb` replaced by the binary under test (the
//! package test verifies the installed units as they are).

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{lab::lb_binary, netns::Netns};

/// Where the units are installed from.
fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

const UNITS: [&str; 2] = ["lb.service", "lb-decap@.service"];

fn unit(name: &str) -> String {
    fs::read_to_string(units_dir().join(name)).expect("unit file")
}

/// The `CapabilityBoundingSet=` of a unit as `setpriv --bounding-set`
/// wants it: `-all,+bpf,+net_admin,...`.
fn bounding_set(unit: &str) -> String {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let mut set = String::from("-all");
    for cap in line.split_whitespace() {
        let cap = cap.strip_prefix("CAP_").expect("CAP_ name");
        set.push_str(&format!(",+{}", cap.to_lowercase()));
    }
    set
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn verify(files: &[PathBuf]) -> Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(files)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)")
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = TempDir::new("lbsd-verify");
    let lb = lb_binary().expect("lb binary");
    let lb = lb.display().to_string();
    let mut files = Vec::new();
    for name in UNITS {
        let text = unit(name);
        assert!(text.contains("/usr/bin/lb "), "{name} runs /usr/bin/lb");
        let path = dir.0.join(name);
        fs::write(&path, text.replace("/usr/bin/lb ", &format!("{lb} "))).expect("write");
        files.push(path);
    }
    let out = verify(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check can fail: a unit whose program is missing does not pass.
    let broken = dir.0.join("lb-broken.service");
    fs::write(
        &broken,
        unit("lb.service").replace("/usr/bin/lb ", "/nonexistent/lb "),
    )
    .expect("write");
    let out = verify(&[broken]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const IFACE: &str = "lbsd0";
const PEER: &str = "lbsd1";

/// The namespace, the agent or decap it runs, its files and pins; removed
/// on drop, processes first.
struct Rig {
    dir: TempDir,
    child: Option<Child>,
    notify: UnixDatagram,
    ns: Netns,
}

impl Rig {
    fn new() -> Self {
        let ns = Netns::new("lbsd-lb").expect("netns");
        ns.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", PEER])
            .expect("veth");
        ns.ip(&["addr", "add", "10.52.0.2/24", "dev", IFACE])
            .expect("addr");
        for dev in [IFACE, PEER] {
            ns.ip(&["link", "set", "dev", dev, "up"]).expect("up");
        }
        let dir = TempDir::new("lbsd");
        fs::write(
            dir.0.join("lb.toml"),
            format!(
                "interface = \"{IFACE}\"\nxdp_mode = \"generic\"\n[maglev]\ntable_size = 251\n[[vip]]\nname = \"web\"\naddress = \"10.52.0.100\"\nport = 80\nprotocol = \"tcp\"\n  [vip.health_check]\n  kind = \"none\"\n  [[vip.backend]]\n  address = \"10.52.0.21\"\n"
            ),
        )
        .expect("config");
        let notify = UnixDatagram::bind(dir.0.join("notify.sock")).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self {
            dir,
            child: None,
            notify,
            ns,
        }
    }

    fn config(&self) -> String {
        self.dir.0.join("lb.toml").display().to_string()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// `setpriv --bounding-set CAPS --inh-caps=-all lb ARGS` in the
    /// namespace: root with only the unit's capabilities, as systemd runs it.
    fn lb(&self, caps: &str, args: &[&str]) -> Command {
        let mut cmd = self.ns.command("setpriv");
        cmd.arg(format!("--bounding-set={caps}"))
            .arg("--inh-caps=-all")
            .arg(lb_binary().expect("lb binary"))
            .args(args)
            .env("NOTIFY_SOCKET", self.dir.0.join("notify.sock"))
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, caps: &str, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("log"))
            .expect("log");
        let child = self
            .lb(caps, args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn lb");
        self.child = Some(child);
    }

    /// Waits (at most 15 s) for a notification with `needle`, or the log
    /// line `needle` when `in_log`.
    fn wait_for(&mut self, needle: &str, in_log: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 512];
        loop {
            if in_log {
                if self.log().contains(needle) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            } else if let Ok(n) = self.notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains(needle)
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "exited ({exited:?}):\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in 15 s:\n{}",
                self.log()
            );
        }
    }

    /// SIGTERM, then the exit code (within 10 s).
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited =
            lb_tests::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                child.try_wait().ok().flatten()
            });
        if let Some(status) = exited {
            return status.code();
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn xdp_attached(&self, iface: &str) -> bool {
        self.ns.xdp_attached(iface)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lb_userspace::dataplane::pins::unpin(&self.ns.pin_dir(IFACE));
        let _ = fs::remove_file(self.ns.lock_path(IFACE));
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_units_capabilities_suffice() {
    lb_tests::require_root();
    let caps = bounding_set(&unit("lb.service"));
    let decap_caps = bounding_set(&unit("lb-decap@.service"));
    let mut rig = Rig::new();
    let config = rig.config();

    // Fresh start, READY=1, stop leaving the data plane attached.
    rig.spawn(&caps, &["run", "--keep-attached", "--config", &config]);
    rig.wait_for("READY=1", false);
    assert!(rig.log().contains("xdp_lb attached"), "{}", rig.log());
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());
    assert!(rig.xdp_attached(IFACE), "attached after the agent stopped");

    // A restart adopts it.
    rig.spawn(&caps, &["run", "--keep-attached", "--config", &config]);
    rig.wait_for("READY=1", false);
    assert!(
        rig.log().contains("adopted the data plane"),
        "{}",
        rig.log()
    );
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());

    // The documented full stop.
    let out = rig
        .lb(&caps, &["detach", "--config", &config])
        .output()
        .expect("lb detach");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!rig.xdp_attached(IFACE), "detached");
    assert!(!rig.ns.pin_dir(IFACE).exists(), "pins removed");

    // lb-decap@.service's set: attach and detach.
    rig.spawn(
        &decap_caps,
        &["decap", "--iface", PEER, "--vip", "10.52.0.100"],
    );
    rig.wait_for("xdp_decap attached", true);
    assert!(rig.xdp_attached(PEER));
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());
    assert!(!rig.xdp_attached(PEER), "detached");

    // The check can fail: without CAP_SYS_ADMIN a restart cannot adopt.
    rig.spawn(&caps, &["run", "--keep-attached", "--config", &config]);
    rig.wait_for("READY=1", false);
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());
    let fewer = caps.replace(",+sys_admin", "");
    assert_ne!(fewer, caps);
    let out = rig
        .lb(&fewer, &["run", "--config", &config])
        .output()
        .expect("lb run");
    assert!(!out.status.success(), "adopted without CAP_SYS_ADMIN");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("find the program of link"), "{stderr}");
}
