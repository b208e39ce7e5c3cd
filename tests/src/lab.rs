//! A namespace lab: a client, a load balancer and three backends (a fourth,
//! spare one on request) joined by a bridge, each backend running a real
//! HTTP server (Python's http.server) bound to every address, optionally a
//! line echo server on port 7000, the VIP on its loopback and `lb decap` on
//! its interface; the load balancer running `lb run`. Everything is named
//! with the lab's prefix and removed on drop, processes first (by pid).
//!
//! ```text
//!   client 10.30.0.10 ──┐
//!   lb     10.30.0.2  ──┤ bridge (namespace PREFIX-sw)
//!   be1..3 10.30.0.21-23┤
//!   be4    10.30.0.24  ─┘ (spare: not in the first configuration)
//! ```

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{netns::Netns, proc::Proc, topology};

/// The VIP of the lab.
pub const VIP: &str = "10.30.0.100";
/// The load balancer's address.
pub const LB_ADDR: &str = "10.30.0.2";
/// The client's address.
pub const CLIENT_ADDR: &str = "10.30.0.10";
/// A source outside the allowed prefixes (TEST-NET-3), also on the client.
pub const OUTSIDE_ADDR: &str = "203.0.113.7";
/// Backend names and addresses.
pub const BACKENDS: [(&str, &str); 3] = [
    ("be1", "10.30.0.21"),
    ("be2", "10.30.0.22"),
    ("be3", "10.30.0.23"),
];
/// The spare backend: built with [`Options::spare_backend`], not in the
/// first configuration.
pub const SPARE_BACKEND: (&str, &str) = ("be4", "10.30.0.24");
/// Port of the echo servers ([`Options::echo`]) and of the `echo` VIP.
pub const ECHO_PORT: u16 = 7000;
/// Port of the sink servers ([`Options::sink`]) and of the `sink` VIP.
pub const SINK_PORT: u16 = 7100;
/// Size of the `/big` file every backend serves (1 MiB).
pub const BIG_LEN: usize = 1 << 20;
/// The IPv6 VIP ([`Options::ipv6`]).
pub const VIP_V6: &str = "fd00:30::100";
/// An IPv4 VIP served by the IPv6 addresses of the backends
/// ([`Options::ipv6`]: IPv4-in-IPv6).
pub const VIP_4OVER6: &str = "10.30.0.101";
/// IPv6 addresses of be1..be3 ([`Options::ipv6`]).
pub const BACKENDS_V6: [&str; 3] = ["fd00:30::21", "fd00:30::22", "fd00:30::23"];
/// The client's IPv6 address ([`Options::ipv6`]).
pub const CLIENT_ADDR_V6: &str = "fd00:30::10";
/// An IPv6 source outside the allowed prefixes (documentation range), also
/// on the client.
pub const OUTSIDE_ADDR_V6: &str = "2001:db8::7";

/// The client's address behind the router ([`Options::router`]).
pub const ROUTED_CLIENT_ADDR: &str = "10.31.0.10";
/// The router's address on the bridge.
pub const ROUTER_ADDR: &str = "10.30.0.1";
/// The router's address toward the routed client.
pub const ROUTER_CLIENT_SIDE: &str = "10.31.0.1";

/// Addresses the client behind a router (its `eth0`, already moved into
/// `client`): [`ROUTED_CLIENT_ADDR`]/24, up, default route via
/// [`ROUTER_CLIENT_SIDE`].
///
/// # Errors
/// An `ip` command fails.
pub fn routed_client(client: &Netns) -> anyhow::Result<()> {
    client.ip(&[
        "addr",
        "add",
        &format!("{ROUTED_CLIENT_ADDR}/24"),
        "dev",
        "eth0",
    ])?;
    client.ip(&["link", "set", "dev", "eth0", "up"])?;
    client.ip(&["route", "add", "default", "via", ROUTER_CLIENT_SIDE])
}
/// MTU of the router's link toward the client ([`Options::router`]).
pub const NARROW_MTU: u32 = 1400;

/// The sink server: reads each connection to its end, then answers
/// "got N" with the byte count.
const SINK_SERVER: &str = r#"
import socketserver, sys
class Sink(socketserver.StreamRequestHandler):
    def handle(self):
        n = 0
        while True:
            b = self.rfile.read(65536)
            if not b:
                break
            n += len(b)
        self.wfile.write(b"got %d\n" % n)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", int(sys.argv[1])), Sink).serve_forever()
"#;

/// The echo server (Python, run as `python3 FILE NAME PORT`): greets each
/// connection with the backend's name and a newline, then sends back every
/// line it receives.
pub const ECHO_SERVER: &str = r#"
import socketserver, sys
NAME = sys.argv[1].encode()
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(NAME + b"\n")
        for line in self.rfile:
            self.wfile.write(line)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", int(sys.argv[2])), Echo).serve_forever()
"#;

/// What the lab builds besides the basics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Build [`SPARE_BACKEND`] too (running its servers, not configured).
    pub spare_backend: bool,
    /// Run an echo server on every backend and configure VIP `echo` on
    /// [`ECHO_PORT`] over be1..be3.
    pub echo: bool,
    /// Run a sink server on every backend and configure VIP `sink` on
    /// [`SINK_PORT`] over be1..be3.
    pub sink: bool,
    /// Put the client behind a router (its own subnet, 10.31.0.0/24) whose
    /// link toward the client has an MTU of [`NARROW_MTU`]; the client's
    /// own interface keeps 1500.
    pub router: bool,
    /// Dual stack: IPv6 addresses (fd00:30::/64) on every host, VIP
    /// `web6` ([`VIP_V6`]) over the backends' IPv6 addresses, VIP
    /// `web4over6` ([`VIP_4OVER6`], IPv4) over the same IPv6 addresses.
    pub ipv6: bool,
    /// Start the agent under `prlimit --nofile=N:N` (soft and hard limit).
    pub agent_nofile: Option<u32>,
    /// Name of the load balancer's interface (default `PREFIX0`); two labs
    /// may both use `eth0`, each in its own namespace.
    pub lb_iface: Option<&'static str>,
    /// Backends that need nothing: no VIP on loopback, no `lb decap`, the
    /// kernel's strict reverse-path filter (`rp_filter` 1), servers on
    /// their own address and [`NAT_PORT`] only; VIP `web` (port 80) in
    /// this mode (`"nat"` or `"dnat"`; with `"dnat"` each backend routes
    /// the client's address via the load balancer).
    pub nat: Option<&'static str>,
    /// More TOML for the first configuration (another `[[vip]]`): a NAT
    /// VIP must be there from the start, since the NAT table is sized
    /// when the data plane is created.
    pub extra: &'static str,
}

/// The port backends serve on in a NAT lab ([`Options::nat`]): VIP:80 maps
/// to it.
pub const NAT_PORT: u16 = 8080;

/// Size of the `/whoami` body: large enough that replies outweigh requests,
/// so a test can tell they did not cross the load balancer.
pub const BODY_LEN: usize = 4096;

/// XDP attach mode of the lab's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Native XDP on the veths (with a pass-through program on the LB's peer).
    Native,
    /// Generic (skb) XDP.
    Generic,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// The lab; dropping it ends its processes and removes its namespaces.
pub struct Lab {
    /// Prefix of every name the lab made.
    pub prefix: String,
    /// Name of the load balancer's interface (also its pin directory name).
    pub lb_iface: String,
    /// Working directory (config, logs, web roots).
    pub dir: PathBuf,
    lb_bin: PathBuf,
    options: Options,
    mode: Mode,
    procs: Vec<Proc>,
    servers: Vec<Option<Proc>>,
    agent: Option<Proc>,
    // Declared last: namespaces go after the processes in them.
    /// Namespaces: sw, client, lb, be1, be2, be3.
    pub ns: Vec<Netns>,
}

/// The `lb` binary: `$LB_BIN`, else `lb` next to the running test's
/// directory (target/debug/deps/.. -> target/debug/lb).
pub fn lb_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("lb");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot find the lb binary: build it (cargo build -p lb-userspace) or set LB_BIN")
}

impl Lab {
    /// Builds the lab and starts servers, decapsulation and the agent with
    /// health checks every 500 ms (rise 2, fall 2). Waits until a request
    /// through the VIP succeeds (at most 20 s).
    ///
    /// # Errors
    /// Any set-up step fails; what was made so far is removed.
    pub fn start(prefix: &str, mode: Mode) -> anyhow::Result<Self> {
        Self::start_with(prefix, mode, Options::default())
    }

    /// [`Lab::start`] with `options`.
    ///
    /// # Errors
    /// Any set-up step fails; what was made so far is removed.
    pub fn start_with(prefix: &str, mode: Mode, options: Options) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = Self {
            prefix: prefix.to_string(),
            lb_iface: options
                .lb_iface
                .map_or_else(|| format!("{prefix}0"), str::to_string),
            dir,
            lb_bin: lb_binary()?,
            options,
            mode,
            procs: Vec::new(),
            servers: Vec::new(),
            agent: None,
            ns: Vec::new(),
        };
        lab.build_network()?;
        lab.servers = (0..lab.backends().len()).map(|_| None).collect();
        for i in 0..lab.backends().len() {
            lab.start_backend(i, mode)?;
        }
        // Native XDP_TX from the LB's veth reaches the bridge only if the
        // peer runs an XDP program: a pass-through one (`lb decap`, no VIP).
        if mode == Mode::Native {
            let peer = format!("{prefix}p");
            let p = lab.spawn(
                0,
                &lab.lb_bin.clone(),
                &["decap", "--iface", &peer, "--xdp-mode", "native"],
                "peer-pass",
            )?;
            lab.procs.push(p);
        }
        lab.wait_for_servers(Duration::from_secs(10))?;
        let echo: Vec<(&str, u32)> = BACKENDS.iter().map(|&(name, _)| (name, 1)).collect();
        lab.write_config(&lab.config_text(&echo, lab.options.extra))?;
        lab.start_agent(&[])?;
        lab.wait_until_serving(Duration::from_secs(20))?;
        Ok(lab)
    }

    /// The backends the lab built: be1..be3, and be4 with
    /// [`Options::spare_backend`].
    pub fn backends(&self) -> Vec<(&'static str, &'static str)> {
        let mut all = BACKENDS.to_vec();
        if self.options.spare_backend {
            all.push(SPARE_BACKEND);
        }
        all
    }

    fn ns_named(&self, suffix: &str) -> &Netns {
        let name = format!("{}-{suffix}", self.prefix);
        self.ns
            .iter()
            .find(|n| n.name == name)
            .expect("namespace of the lab")
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        self.ns_named("client")
    }

    /// The load balancer's namespace.
    pub fn lb(&self) -> &Netns {
        self.ns_named("lb")
    }

    fn build_network(&mut self) -> anyhow::Result<()> {
        let p = self.prefix.clone();
        let backends = self.backends();
        let router = self.options.router.then_some("rt");
        for suffix in ["sw", "client", "lb"]
            .into_iter()
            .chain(router)
            .chain(backends.iter().map(|b| b.0))
        {
            self.ns.push(Netns::new(&format!("{p}-{suffix}"))?);
        }
        let mut hosts: Vec<(&str, String, String, &str)> = vec![
            if self.options.router {
                ("rt", "eth0".to_string(), format!("{p}r"), ROUTER_ADDR)
            } else {
                ("client", "eth0".to_string(), format!("{p}c"), CLIENT_ADDR)
            },
            ("lb", self.lb_iface.clone(), format!("{p}p"), LB_ADDR),
        ];
        for (i, (name, addr)) in backends.iter().enumerate() {
            hosts.push((name, "eth0".to_string(), format!("{p}b{}", i + 1), addr));
        }
        let hosts: Vec<(&str, &str, &str, &str)> = hosts
            .iter()
            .map(|(host, iface, peer, addr)| (*host, iface.as_str(), peer.as_str(), *addr))
            .collect();
        topology::lab_bridge(&self.ns[0], &p, &hosts)?;
        if self.options.router {
            self.build_router()?;
        }
        if self.options.ipv6 {
            self.build_ipv6()?;
        }
        let client = self.client();
        client.ip(&["addr", "add", &format!("{OUTSIDE_ADDR}/32"), "dev", "eth0"])?;
        if !self.options.router {
            client.ip(&["route", "add", &format!("{VIP}/32"), "via", LB_ADDR])?;
        }
        crate::netns::disable_tx_checksum(client, "eth0")?;
        for (name, _) in backends {
            let be = self.ns_named(name);
            if self.options.router {
                be.ip(&["route", "add", "10.31.0.0/24", "via", ROUTER_ADDR])?;
            }
            match self.options.nat {
                None => topology::vip_on_loopback(be, VIP)?,
                Some(mode) => {
                    // Stock settings: the strict reverse-path filter.
                    be.sysctl("net.ipv4.conf.all.rp_filter=1")?;
                    be.sysctl("net.ipv4.conf.eth0.rp_filter=1")?;
                    if mode == "dnat" {
                        // Replies to clients go back through the LB.
                        be.ip(&["route", "add", &format!("{CLIENT_ADDR}/32"), "via", LB_ADDR])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The client behind the router: client eth0 (10.31.0.10, MTU 1500)
    /// to the router's `rc` (10.31.0.1, MTU 1400); the router forwards,
    /// routes the VIP to the load balancer; backends and the load balancer
    /// reach the client's subnet through it.
    fn build_router(&self) -> anyhow::Result<()> {
        let client_ns = format!("{}-client", self.prefix);
        let rt = self.ns_named("rt");
        rt.ip(&[
            "link", "add", "rc", "type", "veth", "peer", "name", "eth0", "netns", &client_ns,
        ])?;
        rt.ip(&["addr", "add", "10.31.0.1/24", "dev", "rc"])?;
        rt.ip(&[
            "link",
            "set",
            "dev",
            "rc",
            "mtu",
            &NARROW_MTU.to_string(),
            "up",
        ])?;
        rt.sysctl("net.ipv4.ip_forward=1")?;
        rt.ip(&["route", "add", &format!("{VIP}/32"), "via", LB_ADDR])?;
        let client = self.client();
        routed_client(client)?;
        self.lb()
            .ip(&["route", "add", "10.31.0.0/24", "via", ROUTER_ADDR])?;
        Ok(())
    }

    /// IPv6 on the bridge: addresses without duplicate detection (so they
    /// work at once), the VIPs on the backends' loopback, the client's
    /// route to the IPv6 VIP through the load balancer.
    fn build_ipv6(&self) -> anyhow::Result<()> {
        let client = self.client();
        for addr in [CLIENT_ADDR_V6, OUTSIDE_ADDR_V6] {
            client.ip(&["addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"])?;
        }
        client.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP_V6}/128"),
            "via",
            "fd00:30::2",
        ])?;
        client.ip(&["route", "add", &format!("{VIP_4OVER6}/32"), "via", LB_ADDR])?;
        self.lb().ip(&[
            "addr",
            "add",
            "fd00:30::2/64",
            "dev",
            &self.lb_iface,
            "nodad",
        ])?;
        for ((name, _), addr) in BACKENDS.iter().zip(BACKENDS_V6) {
            let be = self.ns_named(name);
            be.ip(&["addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"])?;
            be.ip(&["addr", "add", &format!("{VIP_V6}/128"), "dev", "lo"])?;
            be.ip(&["addr", "add", &format!("{VIP_4OVER6}/32"), "dev", "lo"])?;
        }
        Ok(())
    }

    fn spawn(
        &self,
        ns_index: usize,
        program: &Path,
        args: &[&str],
        what: &str,
    ) -> anyhow::Result<Proc> {
        // Appended: a restarted agent adds to its log.
        Proc::spawn(
            &self.ns[ns_index],
            program,
            args,
            &self.dir.join(format!("{what}.log")),
        )
        .with_context(|| format!("starting {what}"))
    }

    fn ns_index(&self, suffix: &str) -> usize {
        let name = format!("{}-{suffix}", self.prefix);
        self.ns
            .iter()
            .position(|n| n.name == name)
            .expect("namespace of the lab")
    }

    fn start_backend(&mut self, i: usize, mode: Mode) -> anyhow::Result<()> {
        let (name, _) = self.backends()[i];
        let root = self.dir.join(format!("www-{name}"));
        fs::create_dir_all(&root)?;
        // "be1" then padding: the first word names the backend.
        let mut body = format!("{name} ").into_bytes();
        body.resize(BODY_LEN, b'.');
        fs::write(root.join("whoami"), body)?;
        fs::write(root.join("big"), vec![b'x'; BIG_LEN])?;
        let idx = self.ns_index(name);
        // A NAT VIP's replies cross the load balancer's XDP program, which
        // updates checksums as they stand in the frame: a veth's partial
        // checksum (tx offload) would stay partial. Real NICs send full
        // checksums; only the lab needs this.
        crate::netns::disable_tx_checksum(&self.ns[idx], "eth0")?;
        if self.options.nat.is_none() {
            self.start_decap(idx, name, mode)?;
        }
        self.start_servers(i)
    }

    /// Starts `lb decap` on backend `name` (namespace `idx`).
    fn start_decap(&mut self, idx: usize, name: &str, mode: Mode) -> anyhow::Result<()> {
        let decap = self.spawn(
            idx,
            &self.lb_bin.clone(),
            &[
                &["decap", "--iface", "eth0", "--vip", VIP][..],
                if self.options.ipv6 {
                    &["--vip", VIP_V6, "--vip", VIP_4OVER6][..]
                } else {
                    &[][..]
                },
                &["--xdp-mode", mode.as_str()][..],
            ]
            .concat(),
            &format!("decap-{name}"),
        )?;
        self.procs.push(decap);
        Ok(())
    }

    /// Starts backend `i`'s servers: sink and echo when asked, and HTTP.
    fn start_servers(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, _) = self.backends()[i];
        let idx = self.ns_index(name);
        if self.options.sink {
            let script = self.dir.join("sink.py");
            fs::write(&script, SINK_SERVER)?;
            let sink = self.spawn(
                idx,
                &which("python3")?,
                &[&script.display().to_string(), &SINK_PORT.to_string()],
                &format!("sink-{name}"),
            )?;
            self.procs.push(sink);
        }
        if self.options.echo {
            let script = self.dir.join("echo.py");
            fs::write(&script, ECHO_SERVER)?;
            let echo = self.spawn(
                idx,
                &which("python3")?,
                &[&script.display().to_string(), name, &ECHO_PORT.to_string()],
                &format!("echo-{name}"),
            )?;
            self.procs.push(echo);
        }
        self.start_server(i)
    }

    /// Starts backend `i`'s HTTP server (port 80, every address; in a NAT
    /// lab [`NAT_PORT`] on the backend's own address only).
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, addr) = self.backends()[i];
        let root = self.dir.join(format!("www-{name}"));
        let idx = self.ns_index(name);
        let python = which("python3")?;
        let (port, bind) = if self.options.nat.is_some() {
            (NAT_PORT.to_string(), addr)
        } else {
            ("80".to_string(), "::")
        };
        let server = self.spawn(
            idx,
            &python,
            &[
                "-m",
                "http.server",
                &port,
                "--bind",
                bind,
                "--directory",
                &root.display().to_string(),
            ],
            &format!("http-{name}"),
        )?;
        self.servers[i] = Some(server);
        Ok(())
    }

    /// Waits until every backend's server answers on its own address.
    fn wait_for_servers(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let port = if self.options.nat.is_some() {
            NAT_PORT
        } else {
            80
        };
        // From the load balancer in a NAT lab: a `dnat` backend routes the
        // client's address through it, which does not forward yet.
        let from = if self.options.nat.is_some() {
            self.lb()
        } else {
            self.client()
        };
        for (name, addr) in self.backends() {
            if !wait_for_http(from, &format!("http://{addr}:{port}/whoami"), deadline) {
                bail!("the HTTP server of {name} did not start within {limit:?}");
            }
        }
        Ok(())
    }

    /// Stops backend `i`'s HTTP server.
    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut server) = self.servers[i].take() {
            server.stop();
        }
    }

    /// The lab's configuration: VIP `web` (port 80) over be1..be3 and, with
    /// [`Options::echo`], VIP `echo` ([`ECHO_PORT`]) over `echo_backends`
    /// (name, weight); then `extra` (more TOML, e.g. another `[[vip]]`).
    /// Health checks every 500 ms, timeout 250 ms, rise 2, fall 2.
    pub fn config_text(&self, echo_backends: &[(&str, u32)], extra: &str) -> String {
        let check = "\n  [vip.health_check]\n  kind = \"tcp\"\n  interval = \"500ms\"\n  timeout = \"250ms\"\n  rise = 2\n  fall = 2\n";
        let mut text = format!(
            "interface = \"{}\"\nxdp_mode = \"{}\"\n\n[maglev]\ntable_size = 65537\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{}\"\n{check}",
            self.lb_iface,
            self.mode.as_str(),
            self.options.nat.unwrap_or("dsr"),
        );
        let port = self
            .options
            .nat
            .map_or_else(String::new, |_| format!("  port = {NAT_PORT}\n"));
        for (_, addr) in BACKENDS {
            text.push_str(&format!(
                "\n  [[vip.backend]]\n  address = \"{addr}\"\n{port}"
            ));
        }
        if self.options.echo {
            text.push_str(&format!(
                "\n[[vip]]\nname = \"echo\"\naddress = \"{VIP}\"\nport = {ECHO_PORT}\nprotocol = \"tcp\"\nmode = \"{}\"\n{check}",
                self.options.nat.unwrap_or("dsr")
            ));
            for (name, weight) in echo_backends {
                let (_, addr) = self
                    .backends()
                    .into_iter()
                    .find(|b| b.0 == *name)
                    .expect("a backend of the lab");
                text.push_str(&format!(
                    "\n  [[vip.backend]]\n  address = \"{addr}\"\n  weight = {weight}\n"
                ));
            }
        }
        if self.options.ipv6 {
            for (name, vip) in [("web6", VIP_V6), ("web4over6", VIP_4OVER6)] {
                text.push_str(&format!(
                    "\n[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n{check}"
                ));
                for addr in BACKENDS_V6 {
                    text.push_str(&format!("\n  [[vip.backend]]\n  address = \"{addr}\"\n"));
                }
            }
        }
        if self.options.sink {
            text.push_str(&format!(
                "\n[[vip]]\nname = \"sink\"\naddress = \"{VIP}\"\nport = {SINK_PORT}\nprotocol = \"tcp\"\n{check}"
            ));
            for (_, addr) in BACKENDS {
                text.push_str(&format!("\n  [[vip.backend]]\n  address = \"{addr}\"\n"));
            }
        }
        text.push_str(extra);
        text
    }

    /// Writes `text` as the configuration and waits (at most 10 s) until
    /// the agent has reloaded it.
    ///
    /// # Panics
    /// The file cannot be written, or the agent does not reload in time
    /// (its log in the message): a test's failure.
    pub fn reload(&self, text: &str) {
        let before = self.log_count("configuration reloaded");
        self.write_config(text).expect("write config");
        assert!(
            self.wait_for_log(
                "configuration reloaded",
                before + 1,
                Duration::from_secs(10)
            ),
            "the agent did not reload; log:\n{}",
            self.agent_log()
        );
    }

    /// Writes the agent's configuration file (in place, as an editor that
    /// truncates and writes does).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_config(&self, text: &str) -> anyhow::Result<()> {
        fs::File::create(self.config_path())?.write_all(text.as_bytes())?;
        Ok(())
    }

    /// The agent's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    /// Where the agent pins its maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.lb().pin_dir(&self.lb_iface)
    }

    /// Starts the agent (`lb run --config FILE EXTRA_ARGS`), appending to
    /// its log.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn start_agent(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        let lb = self.lb_bin.clone();
        self.start_agent_of(&lb, extra_args)
    }

    /// Starts the agent of another build `lb` (`lb run --config FILE
    /// EXTRA_ARGS`), appending to the same log.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn start_agent_of(&mut self, lb: &Path, extra_args: &[&str]) -> anyhow::Result<()> {
        let idx = self.ns_index("lb");
        let config = self.config_path().display().to_string();
        let lb_bin = lb.to_path_buf();
        let lb = lb.display().to_string();
        let nofile = self
            .options
            .agent_nofile
            .map(|n| format!("--nofile={n}:{n}"));
        let mut args: Vec<&str> = Vec::new();
        if let Some(limit) = &nofile {
            args.extend([limit.as_str(), "--", lb.as_str()]);
        }
        args.extend(["run", "--config", &config]);
        args.extend_from_slice(extra_args);
        let program = if nofile.is_some() {
            which("prlimit")?
        } else {
            lb_bin
        };
        let agent = self.spawn(idx, &program, &args, "agent")?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Kills the agent with SIGKILL and waits for it to exit.
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }

    /// The `lb` binary the lab runs.
    pub fn lb_binary(&self) -> &Path {
        &self.lb_bin
    }

    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Proc::pid)
    }

    /// GETs `path` of the agent's API (loopback in the LB's namespace) with
    /// curl, at most `limit`; returns the body, or `None` on failure or
    /// timeout.
    pub fn api_get(&self, path: &str, limit: Duration) -> Option<String> {
        let out = self
            .lb()
            .command("curl")
            .args(["-sf", "--max-time", &format!("{:.3}", limit.as_secs_f64())])
            .arg(format!("http://127.0.0.1:9470{path}"))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the agent process is running.
    pub fn agent_running(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|a| !a.exited())
    }

    /// How many lines of the agent's log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.agent_log()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (at most `limit`) until the agent's log has at least `count`
    /// lines containing `needle`; returns whether it did.
    pub fn wait_for_log(&self, needle: &str, count: usize, limit: Duration) -> bool {
        crate::wait_until(limit, Duration::from_millis(50), || {
            (self.log_count(needle) >= count).then_some(())
        })
        .is_some()
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent (SIGTERM, then waits for it to exit).
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
    }

    fn wait_until_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(agent) = self.agent.as_mut()
                && let Some(status) = agent.exit_status()
            {
                bail!("the agent exited ({status}):\n{}", self.agent_log());
            }
            if self.pin_dir().join(lb_common::MAP_STATS).exists()
                && self.requests(1, None)[0].is_some()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "no request through the VIP succeeded within {limit:?}; agent log:\n{}\nstatus:\n{}",
            self.agent_log(),
            self.api_get("/status", Duration::from_secs(2))
                .unwrap_or_default()
        )
    }

    /// Sends `count` HTTP requests to the VIP from the client, each on a new
    /// connection (at most 2 s each), from `source` when given. Returns, per
    /// request, the name of the backend that answered or `None` on failure.
    pub fn requests(&self, count: usize, source: Option<&str>) -> Vec<Option<String>> {
        self.requests_to(VIP, count, source)
    }

    /// [`Lab::requests`] to another VIP (an IPv6 one in brackets:
    /// `[fd00:30::100]`).
    pub fn requests_to(
        &self,
        vip: &str,
        count: usize,
        source: Option<&str>,
    ) -> Vec<Option<String>> {
        whoami(self.client(), vip, count, source)
    }

    /// Stops every process and removes the pins the agent may have left.
    fn teardown(&mut self) {
        self.stop_agent();
        for server in self.servers.iter_mut().flatten() {
            server.stop();
        }
        for proc in self.procs.iter_mut().rev() {
            proc.stop();
        }
        // The pins, and the namespace's directory above them once empty.
        lb_userspace::dataplane::pins::unpin(&self.pin_dir());
        let _ = fs::remove_file(self.lb().lock_path(&self.lb_iface));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
        // Namespaces (self.ns) drop after this, removing every interface.
    }
}

/// The path of `program` in `PATH`.
///
/// # Errors
/// It is in no directory of `PATH`.
pub fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{program} not found in PATH")
}

/// Interface counters of a namespace's interface, from its /proc/net/dev.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Reads `iface`'s counters in `ns`.
///
/// # Errors
/// The file cannot be read or has no such interface.
pub fn if_counters(ns: &Netns, iface: &str) -> anyhow::Result<IfCounters> {
    let out = ns.command("cat").arg("/proc/net/dev").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != iface {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 10 {
            return Ok(IfCounters {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            });
        }
    }
    bail!("no interface {iface} in {}", ns.name)
}

/// TCP segments a namespace sent, retransmissions included (`Tcp: OutSegs`
/// plus `RetransSegs`).
///
/// # Errors
/// The file cannot be read or parsed.
pub fn tcp_out_segments(ns: &Netns) -> anyhow::Result<u64> {
    let out = ns.command("cat").arg("/proc/net/snmp").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines")
    };
    let value = |name: &str| -> anyhow::Result<u64> {
        let index = names
            .split_whitespace()
            .position(|n| n == name)
            .with_context(|| format!("no {name}"))?;
        values
            .split_whitespace()
            .nth(index)
            .context("short line")?
            .parse()
            .with_context(|| format!("{name} value"))
    };
    Ok(value("OutSegs")? + value("RetransSegs")?)
}

/// Asks `url` from namespace `from` with HEAD requests every 100 ms until
/// one succeeds or `deadline` passes; whether one did. HEAD keeps answers
/// small, so no backend learns a path MTU toward the client here (the
/// router lab's downloads must learn theirs through the VIP).
pub fn wait_for_http(from: &Netns, url: &str, deadline: Instant) -> bool {
    let limit = deadline.saturating_duration_since(Instant::now());
    crate::wait_until(limit, Duration::from_millis(100), || {
        from.command("curl")
            .args(["-s", "-I", "-o", "/dev/null", "--max-time", "1", url])
            .status()
            .is_ok_and(|s| s.success())
            .then_some(())
    })
    .is_some()
}

/// Sends `count` HTTP requests for `/whoami` to `vip` (`host` or `[v6]`)
/// with curl from namespace `from`, each on a new connection (at most 2 s
/// each), from address `source` when given. Returns, per request, the first
/// word of the body (the backend's name) when the status was 200, else
/// `None`; all `None` when curl cannot run.
pub fn whoami(from: &Netns, vip: &str, count: usize, source: Option<&str>) -> Vec<Option<String>> {
    let url = format!("http://{vip}/whoami");
    let mut cmd = from.command("curl");
    cmd.args([
        "-s",
        "--max-time",
        "2",
        "-H",
        "Connection: close",
        "-w",
        "\n%{http_code}\n",
    ]);
    if let Some(source) = source {
        cmd.args(["--interface", source]);
    }
    for _ in 0..count {
        cmd.arg(&url);
    }
    let Ok(out) = cmd.stderr(Stdio::null()).output() else {
        return vec![None; count];
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Each request prints BODY (or nothing), a newline, then its status code.
    let mut results = Vec::with_capacity(count);
    let mut lines = text.split('\n');
    while results.len() < count {
        let (Some(body), Some(code)) = (lines.next(), lines.next()) else {
            break;
        };
        let backend = body.split(' ').next().unwrap_or("").to_string();
        results.push((code == "200" && !backend.is_empty()).then_some(backend));
    }
    results.resize(count, None);
    results
}
