//! `lb run`: load and attach `xdp_lb`, fill its maps, pin them, health-check
//! every backend and feed the results back, until shut down.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use lb_common::{LAYOUT_FINGERPRINT, Outcome};
use log::{debug, error, info, warn};
use tokio::{sync::mpsc, time};

pub mod reload;
pub mod watch;

use crate::{
    api::{self, Shared},
    balancer::{
        Balancer, BalancerError, Changes, ConnsVerdict, MapStore as _, MapStoreError, Sources,
        WALK_MIN_INTERVAL, WalkSchedule,
    },
    config::{Config, Loaded},
    dataplane::{
        conns,
        error::DataplaneError,
        maps::{self, AyaMaps},
        nexthops::{self, NextHopTarget, NextHopWriter},
        object::{attach, load_object, xdp_mode},
        pins::{ADOPTED_MAPS, BPFFS, InstanceLock, LINK_PIN, pin_dir, pin_maps, unpin},
        resolve,
        stats::StatsReader,
        upgrade,
    },
    health::{CheckResult, Checkers, Target},
    netif,
};
use reload::{Debounce, ReadConfig, read_config};
use watch::watch;

/// Raises this process's soft limit of open files to its hard limit, so
/// API clients, health checks and map descriptors do not run out under a
/// service manager's default (systemd: 1024 soft). Returns (old, new).
///
/// # Errors
/// `getrlimit` or `setrlimit` fails.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((old, limit.rlim_cur))
}

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
    /// No outer IPv6 source address could be chosen for IPv6 backends.
    #[error("interface {0} has no global IPv6 address: set encap.source_v6")]
    NoSourceAddressV6(String),
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
    /// An operation on the data plane failed (program, pin, lock).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// Maps could not be taken or written.
    #[error(transparent)]
    Map(#[from] MapStoreError),
    /// The configuration does not fit the data plane.
    #[error(transparent)]
    Balancer(#[from] BalancerError),
    /// A pinned data plane lacks a map the agent needs.
    #[error(
        "the data plane pinned in {dir} has no map {map} (its pin was removed): it cannot be adopted. To recover, run `rm -r {dir}` and start `lb run` again: this detaches xdp_lb until the new agent attaches (about a second without forwarding) and drops the connection table (flows are hashed again; a flow whose backend changes breaks)"
    )]
    MissingPin {
        /// The pin directory.
        dir: String,
        /// The map whose pin is missing.
        map: &'static str,
    },
    /// A configuration without VIPs would replace a data plane with VIPs.
    #[error(
        "the configuration has no VIP and would remove the {running} VIPs of the running data plane: refused (set allow_empty = true if that is meant)"
    )]
    EmptyConfig {
        /// VIPs running.
        running: usize,
    },
    /// `lb decap` was given an address that cannot be a VIP, or one twice.
    #[error("--vip {0}")]
    BadVip(String),
    /// `[bgp]` cannot be announced (no router id).
    #[error("{0}")]
    Bgp(String),
    /// The pinned maps were made by an agent with another map layout.
    #[error(
        "the data plane pinned in {dir} has map layout {found}, this agent's is {LAYOUT_FINGERPRINT:#010x}: refusing to adopt maps it would misread. Run the agent that made them, or remove {dir} (this detaches the data plane and drops its connection table) and start again"
    )]
    Layout {
        /// The pin directory.
        dir: String,
        /// The version found.
        found: String,
    },
}

/// Maps an I/O error of operation `op` on `path` (a file, directory or
/// interface name) to [`AgentError::Io`], for `map_err`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |source| AgentError::Io { op, path, source }
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

/// The data plane the agent drives: its maps, counters and XDP link.
struct DataPlane {
    balancer: Balancer<AyaMaps>,
    stats: StatsReader,
    link: PinnedLink,
    dir: PathBuf,
    /// The program the link runs.
    program: upgrade::ProgramId,
}

/// Loads, fills, attaches and pins a new data plane.
fn start_fresh(
    config: &Config,
    iface: &str,
    encap_source: Sources,
    dir: &Path,
) -> Result<DataPlane, AgentError> {
    let sizing = config.sizing;
    let mut ebpf = load_object(config)?;
    pin_maps(&ebpf, dir)?;
    let stats = StatsReader::take(&mut ebpf)?;
    let balancer = Balancer::new(
        AyaMaps::take(&mut ebpf)?,
        config,
        encap_source,
        sizing.table_regions,
    )?;
    let link = attach(
        &mut ebpf,
        upgrade::PROGRAM,
        iface,
        xdp_mode(config.xdp_mode),
    )?;
    let program = upgrade::loaded_program(&ebpf)?;
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
        "xdp_lb attached to {iface} ({:?} mode), pinned in {}: {} VIPs, {} backends, outer sources {} and {}; {sizing}",
        config.xdp_mode,
        dir.display(),
        config.vips.len(),
        config.backend_count(),
        encap_source.v4,
        encap_source.v6,
    );
    Ok(DataPlane {
        balancer,
        stats,
        link,
        dir: dir.to_path_buf(),
        program,
    })
}

/// Adopts the data plane pinned in `dir`: no program load, no map reset;
/// `config` is applied as a difference.
fn adopt(config: &Config, encap_source: Sources, dir: &Path) -> Result<DataPlane, AgentError> {
    match maps::pinned_layout(dir)? {
        Some(LAYOUT_FINGERPRINT) => {}
        found => {
            return Err(AgentError::Layout {
                dir: dir.display().to_string(),
                found: found
                    .map_or_else(|| "unknown (other sizes)".into(), |v| format!("{v:#010x}")),
            });
        }
    }
    if let Some(map) = ADOPTED_MAPS.iter().find(|m| !dir.join(m).exists()) {
        return Err(AgentError::MissingPin {
            dir: dir.display().to_string(),
            map,
        });
    }
    let link = PinnedLink::from_pin(dir.join(LINK_PIN)).map_err(|e| AgentError::Io {
        op: "open pinned link",
        path: dir.join(LINK_PIN).display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let maps = AyaMaps::from_pins(dir)?;
    let stats = StatsReader::from_pins(dir)?;
    let running = maps.vips()?.len();
    if config.vips.is_empty() && !config.allow_empty && running > 0 {
        return Err(AgentError::EmptyConfig { running });
    }
    let regions = maps.maglev_entries() / config.table_size.max(1);
    let max_vips = crate::config::sizing::max_vips_of(regions);
    if max_vips != config.sizing.max_vips {
        warn!(
            "the adopted data plane holds {max_vips} VIPs (maglev.max_vips when it started), the configuration asks {}: the adopted size stays until the agent is stopped without --keep-attached and started again",
            config.sizing.max_vips
        );
    }
    let (balancer, changes) = Balancer::adopt(maps, config, encap_source, regions)?;
    let swap = upgrade::upgrade(dir)?;
    info!(
        "adopted the data plane pinned in {} (link, maps and connection table kept): {changes}",
        dir.display()
    );
    if swap.replaced() {
        info!(
            "xdp_lb upgraded on the pinned link in one update: program {} -> {}; maps, counters and connection table kept",
            swap.old, swap.new
        );
    } else {
        info!(
            "xdp_lb kept: the running program ({}) is this build's",
            swap.old
        );
    }
    Ok(DataPlane {
        balancer,
        stats,
        link,
        dir: dir.to_path_buf(),
        program: swap.new,
    })
}

/// The outer source addresses for `config` on `iface`: the configured ones,
/// else the interface's first IPv4 and first global IPv6 address; each is
/// required only when a backend of its family needs it.
fn encap_source(config: &Config, iface: &str) -> Result<Sources, AgentError> {
    let backends = || config.vips.iter().flat_map(|v| &v.backends);
    let v4 = match config.encap_source_v4 {
        Some(a) => a,
        None => netif::ipv4_addresses(Some(iface))
            .map_err(io_err("list addresses of", iface.to_string()))?
            .first()
            .copied()
            .or_else(|| (!backends().any(|b| b.address.is_ipv4())).then_some(Ipv4Addr::UNSPECIFIED))
            .ok_or_else(|| AgentError::NoSourceAddress(iface.to_string()))?,
    };
    let v6 = match config.encap_source_v6 {
        Some(a) => a,
        None => netif::ipv6_addresses(Some(iface))
            .map_err(io_err("list addresses of", iface.to_string()))?
            .first()
            .copied()
            .or_else(|| (!backends().any(|b| b.address.is_ipv6())).then_some(Ipv6Addr::UNSPECIFIED))
            .ok_or_else(|| AgentError::NoSourceAddressV6(iface.to_string()))?,
    };
    Ok(Sources { v4, v6 })
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
    match raise_open_file_limit() {
        Ok((old, new)) if old != new => info!("open-file limit raised from {old} to {new}"),
        Ok((_, new)) => info!("open-file limit {new}"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    let _lock = InstanceLock::take(&iface)?;
    let source = encap_source(&config, &iface)?;
    crate::bgp::check(&config, source.v4, &iface)
        .await
        .map_err(AgentError::Bgp)?;
    if netif::enable_ipv4_forwarding(&iface)
        .map_err(io_err("enable forwarding on", iface.clone()))?
    {
        info!("enabled IPv4 forwarding on {iface}: next-hop lookups (bpf_fib_lookup) need it");
    }
    // IPv6 next-hop lookups need IPv6 forwarding likewise; a host without
    // IPv6 simply has no such sysctl.
    match netif::enable_ipv6_forwarding(&iface) {
        Ok(true) => info!("enabled IPv6 forwarding on {iface}: next-hop lookups need it"),
        Ok(false) => {}
        Err(e) => {
            warn!("cannot enable IPv6 forwarding on {iface} ({e}): IPv6 VIPs will not be forwarded")
        }
    }
    netif::ensure_bpffs(Path::new(BPFFS)).map_err(io_err("mount bpffs on", BPFFS))?;
    let dir = pin_dir(&iface);
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
    // The BGP speaker publishes its state here; the API reads it.
    let (bgp_status, bgp_status_rx) = tokio::sync::watch::channel(None);
    let shared = Shared::new(&iface, StatsReader::from_pins(&plane.dir)?, bgp_status_rx);
    shared.set_vips(plane.balancer.vips());
    shared.set_program(plane.program);
    let wanted =
        crate::bgp::wanted(&config, source.v4, plane.balancer.vips()).map_err(AgentError::Bgp)?;
    let bgp = crate::bgp::Speaker::start(&iface, wanted, bgp_status);
    let mut agent = Agent {
        shared,
        plane,
        config,
        iface: iface.clone(),
        options,
        source,
        last_local_error: None,
        bgp,
        walks: WalkSchedule::default(),
    };
    let result = agent.serve(shutdown).await;
    agent.log_counters();
    let Agent {
        plane,
        options,
        bgp,
        ..
    } = agent;
    // The announcements were withdrawn when the shutdown came (in serve);
    // forward until withdraw_delay has passed, stop BIRD, then detach.
    bgp.shutdown(options.keep_attached).await;
    let DataPlane {
        balancer,
        stats,
        link,
        dir,
        ..
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

/// Least time between two log lines about health checks that failed for a
/// local reason.
const LOCAL_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The running agent.
struct Agent {
    shared: Arc<Shared>,
    plane: DataPlane,
    config: Config,
    iface: String,
    options: RunOptions,
    source: Sources,
    /// When a local health-check failure was last logged.
    last_local_error: Option<time::Instant>,
    /// The BGP speaker: told the announcement rule's input after every
    /// health change and reload.
    bgp: crate::bgp::Speaker,
    /// When the connection table is walked next.
    walks: WalkSchedule,
}

/// A walk of the connection table as it ended, with how long it took.
type ConnsWalk = (Result<ConnsVerdict, String>, Duration);

/// Sets a stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Agent {
    async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let listen = self.config.api_listen;
        let server = api::serve(listen, self.shared.clone(), self.config.api_max_connections)
            .await
            .map_err(io_err("serve the API on", listen.to_string()))?;
        info!(
            "API on http://{listen}: /metrics, /status, /healthz (at most {} connections)",
            self.config.api_max_connections
        );
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
        let (read_tx, mut read_rx) = mpsc::channel::<ReadConfig>(1);
        let mut debounce = Debounce::default();
        let mut reading = false;
        let (targets_tx, targets_rx) =
            tokio::sync::watch::channel(self.plane.balancer.next_hop_targets());
        let next_hops = self.start_next_hops(targets_rx);
        let (walk_tx, mut walk_rx) = mpsc::channel::<ConnsWalk>(1);
        // Walks of the connection table for VIPs whose TCP SYNs look their
        // flows up (see `balancer::ConnsCheck`), every 10 s at most.
        let mut walk_tick = time::interval(WALK_MIN_INTERVAL);
        walk_tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        let mut walking = false;
        // Set when serving ends, so a walk does not hold the runtime's
        // shutdown (which waits for blocking tasks).
        let walk_stop = Arc::new(AtomicBool::new(false));
        let _walk_stop = StopOnDrop(walk_stop.clone());
        // Attached (or adopted), maps filled, API serving: ready.
        crate::systemd::ready(&self.status_line());
        tokio::pin!(shutdown);
        loop {
            let due = debounce.due();
            tokio::select! {
                () = &mut shutdown => break,
                Some(result) = rx.recv() => {
                    if checkers.is_current(&result) {
                        self.on_check(&result);
                    }
                }
                _ = hangup.recv() => debounce.trigger("SIGHUP"),
                _ = walk_tick.tick(), if !walking => walking = self.start_conns_walk(&walk_tx, &walk_stop),
                Some(walk) = walk_rx.recv() => {
                    walking = false;
                    self.on_conns_walk(walk);
                }
                Some(()) = file_rx.recv() => debounce.trigger("file changed"),
                () = time::sleep_until(due.unwrap_or_else(time::Instant::now)), if due.is_some() && !reading => {
                    reading = true;
                    crate::systemd::reloading();
                    read_config(self.options.config_path.clone(), debounce.take(), read_tx.clone());
                }
                Some((why, loaded)) = read_rx.recv() => {
                    reading = false;
                    self.reload(&why, loaded, &mut checkers, &tx).await;
                    crate::systemd::ready(&self.status_line());
                    let now = self.plane.balancer.next_hop_targets();
                    targets_tx.send_if_modified(|targets| {
                        let changed = *targets != now;
                        *targets = now;
                        changed
                    });
                }
            }
        }
        crate::systemd::stopping();
        // The withdraw goes first, while the health checks and the
        // next-hop cache still run; withdraw_delay counts from here.
        if !self.options.keep_attached {
            self.bgp.withdraw().await;
        }
        checkers.stop();
        // Closing the targets ends the next-hop task, which empties the
        // cache: no stale next hop outlives the agent that kept it.
        drop(targets_tx);
        if let Some(task) = next_hops
            && time::timeout(Duration::from_secs(2), task).await.is_err()
        {
            warn!(
                "the next-hop task did not end in 2 s; cached next hops may stay in the pinned map"
            );
        }
        Ok(())
    }

    /// Starts the task keeping `LB_NEXTHOPS` current from the kernel's
    /// routes and neighbours; `None` (with a warning) when netlink or the
    /// pinned map cannot be opened, and xdp_lb then looks next hops up per
    /// packet.
    fn start_next_hops(
        &self,
        targets: tokio::sync::watch::Receiver<Vec<NextHopTarget>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let started = NextHopWriter::from_pin(&self.plane.dir).and_then(|mut writer| {
            match resolve::connect() {
                Ok((handle, notifications)) => Ok((handle, notifications, writer)),
                Err(e) => {
                    // Entries a killed agent left would be used unwatched.
                    writer.clear();
                    Err(e)
                }
            }
        });
        match started {
            Ok((handle, notifications, writer)) => Some(tokio::spawn(nexthops::maintain(
                handle,
                notifications,
                writer,
                targets,
            ))),
            Err(e) => {
                warn!(
                    "next-hop cache off ({e:#}): xdp_lb looks next hops up per packet (bpf_fib_lookup)"
                );
                None
            }
        }
    }

    /// Applies one health-check result.
    fn on_check(&mut self, result: &CheckResult) {
        self.shared.record_check(result.backend_id, &result.probe);
        if let Err(failure) = &result.probe
            && failure.is_local()
        {
            let now = time::Instant::now();
            if self
                .last_local_error
                .is_none_or(|t| now.duration_since(t) >= LOCAL_ERROR_LOG_INTERVAL)
            {
                self.last_local_error = Some(now);
                warn!(
                    "a health check of backend id {} could not be made ({failure}); backends keep their state (counted in lb_health_check_errors_total, logged at most every {}s)",
                    result.backend_id,
                    LOCAL_ERROR_LOG_INTERVAL.as_secs()
                );
            }
        }
        // The checker owns the backend's health; the maps follow it. A
        // failed write leaves them apart until the next result retries.
        let healthy = result.healthy;
        let balancer = &mut self.plane.balancer;
        let Some((v, b)) = balancer.find_backend(result.backend_id) else {
            return;
        };
        let vip = &balancer.vips()[v];
        if vip.backends[b].healthy == healthy {
            return;
        }
        let (name, address) = (vip.config.name.clone(), vip.backends[b].address);
        let reason = match &result.probe {
            Ok(latency) => format!(
                "check succeeded in {}",
                humantime::format_duration(*latency)
            ),
            Err(failure) => failure.to_string(),
        };
        let retried = if result.change.is_none() {
            " (applied on a retry of the map write)"
        } else {
            ""
        };
        match balancer.set_health(v, b, healthy) {
            Ok(_) if healthy => {
                info!("backend {address} of VIP {name:?} is healthy: {reason}{retried}");
            }
            Ok(_) => warn!("backend {address} of VIP {name:?} is unhealthy: {reason}{retried}"),
            Err(e) => warn!(
                "applying health ({}) of backend {address} of VIP {name:?}: {e}; retried on its next check",
                if healthy { "healthy" } else { "unhealthy" }
            ),
        }
        self.shared.set_vips(self.plane.balancer.vips());
        self.announce();
    }

    /// Starts a walk of the connection table in a blocking thread when a
    /// VIP waits for one; whether it started.
    fn start_conns_walk(&mut self, done: &mpsc::Sender<ConnsWalk>, stop: &Arc<AtomicBool>) -> bool {
        let now = std::time::Instant::now();
        let waiting = self.plane.balancer.conns_waiting(now);
        if waiting.is_empty() || !self.walks.due(&waiting, now) {
            return false;
        }
        let Some(check) = self.plane.balancer.conns_check(now) else {
            return false;
        };
        self.walks.started(waiting, now);
        let (dir, done, stop) = (self.plane.dir.clone(), done.clone(), stop.clone());
        // A task that always reports, so a walk that failed in any way
        // never leaves the agent waiting for it.
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let verdict = tokio::task::spawn_blocking(move || {
                conns::walk_pinned(&dir, &check, &stop).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the walk's thread ended: {e}")));
            let _ = done.send((verdict, started.elapsed())).await;
        });
        true
    }

    /// Sets the flag of the VIPs a walk found in agreement.
    fn on_conns_walk(&mut self, (verdict, took): ConnsWalk) {
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(e) => {
                self.walks.finished(false);
                self.shared.record_walk(None, took);
                warn!("walking the connection table: {e}");
                return;
            }
        };
        let checked = self.plane.balancer.conns_checked(&verdict);
        let set = checked.as_ref().map_or(0, Vec::len);
        self.walks.finished(set > 0);
        self.shared
            .record_walk(Some((verdict.entries, verdict.complete, set)), took);
        match checked {
            Ok(set) if !set.is_empty() => {
                self.shared.set_vips(self.plane.balancer.vips());
                info!(
                    "recorded flows agree with the Maglev table again ({} connection-table entries read in {} ms): TCP SYNs take the table's choice without a connection-table lookup for VIP {}",
                    verdict.entries,
                    took.as_millis(),
                    set.join(", ")
                );
            }
            Ok(_) => debug!(
                "connection-table walk: {} entries in {} ms, {}",
                verdict.entries,
                took.as_millis(),
                if verdict.complete {
                    "no VIP in agreement yet"
                } else {
                    "stopped early"
                }
            ),
            Err(e) => warn!("setting the SYN flag of VIPs after a connection-table walk: {e}"),
        }
    }

    /// Tells the BGP speaker what to announce now.
    fn announce(&self) {
        match crate::bgp::wanted(&self.config, self.source.v4, self.plane.balancer.vips()) {
            Ok(wanted) => self.bgp.set(wanted),
            Err(e) => warn!("BGP: {e}"),
        }
    }

    /// The unit's status line for systemd: VIPs and interface.
    fn status_line(&self) -> String {
        format!(
            "forwarding for {} VIPs on {}",
            self.plane.balancer.vips().len(),
            self.iface
        )
    }

    /// Applies a configuration read for a reload, as a difference; a
    /// configuration with any error is rejected whole and nothing changes.
    async fn reload(
        &mut self,
        why: &str,
        loaded: Result<Loaded, String>,
        checkers: &mut Checkers,
        events: &mpsc::Sender<CheckResult>,
    ) {
        let path = self.options.config_path.clone();
        let (vips_before, backends_before) = (
            self.plane.balancer.vips().len(),
            self.plane
                .balancer
                .vips()
                .iter()
                .map(|v| v.backends.len())
                .sum::<usize>(),
        );
        let result = match loaded {
            Ok(loaded) => self.try_reload(&path, loaded).await,
            Err(e) => Err(e),
        };
        match result {
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
                self.announce();
                let (started, stopped) = checkers.sync(self.health_targets(), events);
                info!(
                    "configuration reloaded ({why}) from {}: {changes}; health checkers +{started} -{stopped}",
                    path.display()
                );
                if changes.vips_removed * 2 > vips_before
                    || changes.backends_removed * 2 > backends_before
                {
                    warn!(
                        "this reload removed more than half of the data plane: {} of {vips_before} VIPs and {} of {backends_before} backends",
                        changes.vips_removed, changes.backends_removed
                    );
                }
            }
            Err(e) => {
                self.shared.record_reload(Err(e.clone()));
                // A map write that failed part way leaves what was written:
                // the API shows the balancer's state as it is.
                self.shared.set_vips(self.plane.balancer.vips());
                error!("configuration rejected ({why}), the running one stays in force: {e}");
            }
        }
    }

    async fn try_reload(&mut self, path: &Path, loaded: Loaded) -> Result<Option<Changes>, String> {
        for warning in &loaded.warnings {
            warn!("{}: warning: {warning}", path.display());
        }
        let new = loaded.config;
        if new == self.config {
            return Ok(None);
        }
        let running = self.plane.balancer.vips().len();
        if new.vips.is_empty() && !new.allow_empty && running > 0 {
            return Err(AgentError::EmptyConfig { running }.to_string());
        }
        if let Some(change) = reload::immutable_change(
            &self.config,
            &new,
            &self.iface,
            self.options.iface.is_some(),
        ) {
            return Err(change);
        }
        let source = encap_source(&new, &self.iface).map_err(|e| e.to_string())?;
        // Checked before anything changes: BIRD refusing it rejects the
        // whole configuration.
        crate::bgp::check(&new, source.v4, &self.iface).await?;
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
