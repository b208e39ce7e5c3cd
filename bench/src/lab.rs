//! The bench's namespace lab: a client, the load balancer and three backends
//! on a bridge, with private addresses 10.40.0.0/24. Backends run the bench's
//! own small HTTP server and `lb decap`; the load balancer runs `lb run`.
//! Every namespace is named `PREFIX-*`; processes are ended by pid, then the
//! namespaces removed, on drop, also when a step fails.
//!
//! ```text
//!   client 10.40.0.10 ──┐
//!   lb     10.40.0.2  ──┤ bridge (namespace PREFIX-sw)
//!   be1..3 10.40.0.21-23┘          VIP 10.40.0.100: tcp/80 (HTTP), udp/9
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use lb_tests::proc::Proc;
use lb_tests::{
    netns::{Netns, disable_tx_checksum},
    topology,
};

/// The VIP (TCP port 80 and UDP port 9).
pub const VIP: &str = "10.40.0.100";
/// UDP port of the VIP for the packet-rate test.
pub const UDP_PORT: u16 = 9;
/// The load balancer's address.
pub const LB_ADDR: &str = "10.40.0.2";
/// The load balancer's MAC (fixed, so the sender can address frames to it).
pub const LB_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x02];
/// The client's address.
pub const CLIENT_ADDR: &str = "10.40.0.10";
/// The client's MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x10];
/// Backend names and addresses.
pub const BACKENDS: [(&str, &str); 3] = [
    ("be1", "10.40.0.21"),
    ("be2", "10.40.0.22"),
    ("be3", "10.40.0.23"),
];
/// Port of HAProxy on the load balancer's own address.
pub const HAPROXY_PORT: u16 = 8080;
/// Port of the `mode = "nat"` VIP (its backends serve it on port 80).
pub const NAT_PORT: u16 = 81;
/// Port of the kernel's NAT on the load balancer's own address (nftables
/// DNAT to the backends' [`KERNEL_NAT_BACKEND_PORT`], SNAT to the load
/// balancer's address).
pub const KERNEL_NAT_PORT: u16 = 8082;
/// The port the kernel NAT's backends serve on.
pub const KERNEL_NAT_BACKEND_PORT: u16 = 8000;

/// The lab. Fields drop in order: processes, then namespaces.
pub struct Lab {
    /// Name prefix of the namespaces.
    pub prefix: String,
    /// The load balancer's interface (also the agent's pin directory name).
    pub lb_iface: String,
    /// Config, logs.
    pub dir: PathBuf,
    lb_bin: PathBuf,
    /// The agent (`lb run`), while it runs.
    agent: Option<Proc>,
    /// The pass-through XDP program on the LB's peer `p`, while it runs.
    peer_pass: Option<Proc>,
    procs: Vec<Proc>,
    /// sw, client, lb, be1, be2, be3.
    ns: Vec<Netns>,
}

impl Lab {
    /// Builds the network, starts servers, decapsulation and the agent, and
    /// waits (at most 20 s) until an HTTP request through the VIP succeeds.
    ///
    /// # Errors
    /// A step fails; what was made is removed.
    pub fn start(prefix: &str, lb_bin: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = Self {
            prefix: prefix.to_string(),
            lb_iface: format!("lbb{}", std::process::id()),
            dir,
            lb_bin: lb_bin.to_path_buf(),
            agent: None,
            peer_pass: None,
            procs: Vec::new(),
            ns: Vec::new(),
        };
        lab.build_network()?;
        let bench = std::env::current_exe()?;
        let lb = lab.lb_bin.clone();
        for (name, _) in BACKENDS {
            let p = lab.spawn(
                name,
                &lb,
                &[
                    "decap",
                    "--iface",
                    "eth0",
                    "--vip",
                    VIP,
                    "--xdp-mode",
                    "native",
                ],
                &format!("decap-{name}"),
            )?;
            lab.procs.push(p);
            let p = lab.spawn(
                name,
                &bench,
                &["serve-http", "--port", "80"],
                &format!("http-{name}"),
            )?;
            lab.procs.push(p);
            // The kernel NAT's backends: their own port, so no connection
            // of another row's (in TIME_WAIT on the backend) shares a
            // 4-tuple with its connections.
            let p = lab.spawn(
                name,
                &bench,
                &["serve-http", "--port", &KERNEL_NAT_BACKEND_PORT.to_string()],
                &format!("http-{name}-{KERNEL_NAT_BACKEND_PORT}"),
            )?;
            lab.procs.push(p);
        }
        // Native XDP_TX from the LB's veth reaches the bridge only when its
        // peer runs an XDP program: a pass-through one (`lb decap`, no VIP).
        let p = lab.spawn(
            "sw",
            &lb,
            &["decap", "--iface", "p", "--xdp-mode", "native"],
            "peer-pass",
        )?;
        lab.peer_pass = Some(p);
        lab.wait_http(
            &format!("http://{}/", BACKENDS[2].1),
            Duration::from_secs(10),
        )?;
        lab.start_agent()?;
        Ok(lab)
    }

    /// Namespace `PREFIX-suffix`.
    pub fn ns(&self, suffix: &str) -> &Netns {
        let name = format!("{}-{suffix}", self.prefix);
        self.ns
            .iter()
            .find(|n| n.name == name)
            .expect("namespace of the lab")
    }

    fn build_network(&mut self) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        for suffix in ["sw", "client", "lb", "be1", "be2", "be3"] {
            self.ns.push(Netns::new(&format!("{p}-{suffix}"))?);
        }
        let hosts = [
            ("client", "eth0", "c", CLIENT_ADDR),
            ("lb", self.lb_iface.as_str(), "p", LB_ADDR),
            ("be1", "eth0", "b1", BACKENDS[0].1),
            ("be2", "eth0", "b2", BACKENDS[1].1),
            ("be3", "eth0", "b3", BACKENDS[2].1),
        ];
        topology::lab_bridge(self.ns("sw"), &p, &hosts)?;
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        self.ns("lb").ip(&[
            "link",
            "set",
            "dev",
            &self.lb_iface,
            "address",
            &mac(LB_MAC),
        ])?;
        let client = self.ns("client");
        client.ip(&["link", "set", "dev", "eth0", "address", &mac(CLIENT_MAC)])?;
        client.ip(&["route", "add", &format!("{VIP}/32"), "via", LB_ADDR])?;
        disable_tx_checksum(client, "eth0")?;
        for (name, _) in BACKENDS {
            topology::vip_on_loopback(self.ns(name), VIP)?;
            // NAT replies cross the LB's XDP program (and the kernel's NAT),
            // which takes checksums as they stand in the frame: no veth
            // partial checksums (real NICs send full ones).
            disable_tx_checksum(self.ns(name), "eth0")?;
        }
        Ok(())
    }

    /// Starts `program ARGS` in namespace `suffix`, output to `DIR/what.log`.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn(
        &self,
        suffix: &str,
        program: &Path,
        args: &[&str],
        what: &str,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(
            self.ns(suffix),
            program,
            args,
            &self.dir.join(format!("{what}.log")),
        )
        .with_context(|| format!("starting {what}"))
    }

    /// Keeps `proc` until the lab is dropped.
    pub fn keep(&mut self, proc: Proc) {
        self.procs.push(proc);
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let config = format!(
            r#"interface = "{iface}"
xdp_mode = "native"

[maglev]
table_size = 65537

[[vip]]
name = "web"
address = "{VIP}"
port = 80
protocol = "tcp"
  [vip.health_check]
  kind = "tcp"
  interval = "1s"
  timeout = "500ms"
{backends}
[[vip]]
name = "udp-sink"
address = "{VIP}"
port = {UDP_PORT}
protocol = "udp"
  [vip.health_check]
  kind = "none"
{backends}
[nat]
max_entries = 65536
[[vip]]
name = "web-nat"
address = "{VIP}"
port = {NAT_PORT}
protocol = "tcp"
mode = "nat"
  [vip.health_check]
  kind = "tcp"
  interval = "1s"
  timeout = "500ms"
{nat_backends}"#,
            iface = self.lb_iface,
            nat_backends = BACKENDS
                .iter()
                .map(|(_, a)| format!("  [[vip.backend]]\n  address = \"{a}\"\n  port = 80\n"))
                .collect::<String>(),
            backends = BACKENDS
                .iter()
                .map(|(_, a)| format!("  [[vip.backend]]\n  address = \"{a}\"\n"))
                .collect::<String>(),
        );
        let path = self.dir.join("lb.toml");
        fs::write(&path, config)?;
        let lb = self.lb_bin.clone();
        let agent = self.spawn(
            "lb",
            &lb,
            &["run", "--config", &path.display().to_string()],
            "agent",
        )?;
        self.agent = Some(agent);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.agent.as_mut().is_some_and(Proc::exited) {
                bail!("the agent exited:\n{}", self.agent_log());
            }
            if self.pin_dir().join(lb_common::MAP_STATS).exists()
                && self.http_ok(&format!("http://{VIP}/"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no request through the VIP within 20 s; agent log:\n{}",
                    self.agent_log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's log.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent (it detaches its program and removes its pins).
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
    }

    /// Stops the pass-through program on the LB's peer `p`: from then on
    /// the LB's native XDP_TX frames are dropped by veth instead of reaching
    /// the bridge (what the packet-rate rows want; HTTP through the VIP stops
    /// working).
    pub fn stop_peer_pass(&mut self) {
        if let Some(mut p) = self.peer_pass.take() {
            p.stop();
        }
    }

    /// Where the agent pins its maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.ns("lb").pin_dir(&self.lb_iface)
    }

    /// Whether one GET of `url` from the client succeeds within 1 s.
    pub fn http_ok(&self, url: &str) -> bool {
        self.ns("client")
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-f", "--max-time", "1", url])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until a GET of `url` from the client succeeds.
    ///
    /// # Errors
    /// None did within `limit`.
    pub fn wait_http(&self, url: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !self.http_ok(url) {
            if Instant::now() > deadline {
                bail!("{url} did not answer within {limit:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Id of the XDP program attached to the LB's interface, from `ip -d link`.
    ///
    /// # Errors
    /// None is attached.
    pub fn lb_prog_id(&self) -> anyhow::Result<u32> {
        let out = self
            .ns("lb")
            .command("ip")
            .args(["-d", "link", "show", "dev", &self.lb_iface])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w.starts_with("prog/xdp") && words.next() == Some("id") {
                return words.next().context("id")?.parse().context("prog id");
            }
        }
        bail!("no XDP program on {}:\n{text}", self.lb_iface)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_agent();
        self.stop_peer_pass();
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        // The pins, and the namespace's directory above them once empty.
        lb_userspace::dataplane::pins::unpin(&self.pin_dir());
        // The agent's instance lock, left behind if it had to be killed.
        let _ = fs::remove_file(self.ns("lb").lock_path(&self.lb_iface));
        let _ = fs::remove_dir_all(&self.dir);
        // self.ns drops after this, removing every interface.
    }
}

/// Runs a command to completion and returns its stdout.
///
/// # Errors
/// It cannot start or exits with failure.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
