//! `lb run`: load and attach `xdp_lb`, fill its maps, pin them, health-check
//! every backend and feed the results back, until shut down.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};
use lb_common::{MAP_CONNS, MAP_MAGLEV, Outcome};
use log::{info, warn};
use tokio::sync::mpsc;

use crate::{
    balancer::{self, Balancer, BalancerError},
    config::{Config, XdpModeConfig},
    health::{self, Target},
    maps::{AyaMaps, MapWriteError, StatsReader},
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

/// Loads and attaches program `name` of `ebpf` to `iface`.
///
/// # Errors
/// [`AgentError::Program`] when the verifier or the attach refuses it.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<(), AgentError> {
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
    program
        .attach(iface, mode)
        .map_err(|source| AgentError::Program {
            op: "attach",
            program: name,
            source,
        })?;
    Ok(())
}

/// Pins every map of `ebpf` under `dir` (created; stale pins of an agent that
/// did not stop cleanly are replaced).
fn pin_maps(ebpf: &Ebpf, dir: &Path) -> Result<(), AgentError> {
    netif::ensure_bpffs(Path::new(BPFFS)).map_err(io_err("mount bpffs on", BPFFS))?;
    if dir.exists() {
        warn!(
            "replacing stale pins in {} (an agent did not stop cleanly)",
            dir.display()
        );
        std::fs::remove_dir_all(dir).map_err(io_err("remove", dir.display().to_string()))?;
    }
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

/// Runs the agent for `config` on `iface` until `shutdown` completes, then
/// detaches the program and removes the pins.
///
/// # Errors
/// Anything that keeps the data plane from starting; once running, errors
/// applying health results are logged and the agent goes on.
pub async fn run(
    config: Config,
    iface: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let iface = iface
        .or_else(|| config.interface.clone())
        .ok_or(AgentError::NoInterface)?;
    netif::ifindex(&iface).ok_or_else(|| AgentError::UnknownInterface(iface.clone()))?;
    let encap_source = match config.encap_source_v4 {
        Some(a) => a,
        None => *netif::ipv4_addresses(Some(&iface))
            .map_err(io_err("list addresses of", iface.clone()))?
            .first()
            .ok_or_else(|| AgentError::NoSourceAddress(iface.clone()))?,
    };
    if netif::enable_ipv4_forwarding(&iface)
        .map_err(io_err("enable forwarding on", iface.clone()))?
    {
        info!("enabled IPv4 forwarding on {iface}: next-hop lookups (bpf_fib_lookup) need it");
    }

    let regions = balancer::table_regions(config.vips.len());
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_MAGLEV, regions * config.table_size)
        .map_max_entries(MAP_CONNS, config.conntrack_entries)
        .load(object())?;
    let pin_dir = PathBuf::from(PIN_ROOT).join(&iface);
    pin_maps(&ebpf, &pin_dir)?;
    let result = serve(&mut ebpf, &config, &iface, encap_source, regions, shutdown).await;
    drop(ebpf);
    unpin(&pin_dir);
    info!("detached from {iface}");
    result
}

async fn serve(
    ebpf: &mut Ebpf,
    config: &Config,
    iface: &str,
    encap_source: Ipv4Addr,
    regions: u32,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let stats = StatsReader::take(ebpf)?;
    let mut balancer = Balancer::new(AyaMaps::take(ebpf)?, config, encap_source, regions)?;
    attach(ebpf, "xdp_lb", iface, xdp_mode(config.xdp_mode))?;
    info!(
        "xdp_lb attached to {iface} ({:?} mode): {} VIPs, {} backends, Maglev table size {}, outer source {encap_source}",
        config.xdp_mode,
        config.vips.len(),
        config.backend_count(),
        config.table_size
    );

    let (tx, mut rx) = mpsc::channel(1024);
    let checkers = health::spawn(health_targets(config), &tx);
    drop(tx);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(io_err("install handler for", "SIGHUP"))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(event) = rx.recv() => {
                let vip = &balancer.vips()[event.vip];
                let (name, address) = (vip.config.name.clone(), vip.backends[event.backend].address);
                match balancer.set_health(event.vip, event.backend, event.healthy) {
                    Ok(_) if event.healthy => info!("backend {address} of VIP {name:?} is healthy: {}", event.reason),
                    Ok(_) => warn!("backend {address} of VIP {name:?} is unhealthy: {}", event.reason),
                    Err(e) => warn!("applying health of backend {address} of VIP {name:?}: {e}"),
                }
            }
            _ = hangup.recv() => warn!("SIGHUP: live reload is not supported yet; the running configuration stays"),
        }
    }
    for checker in checkers {
        checker.abort();
    }
    log_counters(&stats, &balancer);
    Ok(())
}

fn health_targets(config: &Config) -> Vec<Target> {
    let mut targets = Vec::new();
    for (v, vip) in config.vips.iter().enumerate() {
        for (b, backend) in vip.backends.iter().enumerate() {
            targets.push(Target {
                vip: v,
                backend: b,
                addr: SocketAddr::new(backend.address, vip.health_check.port),
                check: vip.health_check.clone(),
            });
        }
    }
    targets
}

/// Logs every non-zero counter: outcomes, then per VIP and per backend.
fn log_counters<M: crate::maps::MapWriter>(stats: &StatsReader, balancer: &Balancer<M>) {
    let outcomes: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|&o| {
            let c = stats.outcome(o);
            (c.packets > 0).then(|| format!("{}={}", o.name(), c.packets))
        })
        .collect();
    info!(
        "counters (packets): {}",
        if outcomes.is_empty() {
            "none".to_string()
        } else {
            outcomes.join(" ")
        }
    );
    for vip in balancer.vips() {
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
