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
    GLOBAL_F_READY, GLOBAL_F_SCOPE_ALL, Globals, LAYOUT_FINGERPRINT, MAX_BACKENDS,
    MAX_VIP_SOURCE_PREFIXES, MAX_VIPS, VIP_BLOOM_WORDS, VIP_F_CONNS_MATCH_TABLE, VIP_F_OWN_ALLOW,
    VIP_F_PASS_ON_NO_BACKEND, VIP_LIVE, VIP_SHADOWED, VipKey, VipValue,
    rules::{allow16_mark, maglev_member, vip_bloom_bit},
};

mod adopt;
mod apply;
mod backends;
mod conns;
#[cfg(test)]
pub mod fake;
mod filters;
mod ids;
mod state;
pub mod store;
mod tables;
mod walks;

pub use conns::{
    CONNS_GRACE, ConnsCheck, ConnsVerdict, WALK_MAX_INTERVAL, WALK_MIN_INTERVAL, WalkSchedule,
};
use ids::IdPool;
use ipnet::IpNet;
pub use state::{
    BackendState, Changes, NextHopTarget, Sources, VipState, addr_key, backend_address,
    backend_name, vip_key,
};
use state::{backend_port, backend_value, own_allow, vip_flags};
pub use store::{MapStore, MapStoreError};

use crate::{
    config::{Config, EncapKind, FilterScope, OnNoBackend, Vip, VipMode, sizing},
    maglev,
};

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
    /// `LB_NAT_SOURCES`, as in the map.
    nat_sources: lb_common::NatSources,
    /// Changes counted for [`VipState::epoch`].
    epochs: u64,
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
            nat_sources: lb_common::NatSources::default(),
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

    /// Where backend id `id` is: (VIP index, backend index).
    pub fn find_backend(&self, id: u32) -> Option<(usize, usize)> {
        self.vips
            .iter()
            .enumerate()
            .find_map(|(v, vip)| vip.backends.iter().position(|b| b.id == id).map(|b| (v, b)))
    }

    /// The map writer (for tests and for reading back).
    pub fn maps(&self) -> &M {
        &self.maps
    }
}

#[cfg(test)]
mod tests;
