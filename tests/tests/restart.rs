//! Agent restarts against a pinned data plane: `--keep-attached` leaves it
//! attached, the next `lb run` adopts it, a plain stop detaches it, and an
//! agent refuses maps whose layout version differs from its own.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use lb_common::{Globals, LAYOUT_FINGERPRINT, MAP_GLOBALS};
use lb_tests::{lab::lb_binary, netns::Netns};
use lb_userspace::dataplane::maps::open_pin;

const IFACE: &str = "lbrst0";

/// The test's namespace, files and pins; removed on drop, agent first.
struct Rig {
    dir: PathBuf,
    agent: Option<Child>,
    ns: Netns,
    /// Stands in for systemd's notification socket (`NOTIFY_SOCKET`).
    notify: UnixDatagram,
}

impl Rig {
    fn new() -> Self {
        let ns = Netns::new("lbrst-lb").expect("netns");
        ns.ip(&[
            "link", "add", IFACE, "type", "veth", "peer", "name", "lbrst1",
        ])
        .expect("veth");
        ns.ip(&["addr", "add", "10.50.0.2/24", "dev", IFACE])
            .expect("addr");
        for dev in [IFACE, "lbrst1"] {
            ns.ip(&["link", "set", "dev", dev, "up"]).expect("up");
        }
        let dir = std::env::temp_dir().join("lbrst");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        fs::write(
            dir.join("lb.toml"),
            format!(
                "interface = \"{IFACE}\"\nxdp_mode = \"generic\"\n[maglev]\ntable_size = 251\n[[vip]]\nname = \"web\"\naddress = \"10.50.0.100\"\nport = 80\nprotocol = \"tcp\"\n  [vip.health_check]\n  kind = \"none\"\n  [[vip.backend]]\n  address = \"10.50.0.21\"\n"
            ),
        )
        .expect("config");
        let notify = UnixDatagram::bind(dir.join("notify.sock")).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self {
            dir,
            agent: None,
            ns,
            notify,
        }
    }

    fn pins(&self) -> PathBuf {
        self.ns.pin_dir(IFACE)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn start(&mut self, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("log");
        let config = self.dir.join("lb.toml").display().to_string();
        let child = self
            .ns
            .command(&lb_binary().expect("lb binary").display().to_string())
            .args(["run", "--config", &config])
            .args(args)
            .env("NOTIFY_SOCKET", self.dir.join("notify.sock"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("lb run");
        self.agent = Some(child);
    }

    /// Waits until the log has `count` lines with `needle`, or the agent exits.
    fn wait_for(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.log().matches(needle).count() < count {
            let exited = self
                .agent
                .as_mut()
                .and_then(|a| a.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "agent exited ({exited:?}):\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next notification the agent sent systemd's socket (within 15 s).
    fn notified(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no notification in 15 s:\n{}", self.log());
    }

    /// SIGTERM, then waits (at most 10 s) for the agent's exit status.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.agent.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.wait_exit(&mut child)
    }

    fn wait_exit(&self, child: &mut Child) -> Option<i32> {
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

    /// Runs `lb detach ARGS` in the namespace.
    fn detach(&self, args: &[&str]) -> std::process::Output {
        self.ns
            .command(&lb_binary().expect("lb binary").display().to_string())
            .arg("detach")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("lb detach")
    }

    fn xdp_attached(&self) -> bool {
        self.ns.xdp_attached(IFACE)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Removing the pins (the link's among them) detaches the program.
        lb_userspace::dataplane::pins::unpin(&self.pins());
        let _ = fs::remove_file(self.ns.lock_path(IFACE));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn keep_attached_adopt_detach_and_refuse_another_layout() {
    lb_tests::require_root();
    let mut rig = Rig::new();

    // --keep-attached: the data plane outlives the agent. systemd hears
    // READY=1 once it is attached, RELOADING=1 then READY=1 around a
    // reload on SIGHUP, and STOPPING=1.
    rig.start(&["--keep-attached"]);
    let ready = rig.notified();
    assert!(ready.contains("READY=1\n"), "{ready}");
    assert!(
        ready.contains("STATUS=forwarding for 1 VIPs on lbrst0"),
        "{ready}"
    );
    assert!(rig.log().contains("xdp_lb attached"), "{}", rig.log());
    let pid = rig.agent.as_ref().expect("agent").id();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reloading = rig.notified();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(rig.notified().contains("READY=1\n"));
    rig.wait_for("configuration reloaded (SIGHUP)", 1);
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());
    assert!(rig.notified().contains("STOPPING=1\n"));
    assert!(rig.pins().join("link").exists(), "link pinned after exit");
    assert!(rig.xdp_attached(), "still attached after exit");

    // A second agent is refused while one runs; the next adopts.
    rig.start(&[]);
    rig.wait_for("adopted the data plane", 1);
    assert!(
        rig.log().contains("VIPs +0 -0, backends +0 -0"),
        "same config: nothing rewritten\n{}",
        rig.log()
    );
    let second = rig
        .ns
        .command(&lb_binary().expect("lb").display().to_string())
        .args([
            "run",
            "--config",
            &rig.dir.join("lb.toml").display().to_string(),
        ])
        .output()
        .expect("second agent");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another agent is running on lbrst0"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // `lb detach` is refused while an agent runs, and changes nothing.
    let detach = rig.detach(&["--iface", IFACE]);
    assert!(!detach.status.success());
    assert!(
        String::from_utf8_lossy(&detach.stderr).contains("stop the agent on lbrst0 first"),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    assert!(rig.pins().join("link").exists() && rig.xdp_attached());

    // A plain stop detaches and removes the pins.
    assert_eq!(rig.stop(), Some(0), "{}", rig.log());
    assert!(!rig.pins().exists(), "pins removed");
    assert!(!rig.xdp_attached(), "detached");

    // Maps of another layout version are refused, and left alone.
    rig.start(&["--keep-attached"]);
    rig.wait_for("xdp_lb attached", 2);
    assert_eq!(rig.stop(), Some(0));
    let mut globals: Array<MapData, Globals> = open_pin(&rig.pins(), MAP_GLOBALS).expect("globals");
    let mut g = globals.get(&0, 0).expect("entry");
    g.layout_version = LAYOUT_FINGERPRINT ^ 1;
    globals.set(0, g, 0).expect("write");
    rig.start(&[]);
    let mut child = rig.agent.take().expect("agent");
    let code = rig.wait_exit(&mut child);
    assert_eq!(code, Some(1), "refused: {}", rig.log());
    let expected = format!(
        "map layout {:#010x}, this agent's is {LAYOUT_FINGERPRINT:#010x}",
        LAYOUT_FINGERPRINT ^ 1
    );
    assert!(rig.log().contains(&expected), "{}", rig.log());
    assert!(
        rig.pins().join("link").exists(),
        "refused maps left in place"
    );
    assert!(rig.xdp_attached());

    // `lb detach` stops what --keep-attached left (here maps no agent would
    // adopt): the operator's full stop under systemd.
    let config = rig.dir.join("lb.toml").display().to_string();
    let detach = rig.detach(&["--config", &config]);
    assert!(
        detach.status.success(),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    assert!(!rig.pins().exists(), "pins removed");
    assert!(!rig.xdp_attached(), "detached");
    // Nothing left to detach is not an error.
    assert!(rig.detach(&["--iface", IFACE]).status.success());
}
