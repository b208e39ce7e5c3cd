//! A scale-out lab: a router running BIRD 2 (ECMP: `merge paths on`,
//! `fib_multipath_hash_policy = 1`), two load balancer nodes each running
//! `lb run` with `[bgp]` peering with it, three backends, and a client
//! behind the router. Everything is named with the lab's prefix and removed
//! on drop, processes first (by pid), BIRDs the agents left included.
//!
//! ```text
//!   client 10.31.0.10 ── router 10.31.0.1 / 10.30.0.1 ──┐
//!   lb1    10.30.0.2  ──┤ bridge (namespace PREFIX-sw)
//!   lb2    10.30.0.3  ──┤
//!   be1..3 10.30.0.21-23┘
//! ```
//!
//! VIP address [`VIP`] carries `web` (HTTP, port 80) and `echo`
//! ([`ECHO_PORT`]) over be1..be3; VIP address [`SOLO_VIP`] carries only
//! `solo` (port [`SOLO_PORT`]) over be1, whose server a test can stop.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_userspace::{
    bgp::{bird, birdc::BIRDC_TIMEOUT, paths::BirdPaths},
    dataplane::pins,
};

use crate::{
    lab::{BACKENDS, BODY_LEN, ECHO_PORT, ECHO_SERVER, ROUTER_ADDR, VIP, which},
    netns::Netns,
    proc::Proc,
    topology,
};

/// The address that only VIP `solo` uses.
pub const SOLO_VIP: &str = "10.30.0.101";
/// Port of VIP `solo` and of its one backend's server (on be1).
pub const SOLO_PORT: u16 = 8081;
/// The load balancer nodes: name and address.
pub const NODES: [(&str, &str); 2] = [("lb1", "10.30.0.2"), ("lb2", "10.30.0.3")];
/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The nodes' AS.
pub const NODE_AS: u32 = 65001;
/// Health checks of every VIP: interval.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Health checks: consecutive failures to become unhealthy.
pub const FALL: u32 = 2;
/// Health checks: consecutive successes to become healthy.
pub const RISE: u32 = 2;
/// Interface of each node (each in its own namespace).
pub const NODE_IFACE: &str = "eth0";
/// The nodes' `bgp.withdraw_delay`.
pub const WITHDRAW_DELAY: Duration = Duration::from_secs(2);
/// Longest a node's agent may take to stop after SIGTERM before it is
/// killed: the withdraw (one `birdc configure`), `withdraw_delay`, then
/// BIRD's stop (SIGKILL after [`bird::STOP_TIMEOUT`]), with room to spare.
pub const AGENT_STOP_LIMIT: Duration = Duration::from_secs(
    BIRDC_TIMEOUT.as_secs() + WITHDRAW_DELAY.as_secs() + bird::STOP_TIMEOUT.as_secs() + 5,
);

/// The lab; dropping it ends its processes and removes its namespaces.
pub struct BgpLab {
    /// Prefix of every name the lab made.
    pub prefix: String,
    /// Working directory (configs, logs, web roots).
    pub dir: PathBuf,
    lb_bin: PathBuf,
    procs: Vec<Proc>,
    solo_server: Option<Proc>,
    agents: [Option<Proc>; 2],
    router_bird: Option<Proc>,
    // Declared last: namespaces go after the processes in them.
    ns: Vec<Netns>,
}

impl BgpLab {
    /// Builds the network, starts the backends' servers and decapsulation
    /// and the router's BIRD; the agents are started by [`BgpLab::start_node`].
    ///
    /// # Errors
    /// Any set-up step fails; what was made so far is removed.
    pub fn build(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = Self {
            prefix: prefix.to_string(),
            dir,
            lb_bin: crate::lab::lb_binary()?,
            procs: Vec::new(),
            solo_server: None,
            agents: [None, None],
            router_bird: None,
            ns: Vec::new(),
        };
        lab.build_network()?;
        for i in 0..BACKENDS.len() {
            lab.start_backend(i)?;
        }
        lab.start_solo_server()?;
        lab.start_router_bird()?;
        lab.wait_for_servers(Duration::from_secs(10))?;
        for i in 0..NODES.len() {
            fs::write(lab.config_path(i), lab.config_text())?;
        }
        Ok(lab)
    }

    /// The namespace of host `suffix` (`rt`, `client`, `lb1`, `be1`, ...).
    pub fn ns(&self, suffix: &str) -> &Netns {
        let name = format!("{}-{suffix}", self.prefix);
        self.ns
            .iter()
            .find(|n| n.name == name)
            .expect("namespace of the lab")
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        self.ns("client")
    }

    fn build_network(&mut self) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        let mut names = vec!["sw", "rt", "client"];
        names.extend(NODES.iter().map(|n| n.0));
        names.extend(BACKENDS.iter().map(|b| b.0));
        for suffix in names {
            self.ns.push(Netns::new(&format!("{p}-{suffix}"))?);
        }
        let mut hosts: Vec<(String, String, String, String)> = vec![(
            "rt".into(),
            "eth0".into(),
            format!("{p}r"),
            ROUTER_ADDR.into(),
        )];
        for (i, (name, addr)) in NODES.iter().enumerate() {
            hosts.push((
                (*name).into(),
                NODE_IFACE.into(),
                format!("{p}n{}", i + 1),
                (*addr).into(),
            ));
        }
        for (i, (name, addr)) in BACKENDS.iter().enumerate() {
            hosts.push((
                (*name).into(),
                "eth0".into(),
                format!("{p}b{}", i + 1),
                (*addr).into(),
            ));
        }
        let hosts: Vec<(&str, &str, &str, &str)> = hosts
            .iter()
            .map(|(h, i, peer, a)| (h.as_str(), i.as_str(), peer.as_str(), a.as_str()))
            .collect();
        topology::lab_bridge(&self.ns[0], &p, &hosts)?;
        // The client behind the router.
        let rt = self.ns("rt");
        let client_ns = format!("{p}-client");
        rt.ip(&[
            "link", "add", "rc", "type", "veth", "peer", "name", "eth0", "netns", &client_ns,
        ])?;
        rt.ip(&["addr", "add", "10.31.0.1/24", "dev", "rc"])?;
        rt.ip(&["link", "set", "dev", "rc", "up"])?;
        rt.sysctl("net.ipv4.ip_forward=1")?;
        rt.sysctl("net.ipv4.fib_multipath_hash_policy=1")?;
        let client = self.client();
        crate::lab::routed_client(client)?;
        crate::netns::disable_tx_checksum(client, "eth0")?;
        for (name, _) in BACKENDS {
            let be = self.ns(name);
            be.ip(&["route", "add", "10.31.0.0/24", "via", ROUTER_ADDR])?;
            topology::vip_on_loopback(be, VIP)?;
            be.ip(&["addr", "add", &format!("{SOLO_VIP}/32"), "dev", "lo"])?;
        }
        Ok(())
    }

    fn spawn(&self, host: &str, program: &Path, args: &[&str], what: &str) -> anyhow::Result<Proc> {
        Proc::spawn(
            self.ns(host),
            program,
            args,
            &self.dir.join(format!("{what}.log")),
        )
        .with_context(|| format!("starting {what}"))
    }

    fn start_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, _) = BACKENDS[i];
        let root = self.dir.join(format!("www-{name}"));
        fs::create_dir_all(&root)?;
        let mut body = format!("{name} ").into_bytes();
        body.resize(BODY_LEN, b'.');
        fs::write(root.join("whoami"), body)?;
        let lb = self.lb_bin.clone();
        let decap = self.spawn(
            name,
            &lb,
            &[
                "decap",
                "--iface",
                "eth0",
                "--vip",
                VIP,
                "--vip",
                SOLO_VIP,
                "--xdp-mode",
                "generic",
            ],
            &format!("decap-{name}"),
        )?;
        self.procs.push(decap);
        let python = which("python3")?;
        let root = root.display().to_string();
        let http = self.spawn(
            name,
            &python,
            &["-m", "http.server", "80", "--directory", &root],
            &format!("http-{name}"),
        )?;
        self.procs.push(http);
        let script = self.dir.join("echo.py");
        fs::write(&script, ECHO_SERVER)?;
        let echo = self.spawn(
            name,
            &python,
            &[&script.display().to_string(), name, &ECHO_PORT.to_string()],
            &format!("echo-{name}"),
        )?;
        self.procs.push(echo);
        Ok(())
    }

    /// Starts the server of VIP `solo` on be1.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn start_solo_server(&mut self) -> anyhow::Result<()> {
        let root = self.dir.join("www-be1").display().to_string();
        let server = self.spawn(
            "be1",
            &which("python3")?,
            &[
                "-m",
                "http.server",
                &SOLO_PORT.to_string(),
                "--directory",
                &root,
            ],
            "http-solo",
        )?;
        self.solo_server = Some(server);
        Ok(())
    }

    /// Stops the server of VIP `solo`: its only backend fails its checks.
    pub fn stop_solo_server(&mut self) {
        if let Some(mut s) = self.solo_server.take() {
            s.stop();
        }
    }

    fn wait_for_servers(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut targets: Vec<String> = BACKENDS
            .iter()
            .map(|(_, a)| format!("http://{a}/whoami"))
            .collect();
        targets.push(format!("http://{}:{SOLO_PORT}/whoami", BACKENDS[0].1));
        for url in targets {
            if !crate::lab::wait_for_http(self.ns("rt"), &url, deadline) {
                bail!("{url} did not answer within {limit:?}");
            }
        }
        Ok(())
    }

    fn router_socket(&self) -> PathBuf {
        self.dir.join("router-bird.ctl")
    }

    /// The router: BIRD with a session to each node (import all), its
    /// kernel protocol merging equal paths into ECMP routes.
    fn start_router_bird(&mut self) -> anyhow::Result<()> {
        let mut conf = format!(
            "router id {ROUTER_ADDR};\nlog stderr all;\ntimeformat protocol \"%s\";\nprotocol device {{ }}\nprotocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n"
        );
        for (name, addr) in NODES {
            conf.push_str(&format!(
                "protocol bgp {name} {{\n  local as {ROUTER_AS};\n  neighbor {addr} as {NODE_AS};\n  hold time 9;\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n  ipv4 {{ import all; export none; }};\n}}\n"
            ));
        }
        let path = self.dir.join("router-bird.conf");
        fs::write(&path, conf)?;
        let bird = which("bird").or_else(|_| {
            let sbin = PathBuf::from("/usr/sbin/bird");
            if sbin.is_file() {
                Ok(sbin)
            } else {
                bail!("bird not found: install Debian's bird2 (cargo xtask setup does)")
            }
        })?;
        let proc = self.spawn(
            "rt",
            &bird,
            &[
                "-f",
                "-c",
                &path.display().to_string(),
                "-s",
                &self.router_socket().display().to_string(),
            ],
            "router-bird",
        )?;
        self.router_bird = Some(proc);
        Ok(())
    }

    /// The router's `birdc ARGS` output.
    pub fn router_birdc(&self, args: &[&str]) -> String {
        std::process::Command::new("birdc")
            .arg("-s")
            .arg(self.router_socket())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// When the router's session with `node` last changed state (epoch
    /// seconds), from `show protocols`.
    pub fn router_session_since(&self, node: &str) -> Option<(String, u64)> {
        let text = self.router_birdc(&["show", "protocols", node]);
        let line = text.lines().find(|l| l.starts_with(node))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        Some((f.get(5)?.to_string(), f.get(4)?.parse().ok()?))
    }

    /// The next hops of the router's kernel route to `vip`/32 (empty when
    /// it has none).
    pub fn next_hops(&self, vip: &str) -> BTreeSet<String> {
        let out = self
            .ns("rt")
            .command("ip")
            .args(["route", "show", &format!("{vip}/32")])
            .output();
        let Ok(out) = out else {
            return BTreeSet::new();
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect()
    }

    /// Waits (at most `limit`, polling every 50 ms) until `vip` has exactly
    /// the next hops `want`; returns the time it took.
    pub fn wait_next_hops(&self, vip: &str, want: &[&str], limit: Duration) -> Option<Duration> {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_string()).collect();
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.next_hops(vip) == want {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Node `i`'s configuration file.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.toml", NODES[i].0))
    }

    /// The nodes' configuration (the same on both): `web` and `echo` on
    /// [`VIP`] over be1..be3, `solo` on [`SOLO_VIP`] over be1, health checks
    /// every [`CHECK_INTERVAL`] ([`RISE`], [`FALL`]); `[bgp]` peering with
    /// the router.
    pub fn config_text(&self) -> String {
        let check = format!(
            "\n  [vip.health_check]\n  kind = \"tcp\"\n  interval = \"{}ms\"\n  timeout = \"250ms\"\n  rise = {RISE}\n  fall = {FALL}\n",
            CHECK_INTERVAL.as_millis()
        );
        let mut text = format!("interface = \"{NODE_IFACE}\"\nxdp_mode = \"generic\"\n");
        for (name, vip, port, backends) in [
            ("web", VIP, 80, &BACKENDS[..]),
            ("echo", VIP, ECHO_PORT, &BACKENDS[..]),
            ("solo", SOLO_VIP, SOLO_PORT, &BACKENDS[..1]),
        ] {
            text.push_str(&format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = {port}\nprotocol = \"tcp\"\n{check}"
            ));
            for (_, addr) in backends {
                text.push_str(&format!("\n  [[vip.backend]]\n  address = \"{addr}\"\n"));
            }
        }
        text.push_str(&format!(
            "\n[bgp]\nlocal_as = {NODE_AS}\nhold_time = \"9s\"\nwithdraw_delay = \"{}ms\"\n\n  [[bgp.peer]]\n  address = \"{ROUTER_ADDR}\"\n  remote_as = {ROUTER_AS}\n",
            WITHDRAW_DELAY.as_millis()
        ));
        text
    }

    /// Starts node `i`'s agent: `lb run --config FILE EXTRA`.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn start_node(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let config = self.config_path(i).display().to_string();
        let mut args = vec!["run", "--config", config.as_str()];
        args.extend_from_slice(extra);
        let lb = self.lb_bin.clone();
        let agent = self.spawn(NODES[i].0, &lb, &args, &format!("agent-{}", NODES[i].0))?;
        self.agents[i] = Some(agent);
        Ok(())
    }

    /// Sends SIGTERM to node `i`'s agent without waiting.
    pub fn signal_node(&self, i: usize) {
        if let Some(agent) = &self.agents[i] {
            // SAFETY: signalling the agent this lab started, by its pid.
            unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
        }
    }

    /// Waits (at most `limit`) until node `i`'s agent has exited; whether
    /// it did.
    pub fn wait_node_exit(&mut self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.agents[i].as_mut().is_none_or(Proc::exited) {
                self.agents[i] = None;
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops node `i`'s agent (SIGTERM, then waits; SIGKILL after
    /// [`AGENT_STOP_LIMIT`]).
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            agent.stop_within(AGENT_STOP_LIMIT);
        }
    }

    /// Runs `lb ARGS` in node `i`'s namespace to its end (bounded by
    /// `limit`): its exit status and output (stdout then stderr).
    ///
    /// # Errors
    /// It cannot be started, or does not end within `limit` (then killed).
    pub fn run_lb(
        &self,
        i: usize,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<(bool, String)> {
        let mut child = self
            .ns(NODES[i].0)
            .command(&self.lb_bin.display().to_string())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + limit;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("lb {args:?} did not end within {limit:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// Node `i`'s agent log.
    pub fn node_log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.join(format!("agent-{}.log", NODES[i].0))).unwrap_or_default()
    }

    /// Waits (at most `limit`) until node `i`'s log has a line containing
    /// `needle`; whether it did.
    pub fn wait_node_log(&self, i: usize, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.node_log(i).contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// GETs `path` of node `i`'s API (loopback in its namespace).
    pub fn api_get(&self, i: usize, path: &str) -> Option<String> {
        let out = self
            .ns(NODES[i].0)
            .command("curl")
            .args(["-sf", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:9470{path}"))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Node `i`'s `/status` as JSON.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        serde_json::from_str(&self.api_get(i, "/status")?).ok()
    }

    /// Where node `i`'s agent pins its data plane.
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        self.ns(NODES[i].0).pin_dir(NODE_IFACE)
    }

    /// Sends `count` HTTP requests to [`VIP`] from the client, each on a
    /// new connection (at most 2 s each). Returns, per request, the name
    /// of the backend that answered or `None` on failure.
    pub fn requests(&self, count: usize) -> Vec<Option<String>> {
        crate::lab::whoami(self.client(), VIP, count, None)
    }

    /// Where node `i`'s agent keeps its BIRD's files.
    pub fn bird_paths(&self, i: usize) -> BirdPaths {
        let key = pins::netns_key_of(Path::new(&format!(
            "/run/netns/{}",
            self.ns(NODES[i].0).name
        )));
        BirdPaths::in_netns(key.as_deref(), NODE_IFACE)
    }

    /// The pid of the BIRD node `i`'s agent runs, from its pid file, if
    /// that process is alive and is that BIRD ([`bird::is_ours`]).
    pub fn node_bird_pid(&self, i: usize) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.bird_paths(i).pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.node_bird_alive(i, pid).then_some(pid)
    }

    /// Whether `pid` is alive and is the BIRD of node `i`'s agent.
    pub fn node_bird_alive(&self, i: usize, pid: u32) -> bool {
        bird::is_ours(pid, &self.bird_paths(i))
    }

    /// Stops every process (agents first), the BIRDs the agents left, and
    /// removes pins, locks and BIRD's files.
    fn teardown(&mut self) {
        for i in 0..NODES.len() {
            self.stop_node(i);
        }
        for (i, (node, _)) in NODES.iter().enumerate() {
            if let Some(pid) = self.node_bird_pid(i) {
                // SIGTERM, up to 5 s, then SIGKILL (and up to 2 s more),
                // each only while the pid is still that BIRD.
                for (signal, limit) in [(libc::SIGTERM, 5), (libc::SIGKILL, 2)] {
                    if !self.node_bird_alive(i, pid) {
                        break;
                    }
                    // SAFETY: the BIRD this lab's agent started, checked
                    // just before to be it.
                    unsafe { libc::kill(pid as i32, signal) };
                    let deadline = Instant::now() + Duration::from_secs(limit);
                    while Instant::now() < deadline && self.node_bird_alive(i, pid) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            let _ = fs::remove_dir_all(self.bird_paths(i).dir());
            let ns = self.ns(node);
            pins::unpin(&ns.pin_dir(NODE_IFACE));
            let _ = fs::remove_file(ns.lock_path(NODE_IFACE));
            if let Some(parent) = ns.lock_path(NODE_IFACE).parent()
                && parent != Path::new(pins::LOCK_ROOT)
            {
                let _ = fs::remove_dir(parent);
            }
        }
        self.stop_solo_server();
        if let Some(mut bird) = self.router_bird.take() {
            bird.stop();
        }
        for proc in self.procs.iter_mut().rev() {
            proc.stop();
        }
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        self.teardown();
    }
}
