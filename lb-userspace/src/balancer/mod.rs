//! The agent's picture of the data plane: which VIP has which id and Maglev
//! table region, which backend has which id and health, and the map writes
//! that keep the kernel's maps equal to it.
//!
//! Every change is applied as a difference ([`Balancer::apply`]):
//! VIPs are matched by address, port and protocol, backends by address
//! within their VIP; what is unchanged is not written, so untouched VIPs,
//! their tables and their flows are not disturbed. The same difference
//! adopts maps an earlier agent left pinned ([`Balancer::adopt`]).
//!
//! A VIP's Maglev table is replaced by writing the new table into a free
//! region of the Maglev map and then pointing the VIP's entry at it (one map
//! update), so a packet sees either the old table or the new one, never a mix.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lb_common::{
    ALLOW16_WORDS, AddrKey, BACKEND_F_ACTIVE, BACKEND_F_HEALTHY, Backend, GLOBAL_F_GUE,
    GLOBAL_F_READY, GLOBAL_F_SCOPE_ALL, Globals, LAYOUT_FINGERPRINT, MAX_BACKENDS, MAX_VIPS,
    VIP_BLOOM_WORDS, VIP_F_CONNS_MATCH_TABLE, VIP_F_OWN_ALLOW, VIP_F_PASS_ON_NO_BACKEND, VIP_LIVE,
    VIP_SHADOWED, VipKey, VipValue,
    rules::{allow16_mark, maglev_member, vip_bloom_bit},
};

mod conns;
#[cfg(test)]
pub mod fake;
mod ids;
pub mod store;

pub use conns::{
    CONNS_GRACE, ConnsCheck, ConnsVerdict, WALK_MAX_INTERVAL, WALK_MIN_INTERVAL, WalkSchedule,
};
use ids::IdPool;
use ipnet::IpNet;
pub use store::{MapStore, MapStoreError};

use crate::{
    config::{Config, EncapKind, FilterScope, OnNoBackend, Vip, sizing},
    maglev,
};

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

/// Why the balancer could not apply something.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// A map write failed.
    #[error(transparent)]
    Map(#[from] MapStoreError),
    /// More VIPs, backends or tables than the maps hold.
    #[error("out of {what}: the data plane holds at most {capacity}")]
    Capacity {
        /// Which resource.
        what: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// A setting that sizes the maps changed; it needs a new data plane.
    #[error(
        "{key} cannot change while the data plane runs ({old} -> {new}): stop the agent without --keep-attached and start it again"
    )]
    Immutable {
        /// The configuration key.
        key: &'static str,
        /// Running value.
        old: String,
        /// Requested value.
        new: String,
    },
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
    published: Option<Vec<(u32, u32)>>,
    /// `VIP_F_*` flags of its configuration in the VIP's map entry.
    flags: u32,
    /// Whether its entry carries [`VIP_F_CONNS_MATCH_TABLE`]: its recorded
    /// flows all agree with its table (see [`conns`]).
    pub conns_match: bool,
    /// The balancer's change count at its last change that could make a
    /// recorded flow disagree with its table (or its creation): a walk
    /// prepared before it sets nothing. Unique across VIPs, so a walk of a
    /// removed VIP never sets the flag of a new one with its id.
    epoch: u64,
    /// When the last such change was made.
    changed_at: Instant,
}

impl VipState {
    /// Whether a walk prepared at `now` may set its flag: clear, and its
    /// last change at least [`CONNS_GRACE`] old.
    fn waits_for_walk(&self, now: Instant) -> bool {
        !self.conns_match && conns::settled(self.changed_at, now)
    }

    /// What its Maglev table is built from: (backend id, name, weight) of
    /// its healthy backends ([`maglev::build`] leaves weight 0 out).
    fn table_input(&self) -> Vec<(u32, Vec<u8>, u32)> {
        self.backends
            .iter()
            .filter(|b| b.healthy)
            .map(|b| (b.id, backend_name(b.address), b.weight))
            .collect()
    }

    /// The backends that get Maglev entries: healthy, weight above 0.
    fn members(&self) -> Vec<(u32, u32)> {
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

/// The agent's state of one data plane, written through a [`MapStore`].
pub struct Balancer<M: MapStore> {
    maps: M,
    table_size: u32,
    vips: Vec<VipState>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    regions: IdPool,
    generations: Vec<u32>,
    /// VIP counts per VIP address, as in the map.
    addr_counts: HashMap<AddrKey, u32>,
    /// The VIP-address filter's words, as in the map.
    vip_bloom: Vec<u64>,
    /// `LB_VIP_FLAGS` by VIP id, as in the map.
    vip_flags: Vec<u32>,
    /// The source filters by /16's words, IPv4 then IPv6, as in the maps.
    allow16: [Vec<u64>; 2],
    /// Allowed source prefixes of both families, as in the maps.
    allow: HashSet<IpNet>,
    /// Every VIP's own prefixes with the VIP id, as in the maps.
    vip_allow: HashSet<(u32, IpNet)>,
    globals: Globals,
    /// Changes counted for [`VipState::epoch`].
    epochs: u64,
}

/// Writes (with `set(index, word)`) the words of `new` that differ from
/// `current`, updating `current` as each write succeeds; how many.
fn write_words<T: Copy + PartialEq>(
    current: &mut [T],
    new: &[T],
    mut set: impl FnMut(u32, T) -> Result<(), MapStoreError>,
) -> Result<usize, MapStoreError> {
    let mut written = 0;
    for (index, (&word, old)) in new.iter().zip(current.iter_mut()).enumerate() {
        if word != *old {
            set(index as u32, word)?;
            *old = word;
            written += 1;
        }
    }
    Ok(written)
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
}

impl From<Ipv4Addr> for Sources {
    fn from(v4: Ipv4Addr) -> Self {
        Self {
            v4,
            v6: Ipv6Addr::UNSPECIFIED,
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

fn backend_value(addr: IpAddr, flags: u8, generation: u32, vip_id: u32) -> Backend {
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

fn vip_flags(vip: &Vip) -> u32 {
    let mut flags = 0;
    if vip.on_no_backend == OnNoBackend::Pass {
        flags |= VIP_F_PASS_ON_NO_BACKEND;
    }
    if vip.allow.is_some() {
        flags |= VIP_F_OWN_ALLOW;
    }
    flags
}

/// Clears [`VIP_F_CONNS_MATCH_TABLE`] in the map entry of every port-0 VIP
/// of `map_vips` that stays in `wanted` while a VIP of a port on its
/// address and protocol goes; returns the VIPs as they are then.
fn clear_under_gone_port_vips<M: MapStore>(
    maps: &mut M,
    map_vips: Vec<(VipKey, VipValue)>,
    wanted: &HashMap<VipKey, &Vip>,
) -> Result<Vec<(VipKey, VipValue)>, BalancerError> {
    let gone: HashSet<([u8; 16], u8, u8)> = map_vips
        .iter()
        .filter(|(k, _)| k.port != [0, 0] && !wanted.contains_key(k))
        .map(|(k, _)| (k.addr, k.proto, k.family))
        .collect();
    let mut out = Vec::with_capacity(map_vips.len());
    for (key, mut value) in map_vips {
        if key.port == [0, 0]
            && value.flags & VIP_F_CONNS_MATCH_TABLE != 0
            && wanted.contains_key(&key)
            && gone.contains(&(key.addr, key.proto, key.family))
        {
            value.flags &= !VIP_F_CONNS_MATCH_TABLE;
            maps.set_vip(&key, &value)?;
        }
        out.push((key, value));
    }
    Ok(out)
}

/// A VIP's own source prefixes as the per-VIP tries hold them.
fn own_allow(vip: &Vip, id: u32) -> HashSet<(u32, IpNet)> {
    vip.allow.iter().flatten().map(|&n| (id, n)).collect()
}

impl<M: MapStore> Balancer<M> {
    fn empty(maps: M, table_size: u32, regions: u32) -> Self {
        let none = HashSet::new();
        Self {
            maps,
            table_size,
            vips: Vec::new(),
            vip_ids: IdPool::new(MAX_VIPS, &none),
            backend_ids: IdPool::new(MAX_BACKENDS, &none),
            regions: IdPool::fifo(regions, &none),
            generations: vec![0; MAX_BACKENDS as usize],
            addr_counts: HashMap::new(),
            vip_bloom: vec![0; VIP_BLOOM_WORDS as usize],
            vip_flags: vec![0; MAX_VIPS as usize],
            allow16: [
                vec![0; ALLOW16_WORDS as usize],
                vec![0; ALLOW16_WORDS as usize],
            ],
            allow: HashSet::new(),
            vip_allow: HashSet::new(),
            globals: Globals::default(),
            epochs: 0,
        }
    }

    /// Fills empty maps from `config`: source filter, backends, Maglev
    /// tables, VIPs, and last the globals with the ready flag, so the
    /// program forwards nothing before everything is in place. Every backend
    /// starts healthy (its first check decides, see [`crate::health`]).
    /// `regions` is the capacity of the Maglev map in tables.
    ///
    /// # Errors
    /// A map write fails, or the maps are too small.
    pub fn new(
        maps: M,
        config: &Config,
        sources: impl Into<Sources>,
        regions: u32,
    ) -> Result<Self, BalancerError> {
        let mut balancer = Self::empty(maps, config.table_size, regions);
        balancer.apply(config, sources)?;
        Ok(balancer)
    }

    /// Takes over maps filled by an earlier agent (pinned, with the same
    /// layout): rebuilds the ids, regions, generations and health from them,
    /// then applies `config` as a difference. With the configuration the
    /// maps were filled from, nothing is written; flows in the connection
    /// table keep their backends. Backends keep the health the maps hold.
    /// `regions` is the capacity of the Maglev map in tables.
    ///
    /// # Errors
    /// The maps cannot be read or written, or `config` does not fit them
    /// ([`BalancerError::Immutable`] when its table size differs).
    pub fn adopt(
        maps: M,
        config: &Config,
        sources: impl Into<Sources>,
        regions: u32,
    ) -> Result<(Self, Changes), BalancerError> {
        let globals = maps.globals()?;
        let table_size = globals.table_size;
        if table_size != config.table_size {
            return Err(BalancerError::Immutable {
                key: "maglev.table_size",
                old: table_size.to_string(),
                new: config.table_size.to_string(),
            });
        }
        let backends = maps.backends()?;
        let map_vips = maps.vips()?;
        let wanted: HashMap<VipKey, &Vip> = config.vips.iter().map(|v| (vip_key(v), v)).collect();
        let mut b = Self::empty(maps, table_size, regions);
        b.globals = globals;
        b.allow = b.maps.allowed()?.into_iter().collect();
        b.vip_allow = b.maps.allowed_vip()?.into_iter().collect();
        b.addr_counts = b.maps.vip_addrs()?.into_iter().collect();
        b.vip_bloom = b.maps.vip_bloom()?;
        b.vip_flags = b.maps.vip_flags()?;
        b.allow16 = [b.maps.allow16(false)?, b.maps.allow16(true)?];
        for (id, backend) in &backends {
            b.generations[*id as usize] = backend.generation;
        }
        let mut changes = Changes::default();
        let (mut used_vips, mut used_regions, mut used_backends) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        // A VIP of a port gone from the configuration hands its flows back
        // to the port-0 VIP under it: that VIP's flag goes first.
        let map_vips = clear_under_gone_port_vips(&mut b.maps, map_vips, &wanted)?;
        for (key, value) in map_vips {
            let members = backends.iter().filter(|(_, be)| {
                be.flags & BACKEND_F_ACTIVE != 0 && u32::from(be.vip_id) == value.vip_id
            });
            let Some(vip) = wanted.get(&key) else {
                // Gone from the configuration: remove it now.
                b.maps.remove_vip(&key)?;
                for (id, be) in members {
                    b.maps.set_backend(*id, &Backend { flags: 0, ..*be })?;
                    changes.backends_removed += 1;
                }
                changes.vips_removed += 1;
                continue;
            };
            used_vips.insert(value.vip_id);
            let region = (value.table_size > 0).then(|| value.table_offset / table_size);
            used_regions.extend(region);
            let states = members
                .map(|(id, be)| {
                    used_backends.insert(*id);
                    let address = backend_address(be);
                    BackendState {
                        address,
                        weight: vip
                            .backends
                            .iter()
                            .find(|c| c.address == address)
                            .map_or(0, |c| c.weight),
                        id: *id,
                        healthy: be.flags & BACKEND_F_HEALTHY != 0,
                    }
                })
                .collect();
            let epoch = b.next_epoch();
            b.vips.push(VipState {
                config: (*vip).clone(),
                id: value.vip_id,
                region,
                backends: states,
                published: None,
                flags: value.flags & !VIP_F_CONNS_MATCH_TABLE,
                conns_match: value.flags & VIP_F_CONNS_MATCH_TABLE != 0,
                epoch,
                changed_at: Instant::now(),
            });
        }
        // Active entries of no VIP: an agent stopped between writes.
        for (id, be) in &backends {
            if be.flags & BACKEND_F_ACTIVE != 0 && !used_backends.contains(id) {
                b.maps.set_backend(*id, &Backend { flags: 0, ..*be })?;
            }
        }
        b.vip_ids = IdPool::new(MAX_VIPS, &used_vips);
        b.backend_ids = IdPool::new(MAX_BACKENDS, &used_backends);
        b.regions = IdPool::fifo(regions, &used_regions);
        let more = b.apply(config, sources)?;
        changes.vips_added += more.vips_added;
        changes.vips_removed += more.vips_removed;
        changes.backends_added += more.backends_added;
        changes.backends_removed += more.backends_removed;
        changes.weights_changed += more.weights_changed;
        changes.tables_written += more.tables_written;
        changes.other_writes += more.other_writes;
        Ok((b, changes))
    }

    /// Makes the maps say what `config` says, writing only the difference
    /// from what they say now. Checks everything that could refuse
    /// the configuration (immutable settings, capacity) before the first
    /// write, so a refused configuration leaves the maps untouched.
    /// Backends new to a VIP start healthy; kept backends keep their
    /// health, id and connection-table entries.
    ///
    /// # Errors
    /// [`BalancerError::Immutable`] or [`BalancerError::Capacity`] with
    /// nothing written; a map write failure part way (logged by the caller;
    /// the agent's state matches what was written).
    pub fn apply(
        &mut self,
        config: &Config,
        sources: impl Into<Sources>,
    ) -> Result<Changes, BalancerError> {
        let sources = sources.into();
        self.check_fits(config)?;
        let mut changes = Changes::default();

        let allow: HashSet<IpNet> = config.allow.iter().copied().collect();
        for &net in allow.difference(&self.allow) {
            self.maps.allow(net)?;
            changes.other_writes += 1;
        }
        // The /16 filter widens now (old and new prefixes) and narrows with
        // the trie at the end, so no source is refused by either on the way.
        let both: Vec<IpNet> = allow.union(&self.allow).copied().collect();
        changes.other_writes += self.write_allow16(both.iter())?;

        // VIPs gone, then VIPs kept (updated) or new, in configuration order.
        let wanted: HashSet<VipKey> = config.vips.iter().map(vip_key).collect();
        let mut i = 0;
        while i < self.vips.len() {
            if wanted.contains(&vip_key(&self.vips[i].config)) {
                i += 1;
            } else {
                changes.backends_removed += self.vips[i].backends.len();
                self.remove_vip(i)?;
                changes.vips_removed += 1;
            }
        }
        let mut ordered = Vec::with_capacity(config.vips.len());
        for vip in &config.vips {
            let key = vip_key(vip);
            match self.vips.iter().position(|v| vip_key(&v.config) == key) {
                Some(i) => {
                    self.update_vip(i, vip, &mut changes)?;
                    ordered.push(self.vips[i].id);
                }
                None => {
                    self.add_vip(vip)?;
                    changes.vips_added += 1;
                    changes.backends_added += vip.backends.len();
                    changes.tables_written += 1;
                    ordered.push(self.vips[self.vips.len() - 1].id);
                }
            }
        }
        self.vips
            .sort_by_key(|v| ordered.iter().position(|&id| id == v.id));

        let mut counts: HashMap<AddrKey, u32> = HashMap::new();
        for vip in &self.vips {
            *counts.entry(addr_key(vip.config.address)).or_default() += 1;
        }
        let keys: HashSet<AddrKey> = counts
            .keys()
            .chain(self.addr_counts.keys())
            .copied()
            .collect();
        for key in keys {
            let new = counts.get(&key).copied().unwrap_or(0);
            if self.addr_counts.get(&key).copied().unwrap_or(0) != new {
                self.maps.set_vip_addr(&key, new)?;
                changes.other_writes += 1;
            }
        }
        self.addr_counts = counts;
        changes.other_writes += self.write_vip_bloom()?;
        changes.other_writes += self.write_vip_flags()?;

        let wanted: Vec<IpNet> = allow.iter().copied().collect();
        changes.other_writes += self.write_allow16(wanted.iter())?;
        let stale: Vec<IpNet> = self.allow.difference(&allow).copied().collect();
        for net in stale {
            self.maps.disallow(net)?;
            changes.other_writes += 1;
        }
        self.allow = allow;

        let mut flags = GLOBAL_F_READY;
        if config.scope == FilterScope::All {
            flags |= GLOBAL_F_SCOPE_ALL;
        }
        if config.encap == EncapKind::Gue {
            flags |= GLOBAL_F_GUE;
        }
        let globals = Globals {
            encap_src_v4: sources.v4.octets(),
            encap_src_v6: sources.v6.octets(),
            gue_port: u32::from(config.gue_port),
            flags,
            layout_version: LAYOUT_FINGERPRINT,
            table_size: self.table_size,
            encap_mtu: config.encap_mtu.map_or(0, u32::from),
            too_big_per_cpu: config.too_big_per_cpu,
            max_new_per_cpu: config.max_new_per_cpu,
            conns_epoch: self.globals.conns_epoch,
            _reserved: 0,
        };
        if globals != self.globals {
            self.maps.set_globals(&globals)?;
            self.globals = globals;
            changes.other_writes += 1;
        }
        Ok(changes)
    }

    /// Makes the source filters by /16 of both families say what prefixes
    /// `allow` say (`lb_common::rules::allow16_mark`), writing the words
    /// that change; how many.
    fn write_allow16<'a>(
        &mut self,
        allow: impl Iterator<Item = &'a IpNet>,
    ) -> Result<usize, BalancerError> {
        let mut words = [
            vec![0u64; ALLOW16_WORDS as usize],
            vec![0u64; ALLOW16_WORDS as usize],
        ];
        for net in allow {
            let (family, first, len) = match net {
                IpNet::V4(n) => {
                    let o = n.network().octets();
                    (0, [o[0], o[1]], n.prefix_len())
                }
                IpNet::V6(n) => {
                    let o = n.network().octets();
                    (1, [o[0], o[1]], n.prefix_len())
                }
            };
            allow16_mark(&mut words[family], first, len);
        }
        let mut written = 0;
        for (family, new) in words.iter().enumerate() {
            let maps = &mut self.maps;
            written += write_words(&mut self.allow16[family], new, |i, w| {
                maps.set_allow16(family == 1, i, w)
            })?;
        }
        Ok(written)
    }

    /// Makes `LB_VIP_FLAGS` say, for every VIP id in use, its VIP's flags
    /// with `VIP_LIVE`, and `VIP_SHADOWED` for a port-0 VIP that has a VIP
    /// of a given port on its address and protocol; 0 for the other ids.
    /// Writes the entries that change; how many. Run once a reload's VIPs
    /// are written: a VIP removed meanwhile has its backends retired, so its
    /// flows no longer reach it through them.
    fn write_vip_flags(&mut self) -> Result<usize, BalancerError> {
        let mut flags = vec![0u32; MAX_VIPS as usize];
        for vip in &self.vips {
            let c = &vip.config;
            let shadowed = c.port == 0
                && self.vips.iter().any(|other| {
                    let o = &other.config;
                    o.port != 0 && o.address == c.address && o.protocol == c.protocol
                });
            if let Some(entry) = flags.get_mut(vip.id as usize) {
                *entry = vip.flags | VIP_LIVE | if shadowed { VIP_SHADOWED } else { 0 };
            }
        }
        let maps = &mut self.maps;
        Ok(write_words(&mut self.vip_flags, &flags, |i, f| {
            maps.set_vip_flags(i, f)
        })?)
    }

    /// Makes the VIP-address filter hold the bit of every VIP address and
    /// no other (`lb_common::rules::vip_bloom_bit`), writing the words that
    /// change; how many. Run after the VIP addresses are written: a bit set
    /// late or cleared early only passes a packet to the kernel for the
    /// moment between the two writes, as a missing VIP-address entry would.
    fn write_vip_bloom(&mut self) -> Result<usize, BalancerError> {
        let mut words = vec![0u64; VIP_BLOOM_WORDS as usize];
        for key in self.addr_counts.keys() {
            let (word, mask) = vip_bloom_bit(key);
            words[word as usize] |= mask;
        }
        let maps = &mut self.maps;
        Ok(write_words(&mut self.vip_bloom, &words, |i, w| {
            maps.set_vip_bloom(i, w)
        })?)
    }

    /// Refuses, before any write, a configuration the maps cannot take.
    fn check_fits(&self, config: &Config) -> Result<(), BalancerError> {
        if config.table_size != self.table_size {
            return Err(BalancerError::Immutable {
                key: "maglev.table_size",
                old: self.table_size.to_string(),
                new: config.table_size.to_string(),
            });
        }
        let mut new_backends = 0;
        let mut freed_backends = 0;
        let mut kept_vips = 0;
        for vip in &config.vips {
            let key = vip_key(vip);
            match self.vips.iter().find(|v| vip_key(&v.config) == key) {
                Some(old) => {
                    kept_vips += 1;
                    new_backends += vip
                        .backends
                        .iter()
                        .filter(|b| !old.backends.iter().any(|o| o.address == b.address))
                        .count();
                }
                None => new_backends += vip.backends.len(),
            }
        }
        for old in &self.vips {
            if !config
                .vips
                .iter()
                .any(|v| vip_key(v) == vip_key(&old.config))
            {
                freed_backends += old.backends.len();
            }
        }
        if new_backends > self.backend_ids.free.len() + freed_backends {
            return Err(BalancerError::Capacity {
                what: "backend ids",
                capacity: MAX_BACKENDS,
            });
        }
        let max_vips = sizing::max_vips_of(self.regions.capacity);
        if config.vips.len() > max_vips as usize {
            return Err(BalancerError::Capacity {
                what: "VIPs (maglev.max_vips of the running data plane)",
                capacity: max_vips,
            });
        }
        // Every VIP may need a new region while its old one is still in use.
        let in_use = self.vips.iter().filter(|v| v.region.is_some()).count();
        let needed = config.vips.len() - kept_vips + 1;
        let free = self.regions.capacity as usize - in_use
            + self
                .vips
                .iter()
                .filter(|v| {
                    v.region.is_some()
                        && !config.vips.iter().any(|c| vip_key(c) == vip_key(&v.config))
                })
                .count();
        if needed > free {
            return Err(BalancerError::Capacity {
                what: "spare Maglev table regions",
                capacity: self.regions.capacity,
            });
        }
        Ok(())
    }

    fn new_backend(
        &mut self,
        address: IpAddr,
        weight: u32,
        vip_id: u32,
    ) -> Result<BackendState, BalancerError> {
        let id = self.backend_ids.take("backend ids")?;
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        let value = backend_value(
            address,
            BACKEND_F_ACTIVE | BACKEND_F_HEALTHY,
            generation,
            vip_id,
        );
        if let Err(e) = self.maps.set_backend(id, &value) {
            self.backend_ids.give(id);
            return Err(e.into());
        }
        Ok(BackendState {
            address,
            weight,
            id,
            healthy: true,
        })
    }

    /// Marks backend entry `b` inactive (its flows are hashed again) and frees its id.
    fn retire_backend(&mut self, b: &BackendState, vip_id: u32) -> Result<(), BalancerError> {
        let generation = self.generations[b.id as usize];
        self.maps
            .set_backend(b.id, &backend_value(b.address, 0, generation, vip_id))?;
        self.backend_ids.give(b.id);
        Ok(())
    }

    fn add_vip(&mut self, vip: &Vip) -> Result<(), BalancerError> {
        let id = self.vip_ids.take("VIP ids")?;
        // The VIP's own list before its entry: no moment with the flag set
        // and the list empty.
        self.add_own_allow(vip, id)?;
        let mut backends = Vec::with_capacity(vip.backends.len());
        for b in &vip.backends {
            backends.push(self.new_backend(b.address, b.weight, id)?);
        }
        // Its backends are new (new generations), so no recorded flow can
        // name them: its flows agree with its first table. Except a VIP of
        // a port over a port-0 VIP: flows of that port recorded for the
        // port-0 VIP keep their backends (see `write_vip_flags`).
        let over_port_0 = vip.port != 0 && self.port_0_vip(vip).is_some();
        let epoch = self.next_epoch();
        self.vips.push(VipState {
            config: vip.clone(),
            id,
            region: None,
            backends,
            published: None,
            flags: vip_flags(vip),
            conns_match: !over_port_0,
            epoch,
            changed_at: Instant::now(),
        });
        let index = self.vips.len() - 1;
        self.write_table(index)
    }

    /// A new [`VipState::epoch`].
    fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// The index of the port-0 VIP on `vip`'s address and protocol.
    fn port_0_vip(&self, vip: &Vip) -> Option<usize> {
        self.vips.iter().position(|o| {
            let o = &o.config;
            o.port == 0 && o.address == vip.address && o.protocol == vip.protocol
        })
    }

    /// Records a change to VIP `i` that could make a recorded flow disagree
    /// with its table (a new table, a backend usable again, its flows of a
    /// port back from a removed VIP of that port), and clears its
    /// [`VIP_F_CONNS_MATCH_TABLE`] first: SYNs look their flows up from
    /// now on. Call before the change is written.
    fn conns_changed(&mut self, i: usize) -> Result<(), BalancerError> {
        let epoch = self.next_epoch();
        let vip = &mut self.vips[i];
        vip.epoch = epoch;
        vip.changed_at = Instant::now();
        if vip.conns_match {
            vip.conns_match = false;
            if let Err(e) = self.write_vip(i) {
                self.vips[i].conns_match = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// What a walk of the connection table needs to set
    /// [`VIP_F_CONNS_MATCH_TABLE`] again: the VIPs without it whose last
    /// change was at least [`CONNS_GRACE`] before `now`, with their tables.
    /// `None` when there is none.
    pub fn conns_check(&self, now: Instant) -> Option<ConnsCheck> {
        if !self.vips.iter().any(|v| v.waits_for_walk(now)) {
            return None;
        }
        let vips = self
            .vips
            .iter()
            .map(|v| (vip_key(&v.config), v.id))
            .collect();
        // Healthy or not: an entry of an unhealthy backend is usable again
        // once it recovers, which need not change the VIP its flow now
        // matches (a port VIP over the port-0 VIP that recorded it).
        let live = self
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .map(|b| (b.id, self.generations[b.id as usize]))
            .collect();
        let mut check = ConnsCheck::new(vips, live, self.table_size);
        for vip in self.vips.iter().filter(|v| v.waits_for_walk(now)) {
            check.add(vip.id, vip.epoch, vip.table_input());
        }
        Some(check)
    }

    /// The VIPs a walk prepared at `now` would check ([`Self::conns_check`]):
    /// (VIP id, change count), sorted; cheap, for deciding whether a walk
    /// is due ([`WalkSchedule::due`]).
    pub fn conns_waiting(&self, now: Instant) -> Vec<(u32, u64)> {
        let mut waiting: Vec<(u32, u64)> = self
            .vips
            .iter()
            .filter(|v| v.waits_for_walk(now))
            .map(|v| (v.id, v.epoch))
            .collect();
        waiting.sort_unstable();
        waiting
    }

    /// Sets [`VIP_F_CONNS_MATCH_TABLE`] on the VIPs a complete walk found in
    /// agreement, unless they changed since the walk was prepared; returns
    /// the names of those it set.
    ///
    /// # Errors
    /// A map write fails (the flag stays clear).
    pub fn conns_checked(&mut self, verdict: &ConnsVerdict) -> Result<Vec<String>, BalancerError> {
        let mut set = Vec::new();
        if !verdict.complete {
            return Ok(set);
        }
        let due: Vec<usize> = verdict
            .agree
            .iter()
            .filter_map(|&(id, epoch)| {
                let i = self.vips.iter().position(|v| v.id == id)?;
                (self.vips[i].epoch == epoch && !self.vips[i].conns_match).then_some(i)
            })
            .collect();
        if due.is_empty() {
            return Ok(set);
        }
        // The walk read the connection table, not the flow caches' copies:
        // copies made before the walk (of entries gone since) are retired
        // first, so a SYN that skips the table meets no copy that names
        // another backend.
        self.retire_flow_caches()?;
        for i in due {
            self.vips[i].conns_match = true;
            if let Err(e) = self.write_vip(i) {
                self.vips[i].conns_match = false;
                return Err(e);
            }
            set.push(self.vips[i].config.name.clone());
        }
        Ok(set)
    }

    /// Retires every flow-cache copy (`lb_common::FlowCacheEntry`) by moving
    /// the connection-table epoch (`Globals::conns_epoch`) on: the next
    /// packet of each flow reads the connection table. For whoever removes
    /// connection-table entries and must not meet their copies: a walk
    /// before it lets SYNs skip the table, and tests that empty the table.
    ///
    /// # Errors
    /// The globals write fails (the epoch stays).
    pub fn retire_flow_caches(&mut self) -> Result<(), BalancerError> {
        let globals = Globals {
            conns_epoch: self.globals.conns_epoch.wrapping_add(1),
            ..self.globals
        };
        self.maps.set_globals(&globals)?;
        self.globals = globals;
        Ok(())
    }

    /// Brings kept VIP `i` to `vip`: new backends, weights, flags, then the
    /// table (only when its members changed), then retires removed backends.
    fn update_vip(
        &mut self,
        i: usize,
        vip: &Vip,
        changes: &mut Changes,
    ) -> Result<(), BalancerError> {
        let id = self.vips[i].id;
        changes.other_writes += self.add_own_allow(vip, id)?;
        let mut old = std::mem::take(&mut self.vips[i].backends);
        let mut backends = Vec::with_capacity(vip.backends.len());
        for b in &vip.backends {
            match old.iter().position(|o| o.address == b.address) {
                Some(p) => {
                    let mut kept = old.remove(p);
                    if kept.weight != b.weight {
                        kept.weight = b.weight;
                        changes.weights_changed += 1;
                    }
                    backends.push(kept);
                }
                None => match self.new_backend(b.address, b.weight, id) {
                    Ok(state) => {
                        backends.push(state);
                        changes.backends_added += 1;
                    }
                    Err(e) => {
                        backends.append(&mut old);
                        self.vips[i].backends = backends;
                        return Err(e);
                    }
                },
            }
        }
        self.vips[i].config = vip.clone();
        // Removed backends stay in the state until the new table is out.
        let removed = old;
        self.vips[i].backends = backends;
        if self.table_changed(i)? {
            self.publish_table(i)?;
            changes.tables_written += 1;
        } else if self.vips[i].flags != vip_flags(vip) {
            self.write_vip(i)?;
            changes.other_writes += 1;
        }
        for b in &removed {
            self.retire_backend(b, id)?;
            changes.backends_removed += 1;
        }
        // Prefixes the VIP no longer lists, once its entry says so.
        changes.other_writes += self.drop_own_allow(id, &own_allow(vip, id))?;
        Ok(())
    }

    /// Writes the prefixes of `vip`'s own list (VIP id `id`) not yet in the
    /// map; returns how many.
    fn add_own_allow(&mut self, vip: &Vip, id: u32) -> Result<usize, BalancerError> {
        let mut written = 0;
        for entry in own_allow(vip, id) {
            if !self.vip_allow.contains(&entry) {
                self.maps.allow_vip(entry.0, entry.1)?;
                self.vip_allow.insert(entry);
                written += 1;
            }
        }
        Ok(written)
    }

    /// Removes VIP `id`'s prefixes that are not in `keep`; returns how many.
    fn drop_own_allow(
        &mut self,
        id: u32,
        keep: &HashSet<(u32, IpNet)>,
    ) -> Result<usize, BalancerError> {
        let stale: Vec<_> = self
            .vip_allow
            .iter()
            .filter(|e| e.0 == id && !keep.contains(e))
            .copied()
            .collect();
        for entry in &stale {
            self.maps.disallow_vip(entry.0, entry.1)?;
            self.vip_allow.remove(entry);
        }
        Ok(stale.len())
    }

    /// Whether VIP `i`'s table must be written: its members changed, or (adopted)
    /// the table in its region differs from the one its members give.
    fn table_changed(&mut self, i: usize) -> Result<bool, BalancerError> {
        let members = self.vips[i].members();
        match (&self.vips[i].published, self.vips[i].region) {
            (Some(published), _) => Ok(*published != members),
            (None, None) => Ok(!members.is_empty()),
            (None, Some(region)) => {
                let table = self.table(i);
                let current = self.maps.table(self.offset(region), self.table_size)?;
                if table == current {
                    self.vips[i].published = Some(members);
                    return Ok(false);
                }
                Ok(true)
            }
        }
    }

    fn remove_vip(&mut self, i: usize) -> Result<(), BalancerError> {
        // Flows of this port recorded for the port-0 VIP before this VIP
        // came are that VIP's again.
        if self.vips[i].config.port != 0
            && let Some(any) = self.port_0_vip(&self.vips[i].config.clone())
        {
            self.conns_changed(any)?;
        }
        let vip = self.vips.remove(i);
        self.maps.remove_vip(&vip_key(&vip.config))?;
        self.drop_own_allow(vip.id, &HashSet::new())?;
        for b in &vip.backends {
            self.retire_backend(b, vip.id)?;
        }
        if let Some(region) = vip.region {
            self.regions.give(region);
        }
        self.vip_ids.give(vip.id);
        Ok(())
    }

    /// Every backend entry whose next hop the agent keeps in `LB_NEXTHOPS`:
    /// its id, the generation of its entry and its address.
    pub fn next_hop_targets(&self) -> Vec<NextHopTarget> {
        self.vips
            .iter()
            .flat_map(|v| &v.backends)
            .map(|b| NextHopTarget {
                id: b.id,
                generation: self.generations[b.id as usize],
                address: b.address,
            })
            .collect()
    }

    /// The VIPs, in configuration order.
    pub fn vips(&self) -> &[VipState] {
        &self.vips
    }

    /// The Maglev table of VIP `vip` (index into [`Self::vips`]) over its
    /// healthy backends: `table_size` backend ids, or empty when none is usable.
    pub fn table(&self, vip: usize) -> Vec<u32> {
        let input = self.vips[vip].table_input();
        maglev::build(&maglev::borrowed(&input), self.table_size)
    }

    /// Writes VIP `i`'s map entry for its current region and flags.
    fn write_vip(&mut self, i: usize) -> Result<(), BalancerError> {
        let state = &self.vips[i];
        let flags = vip_flags(&state.config);
        let map_flags = if state.conns_match {
            flags | VIP_F_CONNS_MATCH_TABLE
        } else {
            flags
        };
        let value = VipValue {
            vip_id: state.id,
            table_offset: state.region.map_or(0, |r| self.offset(r)),
            table_size: if state.region.is_some() {
                self.table_size
            } else {
                0
            },
            flags: map_flags,
        };
        self.maps.set_vip(&vip_key(&state.config), &value)?;
        self.vips[i].flags = flags;
        Ok(())
    }

    /// The first entry of `region` in the Maglev map. Regions are below the
    /// map's capacity in tables, whose product with the table size was
    /// checked to fit a `u32` when the map was sized
    /// ([`crate::config::sizing::Sizing::new`]); saturating, so a broken invariant
    /// gives an out-of-range offset that the map write refuses, never a
    /// wrapped one that overwrites another table.
    fn offset(&self, region: u32) -> u32 {
        region.saturating_mul(self.table_size)
    }

    /// Builds VIP `vip`'s table, writes it into a free region and points the
    /// VIP at it; the old region is freed. Clears the VIP's
    /// [`VIP_F_CONNS_MATCH_TABLE`] first.
    fn publish_table(&mut self, vip: usize) -> Result<(), BalancerError> {
        self.conns_changed(vip)?;
        self.write_table(vip)
    }

    /// [`Self::publish_table`] without touching the VIP's flows' flag.
    fn write_table(&mut self, vip: usize) -> Result<(), BalancerError> {
        let result = self.write_table_now(vip);
        // The grace before a walk counts from when the table is out.
        self.vips[vip].changed_at = Instant::now();
        result
    }

    fn write_table_now(&mut self, vip: usize) -> Result<(), BalancerError> {
        let table = self.table(vip);
        let new_region = if table.is_empty() {
            None
        } else {
            let region = self.regions.take("Maglev table regions")?;
            if let Err(e) = self.maps.write_table(self.offset(region), &table) {
                self.regions.give(region);
                return Err(e.into());
            }
            Some(region)
        };
        let old = std::mem::replace(&mut self.vips[vip].region, new_region);
        if let Err(e) = self.write_vip(vip) {
            self.vips[vip].region = old;
            if let Some(r) = new_region {
                self.regions.give(r);
            }
            return Err(e);
        }
        self.vips[vip].published = Some(self.vips[vip].members());
        // A packet that read the old offset just before the update may still
        // be reading the old region: it goes to the back of the free queue,
        // so every other free region (at least the spares) is written first,
        // each after a table build (milliseconds), before it is rewritten.
        if let Some(old) = old {
            self.regions.give(old);
        }
        Ok(())
    }

    /// Where backend id `id` is: (VIP index, backend index).
    pub fn find_backend(&self, id: u32) -> Option<(usize, usize)> {
        self.vips
            .iter()
            .enumerate()
            .find_map(|(v, vip)| vip.backends.iter().position(|b| b.id == id).map(|b| (v, b)))
    }

    /// Records a health-check result for backend `backend` of VIP `vip`
    /// (indices into [`Self::vips`] and its backends). When the state
    /// changes, writes the backend's flags and republishes the VIP's table.
    /// Returns whether anything changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_health(
        &mut self,
        vip: usize,
        backend: usize,
        healthy: bool,
    ) -> Result<bool, BalancerError> {
        let b = &self.vips[vip].backends[backend];
        if b.healthy == healthy {
            return Ok(false);
        }
        let (id, address, vip_id) = (b.id, b.address, self.vips[vip].id);
        // A backend usable again brings back its recorded flows.
        self.conns_changed(vip)?;
        let mut flags = BACKEND_F_ACTIVE;
        if healthy {
            flags |= BACKEND_F_HEALTHY;
        }
        self.vips[vip].backends[backend].healthy = healthy;
        let result = self
            .maps
            .set_backend(
                id,
                &backend_value(address, flags, self.generations[id as usize], vip_id),
            )
            .map_err(BalancerError::from)
            .and_then(|()| {
                if self.table_changed(vip)? {
                    self.publish_table(vip)?;
                }
                Ok(())
            });
        if result.is_err() {
            self.vips[vip].backends[backend].healthy = !healthy;
        }
        result.map(|()| true)
    }

    /// Sets the weight of backend `backend` of VIP `vip` and republishes the
    /// VIP's table. Weight 0 drains: the backend takes no new flow, and flows
    /// in the connection table stay on it. Returns whether it changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_weight(
        &mut self,
        vip: usize,
        backend: usize,
        weight: u32,
    ) -> Result<bool, BalancerError> {
        let old = std::mem::replace(&mut self.vips[vip].backends[backend].weight, weight);
        if old == weight {
            return Ok(false);
        }
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends[backend].weight = old;
            return Err(e);
        }
        Ok(true)
    }

    /// Removes backend `backend` from VIP `vip`: the VIP's table is
    /// republished without it, then its entry is marked inactive (so flows
    /// in the connection table are hashed again) and its id freed.
    ///
    /// # Errors
    /// A map write fails.
    pub fn remove_backend(&mut self, vip: usize, backend: usize) -> Result<(), BalancerError> {
        let removed = self.vips[vip].backends.remove(backend);
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends.insert(backend, removed);
            return Err(e);
        }
        let vip_id = self.vips[vip].id;
        self.retire_backend(&removed, vip_id)
    }

    /// The map writer (for tests and for reading back).
    pub fn maps(&self) -> &M {
        &self.maps
    }
}

#[cfg(test)]
mod tests;
