//! `lb run`: load and attach `xdp_lb` (or adopt the one pinned), fill its
//! maps, health-check every backend and feed the results back, reload as a
//! difference, announce over BGP, until shut down ([`run`]).
//!
//! Its files: [`start`] (a fresh or an adopted data plane), [`serve`] (the
//! event loop), [`health`], [`reload`], [`walks`], [`watch`] (the
//! configuration file).
//!
//! The agent's tasks, what they say to the event loop, and who writes what:
//!
//! | task | work | to / from the loop | writes |
//! |---|---|---|---|
//! | event loop ([`serve`], one task) | applies every event below | - | the maps, through `Balancer`; `Shared` (VIPs, checks, reloads, walks) |
//! | health checkers (`health::Checkers`, a task per backend) | probe backends by rise and fall | `mpsc<CheckResult>` (1024) to the loop | nothing |
//! | file watcher ([`watch`], notify's thread) | changes of the configuration file | `mpsc<()>` (16) to the loop | nothing |
//! | configuration reader ([`reload::read_config`], a blocking thread) | reads and validates the file, within 5 s | `mpsc<ReadConfig>` (1) to the loop | nothing |
//! | connection-table walk ([`walks`], a blocking thread) | reads `LB_CONNS` | `mpsc<ConnsWalk>` (1) to the loop; stops when `walk_stop` is set | nothing |
//! | next hops (`dataplane::nexthops::maintain`) | resolves next hops over netlink | `watch<Vec<NextHopTarget>>` from the loop | `LB_NEXTHOPS` |
//! | BGP speaker (`bgp::Speaker`) | drives BIRD | `watch<Wanted>` and commands from the loop | `watch<Option<BgpStatus>>`, which `Shared` reads |
//! | API server (`api::serve`, a task per client) | `/metrics`, `/status` | - | nothing: reads `Shared` and the counters |

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use lb_common::{LAYOUT_FINGERPRINT, Outcome};
use log::{debug, info, warn};
use tokio::{sync::mpsc, time};

mod health;
pub mod reload;
mod serve;
mod start;
pub mod sysctl;
mod walks;
pub mod watch;

use crate::{
    api::{self, Shared},
    balancer::{
        Balancer, BalancerError, ConnsVerdict, MapStore as _, MapStoreError, Sources,
        WALK_MIN_INTERVAL, WalkSchedule,
    },
    config::Config,
    dataplane::{
        conns,
        error::DataplaneError,
        maps::{self, AyaMaps},
        nexthops::{self, NextHopTarget, NextHopWriter},
        object::{attach, load_object, load_tail_programs, xdp_mode},
        pins::{ADOPTED_MAPS, BPFFS, InstanceLock, LINK_PIN, pin_dir, pin_maps, unpin},
        resolve,
        stats::StatsReader,
        upgrade,
    },
    health::{CheckResult, Checkers, Target},
    netif,
};
use reload::{Debounce, ReadConfig, read_config};
use start::{DataPlane, adopt, encap_source, start_fresh};
use walks::{ConnsWalk, StopOnDrop};
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
    /// The SNAT addresses or ports of the NAT modes cannot be chosen.
    #[error("NAT: {0}")]
    Nat(String),
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
    /// `lb decap` was given more load-balancer prefixes than it holds.
    #[error("--lb: {0}")]
    BadLb(String),
    /// `[bgp]` cannot be announced.
    #[error(transparent)]
    Bgp(#[from] crate::bgp::BgpError),
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
    ipv6_forwarding_if_needed(&config, &iface);
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
    shared.set_snat_capacity(&source.nat);
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
        sysctl::restore(&iface);
        info!("detached from {iface}");
    }
    result
}

/// Turns IPv6 forwarding on for `iface` when `config` has an IPv6 VIP or
/// backend (IPv6 next-hop lookups need it), keeping Router Advertisements;
/// leaves the host's IPv6 alone otherwise ([`sysctl`]). Logs what changed.
fn ipv6_forwarding_if_needed(config: &Config, iface: &str) {
    if !config.uses_ipv6() {
        return;
    }
    match sysctl::enable_ipv6_forwarding(iface) {
        Ok(changes) if changes.is_empty() => {}
        Ok(changes) => info!(
            "IPv6 next-hop lookups need forwarding on {iface}: net.ipv6.conf.{iface}: {} (restored when the data plane is detached)",
            changes.join(", ")
        ),
        Err(e) => {
            warn!("cannot enable IPv6 forwarding on {iface} ({e}): IPv6 VIPs will not be forwarded")
        }
    }
}

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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Agent {
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
