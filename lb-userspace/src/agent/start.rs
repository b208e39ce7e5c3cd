//! Starting the data plane: a fresh one (load, fill, attach, pin), or the
//! one an earlier agent left pinned (adopt, and upgrade its program); the
//! outer source addresses of encapsulation.

use super::*;

/// The data plane the agent drives: its maps, counters and XDP link.
pub(super) struct DataPlane {
    pub(super) balancer: Balancer<AyaMaps>,
    pub(super) stats: StatsReader,
    pub(super) link: PinnedLink,
    pub(super) dir: PathBuf,
    /// The program the link runs.
    pub(super) program: upgrade::ProgramId,
}

/// Loads, fills, attaches and pins a new data plane.
pub(super) fn start_fresh(
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
    load_tail_programs(&mut ebpf)?;
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
pub(super) fn adopt(
    config: &Config,
    encap_source: Sources,
    dir: &Path,
) -> Result<DataPlane, AgentError> {
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
pub(super) fn encap_source(config: &Config, iface: &str) -> Result<Sources, AgentError> {
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
    let nat = nat_sources(config, iface)?;
    Ok(Sources { v4, v6, nat })
}

/// The SNAT addresses and ports of `config`'s `mode = "nat"` VIPs on
/// `iface`: `nat.source_v4`/`source_v6`, else the interface's first
/// address of the family (required only when a `nat` VIP of that family
/// exists); the ports `nat.ports`, else those outside the host's
/// `ip_local_port_range` (`config::nat::snat_ports`).
fn nat_sources(config: &Config, iface: &str) -> Result<lb_common::NatSources, AgentError> {
    use crate::config::{
        VipMode,
        nat::{local_port_range, snat_ports},
    };
    let nat_vips = || config.vips.iter().filter(|v| v.mode == VipMode::Nat);
    let mut out = lb_common::NatSources::default();
    if nat_vips().next().is_none() {
        return Ok(out);
    }
    let v4: Vec<Ipv4Addr> = if config.nat.source_v4.is_empty() {
        netif::ipv4_addresses(Some(iface))
            .map_err(io_err("list addresses of", iface.to_string()))?
            .into_iter()
            .take(1)
            .collect()
    } else {
        config.nat.source_v4.clone()
    };
    let v6: Vec<Ipv6Addr> = if config.nat.source_v6.is_empty() {
        netif::ipv6_addresses(Some(iface))
            .map_err(io_err("list addresses of", iface.to_string()))?
            .into_iter()
            .take(1)
            .collect()
    } else {
        config.nat.source_v6.clone()
    };
    if v4.is_empty() && nat_vips().any(|v| v.address.is_ipv4()) {
        return Err(AgentError::Nat(format!(
            "interface {iface} has no IPv4 address for SNAT: set nat.source_v4"
        )));
    }
    if v6.is_empty() && nat_vips().any(|v| v.address.is_ipv6()) {
        return Err(AgentError::Nat(format!(
            "interface {iface} has no global IPv6 address for SNAT: set nat.source_v6"
        )));
    }
    for (slot, a) in out.v4.iter_mut().zip(&v4) {
        *slot = a.octets();
    }
    for (slot, a) in out.v6.iter_mut().zip(&v6) {
        *slot = a.octets();
    }
    out.v4_count = v4.len().min(lb_common::MAX_NAT_SOURCES) as u32;
    out.v6_count = v6.len().min(lb_common::MAX_NAT_SOURCES) as u32;
    let ports = snat_ports(
        config.nat.ports,
        local_port_range().map_err(AgentError::Nat)?,
    )
    .map_err(AgentError::Nat)?;
    out.port_first = u32::from(ports.first);
    out.port_count = ports.len();
    Ok(out)
}
