//! `lb decap`: attach `xdp_decap` on a backend host for the VIPs it serves,
//! until SIGINT or SIGTERM.

use std::{future::Future, net::IpAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, MapData},
};
use ipnet::IpNet;
use lb_common::{
    AddrKey, MAP_DECAP_CONFIG, MAP_DECAP_LOCAL, MAP_DECAP_SOURCES4, MAP_DECAP_SOURCES6,
    MAP_DECAP_VIPS, MAX_DECAP_SOURCES,
};
use log::{info, warn};

use crate::{
    agent::AgentError,
    balancer::MapStoreError,
    balancer::addr_key,
    config::XdpModeConfig,
    dataplane::{
        maps,
        object::{attach, object, xdp_mode},
    },
    netif,
};

fn addr_map(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, AddrKey, u32>, AgentError> {
    Ok(maps::take(ebpf, name)?)
}

/// Runs `lb decap --iface IFACE --vip ADDR... [--xdp-mode MODE]`.
pub fn command(
    iface: &str,
    vips: &[IpAddr],
    lbs: &[IpNet],
    gue_port: u16,
    mode: XdpModeConfig,
) -> ExitCode {
    super::report(super::block_on(|| async {
        let shutdown = super::shutdown_signal();
        run(iface, vips, lbs, gue_port, mode, shutdown)
            .await
            .context("lb decap")
    }))
}

/// Refuses an address that cannot be a VIP (unspecified, broadcast,
/// multicast, loopback) and one given twice.
///
/// # Errors
/// [`AgentError::BadVip`] naming the address and the reason.
pub fn check_vips(vips: &[IpAddr]) -> Result<(), AgentError> {
    for (i, vip) in vips.iter().enumerate() {
        let broadcast = matches!(vip, IpAddr::V4(a) if a.is_broadcast());
        if vip.is_unspecified() || broadcast || vip.is_multicast() || vip.is_loopback() {
            return Err(AgentError::BadVip(format!("{vip} cannot be a VIP")));
        }
        if vips[..i].contains(vip) {
            return Err(AgentError::BadVip(format!("{vip} is given twice")));
        }
    }
    Ok(())
}

/// Attaches the decapsulation program to `iface` for `vips` until `shutdown`
/// completes. Outer destinations accepted are every IPv4 address of the host
/// at start. With no VIP it decapsulates nothing and passes every packet:
/// attached to the peer of a veth whose other end runs `xdp_lb` in native
/// mode, that is what lets XDP_TX frames in.
///
/// # Errors
/// The interface is unknown, or loading, filling or attaching fails.
pub async fn run(
    iface: &str,
    vips: &[IpAddr],
    lbs: &[IpNet],
    gue_port: u16,
    mode: XdpModeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    netif::ifindex(iface).ok_or_else(|| AgentError::UnknownInterface(iface.to_string()))?;
    check_vips(vips)?;
    let mut ebpf = EbpfLoader::new().load(object())?;
    let mut vip_map = addr_map(&mut ebpf, MAP_DECAP_VIPS)?;
    let mut local_map = addr_map(&mut ebpf, MAP_DECAP_LOCAL)?;
    let mut locals = local_addresses(vips)?;
    let mut config: Array<MapData, u32> = maps::take(&mut ebpf, MAP_DECAP_CONFIG)?;
    config
        .set(0, u32::from(gue_port), 0)
        .map_err(|source| MapStoreError {
            map: MAP_DECAP_CONFIG,
            op: "set",
            source,
        })?;
    for vip in vips {
        vip_map
            .insert(addr_key(*vip), 1, 0)
            .map_err(|source| MapStoreError {
                map: MAP_DECAP_VIPS,
                op: "insert",
                source,
            })?;
    }
    follow_locals(&mut local_map, &[], &locals);
    let lbs = if lbs.is_empty() {
        default_sources()
    } else {
        lbs.to_vec()
    };
    allow_tunnels_from(&mut ebpf, &lbs)?;
    let link = attach(&mut ebpf, "xdp_decap", iface, xdp_mode(mode))?;
    info!(
        "xdp_decap attached to {iface} ({mode:?} mode) for VIPs {vips:?}; outer destinations {locals:?}; tunnels taken from {lbs:?}"
    );
    // The host's addresses change (DHCP, an address added for a new
    // service): the outer destinations follow them.
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(LOCALS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                match local_addresses(vips) {
                    Ok(now) if now != locals => {
                        follow_locals(&mut local_map, &locals, &now);
                        info!("outer destinations now {now:?} (this host's addresses changed)");
                        locals = now;
                    }
                    Ok(_) => {}
                    Err(e) => warn!("listing this host's addresses: {e}; outer destinations kept"),
                }
            }
        }
    }
    drop(link);
    drop(ebpf);
    info!("detached from {iface}");
    Ok(())
}

/// How often `lb decap` reads this host's addresses again.
pub const LOCALS_EVERY: Duration = Duration::from_secs(2);

/// This host's addresses, both families, but the VIPs (on its loopback:
/// not outer destinations): the outer destinations `xdp_decap` accepts.
///
/// # Errors
/// The addresses cannot be listed.
fn local_addresses(vips: &[IpAddr]) -> Result<Vec<IpAddr>, AgentError> {
    let list = |source| AgentError::Io {
        op: "list addresses",
        path: "of this host".into(),
        source,
    };
    let mut locals: Vec<IpAddr> = netif::ipv4_addresses(None)
        .map_err(list)?
        .into_iter()
        .map(IpAddr::from)
        .collect();
    locals.extend(
        netif::ipv6_addresses(None)
            .map_err(list)?
            .into_iter()
            .map(IpAddr::from),
    );
    locals.retain(|a| !vips.contains(a));
    Ok(locals)
}

/// Brings `DECAP_LOCAL` from `old` to `new`: new addresses inserted (past
/// `MAX_LOCAL_ADDRS`, refused by the map: logged), gone ones removed.
fn follow_locals(map: &mut HashMap<MapData, AddrKey, u32>, old: &[IpAddr], new: &[IpAddr]) {
    for gone in old.iter().filter(|a| !new.contains(a)) {
        if let Err(e) = map.remove(&addr_key(*gone)) {
            warn!("removing outer destination {gone}: {e}");
        }
    }
    for added in new.iter().filter(|a| !old.contains(a)) {
        if let Err(e) = map.insert(addr_key(*added), 1, 0) {
            warn!(
                "outer destination {added} not taken ({e}): at most {} addresses",
                lb_common::MAX_LOCAL_ADDRS
            );
        }
    }
}

/// The outer sources `xdp_decap` takes tunnels from when `--lb` gives
/// none: the private ranges, as `source_filter.allow` defaults to
/// (`crate::config::DEFAULT_ALLOW`).
pub fn default_sources() -> Vec<IpNet> {
    crate::config::DEFAULT_ALLOW
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Fills `DECAP_SOURCES4` and `DECAP_SOURCES6` of `ebpf` (an object not
/// attached yet) with `prefixes`. The maps are borrowed, not taken: the
/// programs not loaded yet refer to them.
///
/// # Errors
/// More than `MAX_DECAP_SOURCES` prefixes of a family, or a map is
/// missing or refuses an insert.
pub fn allow_tunnels_from(ebpf: &mut aya::Ebpf, prefixes: &[IpNet]) -> Result<(), AgentError> {
    let count = |v4: bool| {
        prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)) == v4)
            .count()
    };
    if count(true).max(count(false)) > MAX_DECAP_SOURCES as usize {
        return Err(AgentError::BadLb(format!(
            "at most {MAX_DECAP_SOURCES} prefixes of each family"
        )));
    }
    let (mut v4, mut v6) = (None, None);
    for (name, map) in ebpf.maps_mut() {
        match name {
            MAP_DECAP_SOURCES4 => v4 = Some(map),
            MAP_DECAP_SOURCES6 => v6 = Some(map),
            _ => {}
        }
    }
    let mut v4 = trie::<[u8; 4]>(v4, MAP_DECAP_SOURCES4)?;
    let mut v6 = trie::<[u8; 16]>(v6, MAP_DECAP_SOURCES6)?;
    for net in prefixes {
        maps::insert_prefix(
            &mut v4,
            &mut v6,
            net.trunc(),
            [MAP_DECAP_SOURCES4, MAP_DECAP_SOURCES6],
        )?;
    }
    Ok(())
}

/// `map` (named `name`, found in the object) as an LPM trie keyed by `K`.
fn trie<'a, K: aya::Pod>(
    map: Option<&'a mut aya::maps::Map>,
    name: &'static str,
) -> Result<aya::maps::LpmTrie<&'a mut aya::maps::MapData, K, u32>, MapStoreError> {
    let map = map.ok_or(MapStoreError {
        map: name,
        op: "find",
        source: aya::maps::MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    aya::maps::LpmTrie::try_from(map).map_err(|source| MapStoreError {
        map: name,
        op: "open",
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn decap_refuses_unspecified_and_duplicate_vips() {
        let vip = IpAddr::from(Ipv4Addr::new(10, 0, 0, 100));
        assert!(check_vips(&[vip, IpAddr::from(Ipv4Addr::new(10, 0, 0, 101))]).is_ok());
        assert!(check_vips(&["fd00::100".parse().unwrap()]).is_ok());
        assert_eq!(
            check_vips(&[IpAddr::from(Ipv4Addr::UNSPECIFIED)])
                .unwrap_err()
                .to_string(),
            "--vip 0.0.0.0 cannot be a VIP"
        );
        assert_eq!(
            check_vips(&[vip, vip]).unwrap_err().to_string(),
            "--vip 10.0.0.100 is given twice"
        );
    }
}
