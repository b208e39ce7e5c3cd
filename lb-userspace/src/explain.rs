//! `lb explain`: which backend a flow goes to, and why: the VIP it matches,
//! its flow hash, its Maglev slot and the backend there; and, when an agent
//! runs a data plane for the interface, what the live Maglev table and the
//! connection table say (a connection-table entry for a usable backend
//! overrides the Maglev choice).

use std::{fmt::Write as _, net::SocketAddr, path::Path};

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    BACKEND_F_ACTIVE, Backend, ConnValue, FAMILY_V4, FAMILY_V6, FlowKey, MAP_BACKENDS, MAP_CONNS,
    MAP_MAGLEV, MAP_VIPS, VipKey, VipValue, flow_hash, maglev_slot,
    rules::{
        FilterVerdict, backend_usable, filter_verdict, maglev_member, match_vip, vip_source_allowed,
    },
};

use crate::{
    balancer::MapStoreError,
    balancer::{addr_key, backend_address, backend_name, vip_key},
    config::{Config, FilterScope, Protocol, Vip},
    dataplane::maps::open_pin,
    maglev::{self, MaglevBackend},
};

/// Why a flow cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// A flow's two ends are of different families.
    #[error("{0} -> {1}: a flow's addresses are of one family")]
    MixedFamilies(SocketAddr, SocketAddr),
    /// Reading the running data plane failed.
    #[error(transparent)]
    Map(#[from] MapStoreError),
}

/// The VIP of `config` a packet to `dst` with `protocol` matches: exact port
/// first, then a port-0 (every port) VIP ([`lb_common::rules::match_vip`],
/// the data plane's rule).
pub fn find_vip(config: &Config, dst: SocketAddr, protocol: Protocol) -> Option<&Vip> {
    match_vip(dst.port().to_be_bytes(), |port| {
        let port = u16::from_be_bytes(port);
        config
            .vips
            .iter()
            .find(|v| v.address == dst.ip() && v.protocol == protocol && v.port == port)
    })
}

/// What the data plane does first with a packet from `src` to `dst`, by the
/// rules `xdp_lb` applies ([`lb_common::rules`]): the source filter with its
/// scope, then the VIP match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict<'a> {
    /// Dropped by the source filter.
    DropSourceFilter,
    /// Passed to the kernel: not a VIP address, or no VIP of that port and
    /// protocol.
    Pass,
    /// Dropped: the source is not in this VIP's own `allow` list.
    DropVipSourceFilter(&'a Vip),
    /// Dropped: to a VIP address, but no VIP of that port and protocol
    /// (`drop_no_vip`: the node would route it back out, into a loop).
    DropNoVip,
    /// Balanced by this VIP.
    Vip(&'a Vip),
}

/// A VIP's own `allow` list as text.
fn own_list(vip: &Vip) -> String {
    vip.allow
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The [`Verdict`] for a packet from `src` to `dst` over `protocol`.
pub fn verdict(
    config: &Config,
    protocol: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
) -> Verdict<'_> {
    let to_vip_address = config.vips.iter().any(|v| v.address == dst.ip());
    let allowed = || config.allow.iter().any(|net| net.contains(&src.ip()));
    match filter_verdict(config.scope == FilterScope::All, to_vip_address, allowed) {
        FilterVerdict::Drop => Verdict::DropSourceFilter,
        FilterVerdict::Pass => Verdict::Pass,
        FilterVerdict::ToVipAddress => match find_vip(config, dst, protocol) {
            None => Verdict::DropNoVip,
            Some(vip) => {
                let in_own = || {
                    vip.allow
                        .iter()
                        .flatten()
                        .any(|net| net.contains(&src.ip()))
                };
                if vip_source_allowed(vip.allow.is_some(), in_own) {
                    Verdict::Vip(vip)
                } else {
                    Verdict::DropVipSourceFilter(vip)
                }
            }
        },
    }
}

/// The flow's family and addresses as map keys hold them; both ends must
/// be of one family.
fn key_addresses(
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(u8, [u8; 16], [u8; 16]), ExplainError> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(ExplainError::MixedFamilies(src, dst));
    }
    let family = if src.is_ipv6() { FAMILY_V6 } else { FAMILY_V4 };
    Ok((family, addr_key(src.ip()).addr, addr_key(dst.ip()).addr))
}

/// Explains flow `src` -> `dst` over `protocol` against `config` and, when
/// `pins` names the pin directory of a running data plane, against it.
/// Returns the text to print.
///
/// # Errors
/// Addresses of two families, or pinned maps that cannot be read.
pub fn explain(
    config: &Config,
    protocol: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
    pins: Option<&Path>,
) -> Result<String, ExplainError> {
    let (family, s, d) = key_addresses(src, dst)?;
    let mut out = String::new();
    let proto = protocol.number();
    let _ = writeln!(out, "flow {protocol} {src} -> {dst}");
    let vip = match verdict(config, protocol, src, dst) {
        Verdict::DropSourceFilter => {
            let _ = writeln!(
                out,
                "source {} is outside every allowed prefix: dropped by the source filter (scope {:?})",
                src.ip(),
                config.scope
            );
            return Ok(out);
        }
        Verdict::Pass => {
            let _ = writeln!(
                out,
                "{} is no VIP address: passed to the kernel untouched",
                dst.ip()
            );
            return Ok(out);
        }
        Verdict::DropNoVip => {
            let _ = writeln!(
                out,
                "{} is a VIP address, but no VIP serves {protocol} port {}: dropped (drop_no_vip), as the node would route it back out",
                dst.ip(),
                dst.port()
            );
            return Ok(out);
        }
        Verdict::DropVipSourceFilter(vip) => {
            let _ = writeln!(
                out,
                "VIP {:?}: source {} is outside its own allow list ({}): dropped and counted for the VIP",
                vip.name,
                src.ip(),
                own_list(vip)
            );
            return Ok(out);
        }
        Verdict::Vip(vip) => vip,
    };
    if vip.allow.is_some() {
        let _ = writeln!(out, "VIP {:?} allows {}", vip.name, own_list(vip));
    }
    let sport = src.port().to_be_bytes();
    let dport = dst.port().to_be_bytes();
    let hash = flow_hash(family, &s, &d, sport, dport, proto);
    let m = config.table_size;
    let slot = maglev_slot(hash, m);
    let _ = writeln!(
        out,
        "VIP {:?} ({} {}), {} backends",
        vip.name,
        std::net::SocketAddr::new(vip.address, vip.port),
        vip.protocol,
        vip.backends.len()
    );
    let _ = writeln!(out, "flow hash {hash:#010x}; Maglev slot {slot} of {m}");
    let chosen = configured_choice(&mut out, vip, hash, m);
    if let Some(backend) = chosen {
        translation(&mut out, config, vip, backend, src, hash);
    }
    let Some(pins) = pins else {
        let _ = writeln!(
            out,
            "no running data plane found: connection table not consulted"
        );
        return Ok(out);
    };
    let flow = FlowKey::new(family, s, d, sport, dport, proto);
    running_choice(&mut out, pins, vip, &flow, hash)?;
    Ok(out)
}

/// The backend the configuration gives flow hash `hash` of `vip` with
/// every backend healthy (a Maglev table of `m` slots), written to `out`;
/// returned too.
fn configured_choice<'a>(
    out: &mut String,
    vip: &'a Vip,
    hash: u32,
    m: u32,
) -> Option<&'a crate::config::BackendConfig> {
    let slot = maglev_slot(hash, m);
    let names: Vec<Vec<u8>> = vip
        .backends
        .iter()
        .map(|b| backend_name(b.address))
        .collect();
    // The Maglev input list with every backend healthy.
    let members: Vec<MaglevBackend<'_>> = vip
        .backends
        .iter()
        .zip(&names)
        .enumerate()
        .filter(|(_, (b, _))| maglev_member(true, b.weight))
        .map(|(i, (b, name))| MaglevBackend {
            id: i as u32,
            name,
            weight: b.weight,
        })
        .collect();
    let table = maglev::build(&members, m);
    match table.get(slot as usize) {
        Some(&i) => {
            let _ = writeln!(
                out,
                "backend by the configuration (every backend healthy): {}",
                vip.backends[i as usize].address
            );
            Some(&vip.backends[i as usize])
        }
        None => {
            let _ = writeln!(
                out,
                "no backend with a weight above 0: on_no_backend applies"
            );
            None
        }
    }
}

/// What the packets of the flow from `client` (hash `hash`) to `vip`
/// become toward `backend`, by the VIP's mode: encapsulated (DSR), or
/// translated, with the SNAT address and first SNAT port `xdp_nat_v4`/`_v6`
/// try for it (`lb_common::snat_source`, `lb_common::snat_port`; a port
/// taken toward that backend makes it try the next of
/// `lb_common::SNAT_PORT_TRIES`).
fn translation(
    out: &mut String,
    config: &Config,
    vip: &Vip,
    backend: &crate::config::BackendConfig,
    client: SocketAddr,
    hash: u32,
) {
    use crate::config::VipMode;
    let to = SocketAddr::new(backend.address, backend.port);
    let vip_addr = SocketAddr::new(vip.address, vip.port);
    match vip.mode {
        VipMode::Dsr => {
            let _ = writeln!(
                out,
                "mode dsr: encapsulated toward {}, the client's packet inside; the backend answers the client from {vip_addr}",
                backend.address
            );
        }
        VipMode::Dnat => {
            let _ = writeln!(
                out,
                "mode dnat: {client} -> {to} (the client's address kept); the backend's replies {to} -> {client}, routed through the load balancer, become {vip_addr} -> {client}"
            );
        }
        VipMode::Nat => {
            let sources: Vec<std::net::IpAddr> = if vip.address.is_ipv4() {
                config.nat.source_v4.iter().map(|&a| a.into()).collect()
            } else {
                config.nat.source_v6.iter().map(|&a| a.into()).collect()
            };
            let source = if sources.is_empty() {
                "the interface's first address".to_string()
            } else {
                let i = lb_common::snat_source(hash, sources.len() as u32);
                sources[i].to_string()
            };
            let ports = crate::config::nat::local_port_range()
                .and_then(|local| crate::config::nat::snat_ports(config.nat.ports, local));
            match ports {
                Ok(ports) => {
                    let port = lb_common::snat_port(u32::from(ports.first), ports.len(), hash, 0);
                    let _ = writeln!(
                        out,
                        "mode nat: {client} -> {vip_addr} becomes {source} port {port} -> {to} (SNAT ports {ports}; {port} is the first of {} tries); the backend's replies to it become {vip_addr} -> {client}",
                        lb_common::SNAT_PORT_TRIES
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "mode nat: {client} -> {vip_addr} becomes {source} -> {to}; SNAT ports unknown here: {e}"
                    );
                }
            }
        }
    }
}

/// What the running data plane pinned in `pins` does with `flow` of `vip`
/// (hash `hash`): its Maglev table with live health, and the connection
/// table's entry, written to `out`.
///
/// # Errors
/// A pinned map cannot be opened.
fn running_choice(
    out: &mut String,
    pins: &Path,
    vip: &Vip,
    flow: &FlowKey,
    hash: u32,
) -> Result<(), ExplainError> {
    let vips: HashMap<MapData, VipKey, VipValue> = open_pin(pins, MAP_VIPS)?;
    let backends: Array<MapData, Backend> = open_pin(pins, MAP_BACKENDS)?;
    let maglev: Array<MapData, u32> = open_pin(pins, MAP_MAGLEV)?;
    let conns: HashMap<MapData, FlowKey, ConnValue> = open_pin(pins, MAP_CONNS)?;
    let _ = writeln!(out, "running data plane ({}):", pins.display());
    let key = vip_key(vip);
    let Ok(value) = vips.get(&key, 0) else {
        let _ = writeln!(
            out,
            "  the VIP is not in the running data plane (reload pending?)"
        );
        return Ok(());
    };
    let describe = |id: u32| -> String {
        match backends.get(&id, 0) {
            Ok(b) => {
                let state = if backend_usable(b.flags) {
                    "healthy"
                } else if b.flags & BACKEND_F_ACTIVE != 0 {
                    "unhealthy"
                } else {
                    "removed"
                };
                format!("{} (id {id}, {state})", backend_address(&b))
            }
            Err(_) => format!("id {id} (unreadable)"),
        }
    };
    if value.table_size == 0 {
        let _ = writeln!(out, "  Maglev table: empty (no healthy backend)");
    } else {
        let slot = maglev_slot(hash, value.table_size);
        match maglev.get(&(value.table_offset + slot), 0) {
            Ok(id) => {
                let _ = writeln!(out, "  Maglev table (live health): {}", describe(id));
            }
            Err(e) => {
                let _ = writeln!(out, "  Maglev table unreadable: {e}");
            }
        }
    }
    match conns.get(flow, 0) {
        Ok(entry) => {
            let current = backends.get(&entry.backend_id, 0).ok();
            let usable = current
                .is_some_and(|b| backend_usable(b.flags) && b.generation == entry.generation);
            if usable {
                let _ = writeln!(
                    out,
                    "  connection table: entry -> {}; it overrides the Maglev table",
                    describe(entry.backend_id)
                );
            } else {
                let _ = writeln!(
                    out,
                    "  connection table: stale entry -> {} (generation {}); the next packet is hashed again",
                    describe(entry.backend_id),
                    entry.generation
                );
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "  connection table: no entry; the next packet takes the Maglev choice"
            );
        }
    }
    if vip.mode != crate::config::VipMode::Dsr {
        running_translation(out, pins, flow)?;
    }
    Ok(())
}

/// The running NAT table's translation of `flow`, written to `out`.
///
/// # Errors
/// The pinned NAT table cannot be opened.
fn running_translation(out: &mut String, pins: &Path, flow: &FlowKey) -> Result<(), ExplainError> {
    let nat: HashMap<MapData, FlowKey, lb_common::NatEntry> = open_pin(pins, lb_common::MAP_NAT)?;
    let Ok(e) = nat.get(flow, 0) else {
        let _ = writeln!(
            out,
            "  NAT table: no translation; the flow's next packet gets one"
        );
        return Ok(());
    };
    let addr = |a: &[u8; 16]| -> std::net::IpAddr {
        if flow.family == FAMILY_V6 {
            (*a).into()
        } else {
            [a[0], a[1], a[2], a[3]].into()
        }
    };
    let from = SocketAddr::new(addr(&e.src), u16::from_be_bytes(e.sport));
    let to = SocketAddr::new(addr(&e.dst), u16::from_be_bytes(e.dport));
    let idle = crate::dataplane::nat::now().wrapping_sub(e.last_seen);
    let closing = if e.flags & lb_common::NAT_F_CLOSING != 0 {
        ", FIN or RST seen"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  NAT table: translated to {from} -> {to} (backend id {}, last packet about {idle} s ago{closing})",
        e.backend_id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.0.0.21"
  [[vip.backend]]
  address = "10.0.0.22"
[[vip]]
name = "any"
address = "10.0.0.100"
port = 0
protocol = "tcp"
  [vip.health_check]
  kind = "tcp"
  port = 9
  [[vip.backend]]
  address = "10.0.0.31"
"#;

    fn run(src: &str, dst: &str) -> String {
        let config = Config::parse(CONFIG, "t").expect("valid").config;
        explain(
            &config,
            Protocol::Tcp,
            src.parse().unwrap(),
            dst.parse().unwrap(),
            None,
        )
        .expect("explains")
    }

    #[test]
    fn exact_port_then_wildcard_then_no_vip() {
        assert!(run("10.1.0.1:40000", "10.0.0.100:80").contains("VIP \"web\""));
        assert!(run("10.1.0.1:40000", "10.0.0.100:443").contains("VIP \"any\""));
        assert!(run("10.1.0.1:40000", "10.0.0.101:80").contains("is no VIP address: passed"));
        assert!(run("203.0.113.7:40000", "10.0.0.100:80").contains("source filter"));
    }

    #[test]
    fn an_outside_source_to_a_non_vip_address_passes_unless_scope_is_all() {
        let config = Config::parse(CONFIG, "t").expect("valid").config;
        let outside = "203.0.113.7:40000".parse().unwrap();
        let host = "10.0.0.5:22".parse().unwrap();
        assert_eq!(
            verdict(&config, Protocol::Tcp, outside, host),
            Verdict::Pass
        );
        let all = Config::parse(&format!("[source_filter]\nscope = \"all\"\n{CONFIG}"), "t")
            .expect("valid")
            .config;
        assert_eq!(
            verdict(&all, Protocol::Tcp, outside, host),
            Verdict::DropSourceFilter
        );
    }

    #[test]
    fn backend_is_the_one_the_table_gives_for_the_hash() {
        let text = run("10.1.0.1:40000", "10.0.0.100:80");
        let hash = lb_common::flow_hash_v4(
            [10, 1, 0, 1],
            [10, 0, 0, 100],
            40000u16.to_be_bytes(),
            80u16.to_be_bytes(),
            6,
        );
        assert!(
            text.contains(&format!(
                "flow hash {hash:#010x}; Maglev slot {} of 251",
                maglev_slot(hash, 251)
            )),
            "{text}"
        );
        // Every source port lands on one of the two backends, both used.
        let mut seen = std::collections::HashSet::new();
        for port in 40000..40050 {
            let text = run(&format!("10.1.0.1:{port}"), "10.0.0.100:80");
            let line = text
                .lines()
                .find(|l| l.starts_with("backend by the configuration"))
                .expect("backend line");
            seen.insert(line.rsplit(' ').next().unwrap().to_string());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn a_nat_flow_s_translation_is_printed_with_its_first_snat_port() {
        let text = r#"
[maglev]
table_size = 251
[nat]
source_v4 = ["10.0.0.2", "10.0.0.3"]
ports = "2000-4999"
[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
mode = "nat"
  [[vip.backend]]
  address = "10.0.0.21"
  port = 8080
"#;
        let config = Config::parse(text, "t").expect("valid").config;
        let src: SocketAddr = "10.1.0.1:40000".parse().expect("address");
        let dst: SocketAddr = "10.0.0.100:80".parse().expect("address");
        let out = explain(&config, Protocol::Tcp, src, dst, None).expect("explained");
        let hash = flow_hash(
            FAMILY_V4,
            &addr_key(src.ip()).addr,
            &addr_key(dst.ip()).addr,
            40000u16.to_be_bytes(),
            80u16.to_be_bytes(),
            6,
        );
        let port = lb_common::snat_port(2000, 3000, hash, 0);
        let source = ["10.0.0.2", "10.0.0.3"][lb_common::snat_source(hash, 2)];
        let want = format!(
            "mode nat: 10.1.0.1:40000 -> 10.0.0.100:80 becomes {source} port {port} -> 10.0.0.21:8080"
        );
        assert!(out.contains(&want), "{want}\n{out}");
        let dnat = explain(
            &Config::parse(&text.replace("\"nat\"\n", "\"dnat\"\n"), "t")
                .expect("valid")
                .config,
            Protocol::Tcp,
            src,
            dst,
            None,
        )
        .expect("explained");
        assert!(
            dnat.contains(
                "mode dnat: 10.1.0.1:40000 -> 10.0.0.21:8080 (the client's address kept)"
            ),
            "{dnat}"
        );
    }
}
