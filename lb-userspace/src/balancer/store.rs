//! The reads and writes the balancer makes to the load balancer's maps:
//! [`MapStore`], a small trait, so the Maglev and backend bookkeeping is
//! unit-tested without root ([`super::fake`] in tests), and implemented over
//! aya's maps by the data plane (`AyaMaps`).

use aya::maps::MapError;
use ipnet::IpNet;
use lb_common::{AddrKey, Backend, Globals, VipKey, VipValue};

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map} failed: {source}")]
pub struct MapStoreError {
    /// Map name.
    pub map: &'static str,
    /// What was being done (`insert`, `remove`, `take`, …).
    pub op: &'static str,
    /// aya's error.
    #[source]
    pub source: MapError,
}

/// Maps aya's error of operation `op` on map `map` to a [`MapStoreError`],
/// for `map_err`.
pub(crate) fn wrap(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapStoreError {
    move |source| MapStoreError { map, op, source }
}

/// The writes the agent makes to the load balancer's maps, and the reads it
/// needs to adopt maps filled by an earlier agent.
pub trait MapStore {
    /// Replaces the single [`Globals`] entry.
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapStoreError>;
    /// Adds an allowed source prefix (host bits clear), of either family.
    fn allow(&mut self, net: IpNet) -> Result<(), MapStoreError>;
    /// Removes an allowed source prefix.
    fn disallow(&mut self, net: IpNet) -> Result<(), MapStoreError>;
    /// Allows source prefix `net` for VIP `vip_id` (its own list).
    fn allow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError>;
    /// Removes source prefix `net` from VIP `vip_id`'s own list.
    fn disallow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError>;
    /// Inserts or replaces a VIP.
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapStoreError>;
    /// Removes a VIP.
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapStoreError>;
    /// Writes VIP id `id`'s entry of [`lb_common::MAP_VIP_FLAGS`].
    fn set_vip_flags(&mut self, id: u32, flags: u32) -> Result<(), MapStoreError>;
    /// Every entry of [`lb_common::MAP_VIP_FLAGS`], by VIP id.
    fn vip_flags(&self) -> Result<Vec<u32>, MapStoreError>;
    /// Marks an address as carrying `count` VIPs; 0 removes the entry.
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapStoreError>;
    /// Writes word `index` of the VIP-address filter ([`lb_common::MAP_VIP_BLOOM`]).
    fn set_vip_bloom(&mut self, index: u32, bits: u64) -> Result<(), MapStoreError>;
    /// Every word of the VIP-address filter, [`lb_common::VIP_BLOOM_WORDS`] of them.
    fn vip_bloom(&self) -> Result<Vec<u64>, MapStoreError>;
    /// Writes word `index` of the source filter by /16 of IPv6 (`v6`) or
    /// IPv4 ([`lb_common::MAP_SRC_ALLOW6_16`], [`lb_common::MAP_SRC_ALLOW4_16`]).
    fn set_allow16(&mut self, v6: bool, index: u32, bits: u64) -> Result<(), MapStoreError>;
    /// Every word of the source filter by /16 of IPv6 (`v6`) or IPv4,
    /// [`lb_common::ALLOW16_WORDS`] of them.
    fn allow16(&self, v6: bool) -> Result<Vec<u64>, MapStoreError>;
    /// Writes backend `id`.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapStoreError>;
    /// Writes the port backend `id` serves its NAT VIP on
    /// ([`lb_common::MAP_BACKEND_PORTS`], host order; 0 in DSR).
    fn set_backend_port(&mut self, id: u32, port: u32) -> Result<(), MapStoreError>;
    /// What backend `id`'s entry of [`lb_common::MAP_BACKEND_PORTS`] holds.
    fn backend_port(&self, id: u32) -> Result<u32, MapStoreError>;
    /// This node's SNAT addresses and ports as the map holds them.
    fn nat_sources(&self) -> Result<lb_common::NatSources, MapStoreError>;
    /// Zeroes VIP id `id`'s counters (traffic, refusals, NAT replies) on
    /// every CPU: done when the id is given to a new VIP, so its counters
    /// start at 0 instead of going on from the VIP that had it.
    fn reset_vip_counters(&mut self, id: u32) -> Result<(), MapStoreError>;
    /// Zeroes backend id `id`'s counters (traffic, NAT replies) on every
    /// CPU, when the id is given to a new backend.
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapStoreError>;
    /// Writes this node's SNAT addresses and ports
    /// ([`lb_common::MAP_NAT_SOURCES`]).
    fn set_nat_sources(&mut self, sources: &lb_common::NatSources) -> Result<(), MapStoreError>;
    /// Writes `entries` into the Maglev map starting at index `offset`.
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapStoreError>;

    /// The [`Globals`] entry.
    fn globals(&self) -> Result<Globals, MapStoreError>;
    /// Every allowed source prefix, both families.
    fn allowed(&self) -> Result<Vec<IpNet>, MapStoreError>;
    /// Every prefix of every VIP's own list, with its VIP id.
    fn allowed_vip(&self) -> Result<Vec<(u32, IpNet)>, MapStoreError>;
    /// Every VIP.
    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapStoreError>;
    /// Every VIP address with its VIP count.
    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapStoreError>;
    /// Every backend entry, free ones included, by id.
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapStoreError>;
    /// `len` entries of the Maglev map from index `offset`.
    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapStoreError>;
}
