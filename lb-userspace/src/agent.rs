//! `lb run`: load and attach `xdp_lb`, fill its maps, pin them, health-check
//! every backend and feed the results back, until shut down.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{LAYOUT_VERSION, MAP_CONNS, MAP_MAGLEV, Outcome};
use log::{error, info, warn};
use tokio::{sync::mpsc, time};

use crate::{
    api::{self, Shared},
    balancer::{self, Balancer, BalancerError, Changes},
    config::{Config, XdpModeConfig},
    health::{CheckResult, Checkers, Target},
    maps::{self, AyaMaps, MapWriteError, StatsReader},
    netif,
};

/// Root of the agent's pins: `PIN_ROOT/<interface>/<map name>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb";
/// Where bpffs is expected to be mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Why `lb run` or `lb decap` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Neither `interface` nor `--iface` was given.
    #[error("no interface: set `interface` in the configuration or pass --iface")]
    NoInterface,
    /// The interface does not exist in this network namespace.
    #[error("interface {0:?} does not exist")]
    UnknownInterface(String),
    /// No outer source address could be chosen.
    #[error("interface {0} has no IPv4 address: set encap.source_v4")]
    NoSourceAddress(String),
    /// A system call or file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object could not be loaded (verifier, permissions, kernel).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The program could not be loaded or attached.
    #[error("{op} program {program}: {source}")]
    Program {
        /// Load or attach.
        op: &'static str,
        /// Program name.
        program: &'static str,
        /// aya's error.
        source: aya::programs::ProgramError,
    },
    /// Maps could not be taken or written.
    #[error(transparent)]
    Map(#[from] MapWriteError),
    /// The configuration does not fit the data plane.
    #[error(transparent)]
    Balancer(#[from] BalancerError),
    /// Another agent holds the interface.
    #[error("another agent is running on {0} (it holds /run/lb/{0}.lock)")]
    Running(String),
    /// The pinned maps were made by an agent with another map layout.
    #[error(
        "the data plane pinned in {dir} has map layout version {found}, this agent expects {LAYOUT_VERSION}: refusing to adopt maps it would misread. Run the agent that made them, or remove {dir} (this detaches the data plane and drops its connection table) and start again"
    )]
    Layout {
        /// The pin directory.
        dir: String,
        /// The version found.
        found: String,
    },
}

fn io_err(op: &'static str, path: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |source| AgentError::Io { op, path, source }
}

/// The embedded object, aligned as aya needs.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"))
}

/// aya's attach mode for a configured mode.
pub fn xdp_mode(mode: XdpModeConfig) -> XdpMode {
    match mode {
        XdpModeConfig::Auto => XdpMode::Default,
        XdpModeConfig::Native => XdpMode::Driver,
        XdpModeConfig::Generic => XdpMode::Skb,
    }
}

/// Loads and attaches program `name` of `ebpf` to `iface`; returns the link.
///
/// # Errors
/// [`AgentError::Program`] when the verifier or the attach refuses it.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<XdpLink, AgentError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(AgentError::Program {
            op: "find",
            program: name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| AgentError::Program {
            op: "find",
            program: name,
            source,
        })?;
    program.load().map_err(|source| AgentError::Program {
        op: "load",
        program: name,
        source,
    })?;
    let err = |op| {
        move |source| AgentError::Program {
            op,
            program: name,
            source,
        }
    };
    let id = program.attach(iface, mode).map_err(err("attach"))?;
    program.take_link(id).map_err(err("take link of"))
}

/// Name of the pinned XDP link in a pin directory.
pub const LINK_PIN: &str = "link";

/// Pins every map of `ebpf` under `dir` (created empty).
fn pin_maps(ebpf: &Ebpf, dir: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir.display().to_string()))?;
    for (name, map) in ebpf.maps() {
        map.pin(dir.join(name)).map_err(|e| AgentError::Io {
            op: "pin map in",
            path: dir.join(name).display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// Removes the pins of `dir`, and `PIN_ROOT` when nothing else is left in it.
fn unpin(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!("removing pins in {}: {e}", dir.display());
    }
    let _ = std::fs::remove_dir(PIN_ROOT);
}

/// How `lb run` was asked to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration file, watched for changes.
    pub config_path: PathBuf,
    /// Interface; overrides the configuration's.
    pub iface: Option<String>,
    /// Leave the data plane attached and pinned on exit.
    pub keep_attached: bool,
}

/// Holds `/run/lb/<iface>.lock` while the agent runs, so two agents never
/// drive one data plane.
struct InstanceLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl InstanceLock {
    fn take(iface: &str) -> Result<Self, AgentError> {
        let dir = Path::new("/run/lb");
        std::fs::create_dir_all(dir).map_err(io_err("create", "/run/lb"))?;
        let path = dir.join(format!("{iface}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", path.display().to_string()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(AgentError::Running(iface.to_string()));
        }
        Ok(Self { _file: file, path })
    }
}

/// The data plane the agent drives: its maps, counters and XDP link.
struct DataPlane {
    balancer: Balancer<AyaMaps>,
    stats: StatsReader,
    link: PinnedLink,
    dir: PathBuf,
}

/// Loads, fills, attaches and pins a new data plane.
fn start_fresh(
    config: &Config,
    iface: &str,
    encap_source: Ipv4Addr,
    dir: &Path,
) -> Result<DataPlane, AgentError> {
    let regions = balancer::table_regions(config.vips.len());
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_MAGLEV, regions * config.table_size)
        .map_max_entries(MAP_CONNS, config.conntrack_entries)
        .load(object())?;
    pin_maps(&ebpf, dir)?;
    let stats = StatsReader::take(&mut ebpf)?;
    let balancer = Balancer::new(AyaMaps::take(&mut ebpf)?, config, encap_source, regions)?;
    let link = attach(&mut ebpf, "xdp_lb", iface, xdp_mode(config.xdp_mode))?;
    let link: FdLink = link.try_into().map_err(|e| AgentError::Io {
        op: "pin the XDP link (a netlink attachment cannot be pinned; kernel 5.9+ needed) on",
        path: iface.to_string(),
        source: std::io::Error::other(format!("{e}")),
    })?;
    let link = link.pin(dir.join(LINK_PIN)).map_err(|e| AgentError::Io {
        op: "pin link in",
        path: dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    info!(
        "xdp_lb attached to {iface} ({:?} mode), pinned in {}: {} VIPs, {} backends, Maglev table size {}, outer source {encap_source}",
        config.xdp_mode,
        dir.display(),
        config.vips.len(),
        config.backend_count(),
        config.table_size
    );
    Ok(DataPlane {
        balancer,
        stats,
        link,
        dir: dir.to_path_buf(),
    })
}

/// Adopts the data plane pinned in `dir`: no program load, no map reset;
/// `config` is applied as a difference.
fn adopt(config: &Config, encap_source: Ipv4Addr, dir: &Path) -> Result<DataPlane, AgentError> {
    match maps::pinned_layout(dir)? {
        Some(LAYOUT_VERSION) => {}
        found => {
            return Err(AgentError::Layout {
                dir: dir.display().to_string(),
                found: found.map_or_else(|| "unknown (other sizes)".into(), |v| v.to_string()),
            });
        }
    }
    let link = PinnedLink::from_pin(dir.join(LINK_PIN)).map_err(|e| AgentError::Io {
        op: "open pinned link",
        path: dir.join(LINK_PIN).display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let maps = AyaMaps::from_pins(dir)?;
    let stats = StatsReader::from_pins(dir)?;
    let regions = maps.maglev_entries() / config.table_size.max(1);
    let (balancer, changes) = Balancer::adopt(maps, config, encap_source, regions)?;
    info!(
        "adopted the data plane pinned in {} (program, link, maps and connection table kept): {changes}",
        dir.display()
    );
    Ok(DataPlane {
        balancer,
        stats,
        link,
        dir: dir.to_path_buf(),
    })
}

/// The outer source address for `config` on `iface`.
fn encap_source(config: &Config, iface: &str) -> Result<Ipv4Addr, AgentError> {
    match config.encap_source_v4 {
        Some(a) => Ok(a),
        None => netif::ipv4_addresses(Some(iface))
            .map_err(io_err("list addresses of", iface.to_string()))?
            .first()
            .copied()
            .ok_or_else(|| AgentError::NoSourceAddress(iface.to_string())),
    }
}

/// Runs the agent for `config` until `shutdown` completes: adopts the data
/// plane pinned for the interface if there is one (same layout), else
/// loads, fills, attaches and pins a new one; health-checks backends;
/// reloads on SIGHUP and when the configuration file changes. On shutdown
/// it detaches and removes the pins, unless `keep_attached`.
///
/// # Errors
/// Anything that keeps the data plane from starting; once running, errors
/// (a rejected reload, a failed map write) are logged and the agent goes on.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let iface = options
        .iface
        .clone()
        .or_else(|| config.interface.clone())
        .ok_or(AgentError::NoInterface)?;
    netif::ifindex(&iface).ok_or_else(|| AgentError::UnknownInterface(iface.clone()))?;
    let _lock = InstanceLock::take(&iface)?;
    let source = encap_source(&config, &iface)?;
    if netif::enable_ipv4_forwarding(&iface)
        .map_err(io_err("enable forwarding on", iface.clone()))?
    {
        info!("enabled IPv4 forwarding on {iface}: next-hop lookups (bpf_fib_lookup) need it");
    }
    netif::ensure_bpffs(Path::new(BPFFS)).map_err(io_err("mount bpffs on", BPFFS))?;
    let dir = PathBuf::from(PIN_ROOT).join(&iface);
    let plane = if dir.join(LINK_PIN).exists() {
        adopt(&config, source, &dir)?
    } else {
        if dir.exists() {
            warn!(
                "removing pins without a link in {} (an agent stopped before attaching)",
                dir.display()
            );
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", dir.display().to_string()))?;
        }
        match start_fresh(&config, &iface, source, &dir) {
            Ok(plane) => plane,
            Err(e) => {
                unpin(&dir);
                return Err(e);
            }
        }
    };
    let shared = Shared::new(&iface, StatsReader::from_pins(&plane.dir)?);
    shared.set_vips(plane.balancer.vips());
    let mut agent = Agent {
        shared,
        plane,
        config,
        iface: iface.clone(),
        options,
        source,
    };
    let result = agent.serve(shutdown).await;
    agent.log_counters();
    let Agent { plane, options, .. } = agent;
    let DataPlane {
        balancer,
        stats,
        link,
        dir,
    } = plane;
    drop((balancer, stats));
    if options.keep_attached {
        info!(
            "--keep-attached: xdp_lb stays attached to {iface} with its pins in {}; the next `lb run` adopts it",
            dir.display()
        );
        drop(link);
    } else {
        match link.unpin() {
            Ok(link) => drop(link),
            Err(e) => warn!("unpinning the link: {e}"),
        }
        unpin(&dir);
        info!("detached from {iface}");
    }
    result
}

/// The running agent.
struct Agent {
    shared: Arc<Shared>,
    plane: DataPlane,
    config: Config,
    iface: String,
    options: RunOptions,
    source: Ipv4Addr,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Quiet time after a change of the configuration file before it is read:
/// several quick writes give one reload.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);

impl Agent {
    async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let listen = self.config.api_listen;
        let server = api::serve(listen, self.shared.clone())
            .await
            .map_err(io_err("serve the API on", listen.to_string()))?;
        info!("API on http://{listen}: /metrics, /status, /healthz");
        let _server = AbortOnDrop(server);
        let (tx, mut rx) = mpsc::channel(1024);
        let mut checkers = Checkers::new();
        checkers.sync(self.health_targets(), &tx);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(io_err("install handler for", "SIGHUP"))?;
        let (file_tx, mut file_rx) = mpsc::channel(16);
        let _watcher = match watch(&self.options.config_path, file_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "cannot watch {} ({e}); reload with SIGHUP",
                    self.options.config_path.display()
                );
                None
            }
        };
        let mut pending: Option<time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(result) = rx.recv() => {
                    if checkers.is_current(&result) {
                        self.on_check(&result);
                    }
                }
                _ = hangup.recv() => {
                    pending = None;
                    self.reload("SIGHUP", &mut checkers, &tx);
                }
                Some(()) = file_rx.recv() => pending = Some(time::Instant::now() + RELOAD_DEBOUNCE),
                () = time::sleep_until(pending.unwrap_or_else(time::Instant::now)), if pending.is_some() => {
                    pending = None;
                    self.reload("file changed", &mut checkers, &tx);
                }
            }
        }
        checkers.stop();
        Ok(())
    }

    /// Applies one health-check result.
    fn on_check(&mut self, result: &CheckResult) {
        self.shared.record_check(result.backend_id, &result.probe);
        let Some(healthy) = result.change else {
            return;
        };
        let balancer = &mut self.plane.balancer;
        let Some((v, b)) = balancer.find_backend(result.backend_id) else {
            return;
        };
        let vip = &balancer.vips()[v];
        let (name, address) = (vip.config.name.clone(), vip.backends[b].address);
        let reason = match &result.probe {
            Ok(latency) => format!(
                "check succeeded in {}",
                humantime::format_duration(*latency)
            ),
            Err(failure) => failure.to_string(),
        };
        match balancer.set_health(v, b, healthy) {
            Ok(_) if healthy => info!("backend {address} of VIP {name:?} is healthy: {reason}"),
            Ok(_) => warn!("backend {address} of VIP {name:?} is unhealthy: {reason}"),
            Err(e) => warn!("applying health of backend {address} of VIP {name:?}: {e}"),
        }
        self.shared.set_vips(self.plane.balancer.vips());
    }

    /// Reads the configuration file again and applies the difference; a
    /// configuration with any error is rejected whole and nothing changes.
    fn reload(&mut self, why: &str, checkers: &mut Checkers, events: &mpsc::Sender<CheckResult>) {
        let path = self.options.config_path.clone();
        match self.try_reload(&path) {
            Ok(None) => {
                self.shared.record_reload(Ok(()));
                info!(
                    "configuration reloaded ({why}): {} unchanged",
                    path.display()
                );
            }
            Ok(Some(changes)) => {
                self.shared.record_reload(Ok(()));
                self.shared.set_vips(self.plane.balancer.vips());
                let (started, stopped) = checkers.sync(self.health_targets(), events);
                info!(
                    "configuration reloaded ({why}) from {}: {changes}; health checkers +{started} -{stopped}",
                    path.display()
                );
            }
            Err(e) => {
                self.shared.record_reload(Err(e.clone()));
                error!("configuration rejected ({why}), the running one stays in force: {e}");
            }
        }
    }

    fn try_reload(&mut self, path: &Path) -> Result<Option<Changes>, String> {
        let loaded = Config::load(path).map_err(|e| e.to_string())?;
        for warning in &loaded.warnings {
            warn!("{}: warning: {warning}", path.display());
        }
        let new = loaded.config;
        if new == self.config {
            return Ok(None);
        }
        let immutable = [
            (
                "interface",
                new.interface.is_some()
                    && new.interface.as_deref() != Some(self.iface.as_str())
                    && self.options.iface.is_none(),
                format!("{:?} -> {:?}", self.config.interface, new.interface),
            ),
            (
                "xdp_mode",
                new.xdp_mode != self.config.xdp_mode,
                format!("{:?} -> {:?}", self.config.xdp_mode, new.xdp_mode),
            ),
            (
                "conntrack.max_entries",
                new.conntrack_entries != self.config.conntrack_entries,
                format!(
                    "{} -> {}",
                    self.config.conntrack_entries, new.conntrack_entries
                ),
            ),
            (
                "api.listen",
                new.api_listen != self.config.api_listen,
                format!("{} -> {}", self.config.api_listen, new.api_listen),
            ),
        ];
        if let Some((key, _, change)) = immutable.iter().find(|(_, changed, _)| *changed) {
            return Err(format!(
                "{key} cannot change by reload ({change}): restart the agent"
            ));
        }
        let source = encap_source(&new, &self.iface).map_err(|e| e.to_string())?;
        let changes = self
            .plane
            .balancer
            .apply(&new, source)
            .map_err(|e| e.to_string())?;
        self.config = new;
        self.source = source;
        Ok(Some(changes))
    }

    /// One health-check target per backend of every VIP, with the
    /// backend's current state as the checker's starting point.
    fn health_targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        for vip in self.plane.balancer.vips() {
            for b in &vip.backends {
                targets.push(Target {
                    backend_id: b.id,
                    addr: SocketAddr::new(b.address, vip.config.health_check.port),
                    check: vip.config.health_check.clone(),
                    healthy: b.healthy,
                });
            }
        }
        targets
    }

    /// Logs every non-zero counter: outcomes, then per VIP and per backend.
    fn log_counters(&self) {
        let stats = &self.plane.stats;
        let reloads = self.shared.reloads();
        let outcomes: Vec<String> = Outcome::ALL
            .iter()
            .filter_map(|&o| {
                let c = stats.outcome(o);
                (c.packets > 0).then(|| format!("{}={}", o.name(), c.packets))
            })
            .collect();
        info!(
            "counters (packets): {}; reloads {} applied, {} rejected",
            if outcomes.is_empty() {
                "none".to_string()
            } else {
                outcomes.join(" ")
            },
            reloads.applied,
            reloads.rejected
        );
        for vip in self.plane.balancer.vips() {
            let c = stats.vip(vip.id);
            info!(
                "VIP {:?}: {} packets, {} bytes",
                vip.config.name, c.packets, c.bytes
            );
            for b in &vip.backends {
                let c = stats.backend(b.id);
                let addr: IpAddr = b.address;
                info!("  backend {addr}: {} packets, {} bytes", c.packets, c.bytes);
            }
        }
    }
}

/// Watches the directory of `path` (editors replace files by renaming) and
/// sends `()` on `changed` for every event that names the file.
fn watch(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let name = path.file_name().map(ToOwned::to_owned);
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            // Full: a reload is already pending.
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
