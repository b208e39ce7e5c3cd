//! The agent's state of VIPs and backends ([`VipState`], [`BackendState`]),
//! what a change did ([`Changes`]), and how a configured VIP or backend
//! becomes its map entry (keys, flags, names for Maglev).

use super::*;

/// A backend entry whose next hop the agent keeps (in `LB_NEXTHOPS`,
/// written by the data plane's `nexthops` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHopTarget {
    /// Backend id (index of `LB_BACKENDS` and `LB_NEXTHOPS`).
    pub id: u32,
    /// Generation of the backend entry; the written next hop carries it.
    pub generation: u32,
    /// The backend's address.
    pub address: IpAddr,
}

/// A backend of a VIP as the agent tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    /// Address.
    pub address: IpAddr,
    /// Weight from the configuration.
    pub weight: u32,
    /// Index into the backends map and the per-backend counters.
    pub id: u32,
    /// Result of its health checks.
    pub healthy: bool,
    /// What its entry of `LB_BE_PORTS` holds ([`backend_port`]);
    /// `u32::MAX` when not known (unreadable at adoption), so the next
    /// apply writes it.
    pub port: u32,
}

/// A VIP as the agent tracks it.
#[derive(Debug, Clone)]
pub struct VipState {
    /// Its configuration.
    pub config: Vip,
    /// Index into the per-VIP counters.
    pub id: u32,
    /// Maglev region holding its current table, if it has one.
    pub region: Option<u32>,
    /// Its backends, in configuration order.
    pub backends: Vec<BackendState>,
    /// Members (id, weight) of the table in `region`; `None` when not known
    /// (adopted from an earlier agent: compared by content instead).
    pub(super) published: Option<Vec<(u32, u32)>>,
    /// `VIP_F_*` flags of its configuration in the VIP's map entry.
    pub(super) flags: u32,
    /// Whether its entry carries [`VIP_F_CONNS_MATCH_TABLE`]: its recorded
    /// flows all agree with its table (see [`conns`]).
    pub conns_match: bool,
    /// The balancer's change count at its last change that could make a
    /// recorded flow disagree with its table (or its creation): a walk
    /// prepared before it sets nothing. Unique across VIPs, so a walk of a
    /// removed VIP never sets the flag of a new one with its id.
    pub(super) epoch: u64,
    /// When the last such change was made.
    pub(super) changed_at: Instant,
}

impl VipState {
    /// Whether a walk prepared at `now` may set its flag: clear, and its
    /// last change at least [`CONNS_GRACE`] old.
    pub(super) fn waits_for_walk(&self, now: Instant) -> bool {
        !self.conns_match && conns::settled(self.changed_at, now)
    }

    /// What its Maglev table is built from: (backend id, name, weight) of
    /// its healthy backends ([`maglev::build`] leaves weight 0 out).
    pub(super) fn table_input(&self) -> Vec<(u32, Vec<u8>, u32)> {
        self.backends
            .iter()
            .filter(|b| b.healthy)
            .map(|b| (b.id, backend_name(b.address), b.weight))
            .collect()
    }

    /// The backends that get Maglev entries: healthy, weight above 0.
    pub(super) fn members(&self) -> Vec<(u32, u32)> {
        self.backends
            .iter()
            .filter(|b| maglev_member(b.healthy, b.weight))
            .map(|b| (b.id, b.weight))
            .collect()
    }
}

/// What [`Balancer::apply`] changed, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// VIPs added.
    pub vips_added: usize,
    /// VIPs removed.
    pub vips_removed: usize,
    /// Backends added.
    pub backends_added: usize,
    /// Backends removed.
    pub backends_removed: usize,
    /// Backends whose weight changed.
    pub weights_changed: usize,
    /// Maglev tables written.
    pub tables_written: usize,
    /// Other writes: VIP flags, VIP addresses, source prefixes, globals.
    pub other_writes: usize,
}

impl Changes {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VIPs +{} -{}, backends +{} -{}, weights changed {}, Maglev tables written {}, other map writes {}",
            self.vips_added,
            self.vips_removed,
            self.backends_added,
            self.backends_removed,
            self.weights_changed,
            self.tables_written,
            self.other_writes
        )
    }
}

/// The map key of a VIP.
pub fn vip_key(vip: &Vip) -> VipKey {
    match vip.address {
        IpAddr::V4(a) => VipKey::v4(a.octets(), vip.port, vip.protocol.number()),
        IpAddr::V6(a) => VipKey::v6(a.octets(), vip.port, vip.protocol.number()),
    }
}

/// The map key of an address of either family.
pub fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

/// The outer source addresses of encapsulation: IPv4 toward IPv4 backends,
/// IPv6 toward IPv6 backends (unspecified when no backend needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// Toward IPv4 backends.
    pub v4: Ipv4Addr,
    /// Toward IPv6 backends.
    pub v6: Ipv6Addr,
    /// The SNAT addresses and ports of `mode = "nat"` VIPs, as
    /// `LB_NAT_SOURCES` holds them.
    pub nat: lb_common::NatSources,
}

impl From<Ipv4Addr> for Sources {
    /// `v4` for encapsulation and as the one IPv4 SNAT address, the SNAT
    /// ports outside Linux's default `ip_local_port_range` (1024-32767).
    fn from(v4: Ipv4Addr) -> Self {
        let mut nat = lb_common::NatSources {
            v4_count: 1,
            port_first: 1024,
            port_count: 32767 - 1024 + 1,
            ..lb_common::NatSources::default()
        };
        nat.v4[0] = v4.octets();
        Self {
            v4,
            v6: Ipv6Addr::UNSPECIFIED,
            nat,
        }
    }
}

/// The bytes that name a backend in Maglev permutations: its address.
pub fn backend_name(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address of a backend map entry.
pub fn backend_address(b: &Backend) -> IpAddr {
    if b.family == lb_common::FAMILY_V6 {
        IpAddr::from(b.addr)
    } else {
        IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
    }
}

pub(super) fn backend_value(addr: IpAddr, flags: u8, generation: u32, vip_id: u32) -> Backend {
    let mut b = Backend {
        flags,
        generation,
        vip_id: vip_id as u16,
        ..Backend::default()
    };
    match addr {
        IpAddr::V4(a) => {
            b.addr[..4].copy_from_slice(&a.octets());
            b.family = lb_common::FAMILY_V4;
        }
        IpAddr::V6(a) => {
            b.addr = a.octets();
            b.family = lb_common::FAMILY_V6;
        }
    }
    b
}

/// The value of backend `b`'s entry of `LB_BE_PORTS` in `vip`: its port
/// in the NAT modes, 0 in DSR (unused).
pub(super) fn backend_port(vip: &Vip, b: &crate::config::BackendConfig) -> u32 {
    if vip.mode == VipMode::Dsr {
        0
    } else {
        u32::from(b.port)
    }
}

pub(super) fn vip_flags(vip: &Vip) -> u32 {
    let mut flags = match vip.mode {
        VipMode::Dsr => 0,
        VipMode::Nat => lb_common::VIP_F_NAT,
        VipMode::Dnat => lb_common::VIP_F_DNAT,
    };
    if vip.on_no_backend == OnNoBackend::Pass {
        flags |= VIP_F_PASS_ON_NO_BACKEND;
    }
    if vip.allow.is_some() {
        flags |= VIP_F_OWN_ALLOW;
    }
    flags
}

/// A VIP's own source prefixes as the per-VIP tries hold them.
pub(super) fn own_allow(vip: &Vip, id: u32) -> HashSet<(u32, IpNet)> {
    vip.allow.iter().flatten().map(|&n| (id, n)).collect()
}
