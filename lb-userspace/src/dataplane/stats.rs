//! Reading the per-CPU counters of a data plane, summed over CPUs.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lb_common::{
    ConnEvent, Counter, MAP_BACKEND_REPLY_STATS, MAP_BACKEND_STATS, MAP_NAT_STATS, MAP_STATS,
    MAP_VIP_DROPS, MAP_VIP_REPLY_STATS, MAP_VIP_STATS, NO_CONN_EVENT, NatEvent, Outcome,
    stat_index,
};

use super::maps::{counter_map, open_pin};
use crate::balancer::MapStoreError;

/// Reads the per-CPU counters of a loaded (or pinned) data plane, summed over CPUs.
pub struct StatsReader {
    /// Outcome x connection-table event ([`stat_index`]).
    outcomes: PerCpuArray<MapData, Counter>,
    vips: PerCpuArray<MapData, Counter>,
    vip_drops: PerCpuArray<MapData, Counter>,
    backends: PerCpuArray<MapData, Counter>,
    /// NAT events by [`NatEvent`].
    nat_events: PerCpuArray<MapData, Counter>,
    /// Reply-direction traffic of NAT VIPs, by VIP id and by backend id.
    vip_replies: PerCpuArray<MapData, Counter>,
    backend_replies: PerCpuArray<MapData, Counter>,
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Counter {
    let mut total = Counter::default();
    if let Ok(values) = map.get(&index, 0) {
        for c in values.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
    }
    total
}

/// The sum of `map`'s entries at `indices`, over CPUs.
fn sum_of(map: &PerCpuArray<MapData, Counter>, indices: impl Iterator<Item = u32>) -> Counter {
    indices.fold(Counter::default(), |total, index| {
        let c = sum(map, index);
        Counter {
            packets: total.packets + c.packets,
            bytes: total.bytes + c.bytes,
        }
    })
}

impl StatsReader {
    /// Opens the counter maps of a loaded object.
    ///
    /// # Errors
    /// A map is missing or of another type.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapStoreError> {
        // Handles of its own: the maps stay in the object, where the
        // agent's map writer finds them too.
        Ok(Self {
            outcomes: counter_map(ebpf, MAP_STATS)?,
            vips: counter_map(ebpf, MAP_VIP_STATS)?,
            vip_drops: counter_map(ebpf, MAP_VIP_DROPS)?,
            backends: counter_map(ebpf, MAP_BACKEND_STATS)?,
            nat_events: counter_map(ebpf, MAP_NAT_STATS)?,
            vip_replies: counter_map(ebpf, MAP_VIP_REPLY_STATS)?,
            backend_replies: counter_map(ebpf, MAP_BACKEND_REPLY_STATS)?,
        })
    }

    /// Opens the counter maps pinned in `dir` (by `lb run`).
    ///
    /// # Errors
    /// A pin is missing or not a map of the expected type.
    pub fn from_pins(dir: &Path) -> Result<Self, MapStoreError> {
        Ok(Self {
            outcomes: open_pin(dir, MAP_STATS)?,
            vips: open_pin(dir, MAP_VIP_STATS)?,
            vip_drops: open_pin(dir, MAP_VIP_DROPS)?,
            backends: open_pin(dir, MAP_BACKEND_STATS)?,
            nat_events: open_pin(dir, MAP_NAT_STATS)?,
            vip_replies: open_pin(dir, MAP_VIP_REPLY_STATS)?,
            backend_replies: open_pin(dir, MAP_BACKEND_REPLY_STATS)?,
        })
    }

    /// Counter of one outcome: its row of `LB_STATS`, every event.
    pub fn outcome(&self, outcome: Outcome) -> Counter {
        sum_of(
            &self.outcomes,
            (0..=NO_CONN_EVENT).map(|event| stat_index(outcome as u32, event)),
        )
    }

    /// Counter of one connection-table event: its column of `LB_STATS`,
    /// every outcome.
    pub fn conn(&self, event: ConnEvent) -> Counter {
        sum_of(
            &self.outcomes,
            Outcome::ALL
                .iter()
                .map(|&outcome| stat_index(outcome as u32, event as u32)),
        )
    }

    /// Counter of VIP id `id`.
    pub fn vip(&self, id: u32) -> Counter {
        sum(&self.vips, id)
    }

    /// Packets and bytes VIP `id` refused (source not in its own list).
    pub fn vip_refused(&self, id: u32) -> Counter {
        sum(&self.vip_drops, id)
    }

    /// Counter of backend id `id`.
    pub fn backend(&self, id: u32) -> Counter {
        sum(&self.backends, id)
    }

    /// Packets that met NAT event `event`.
    pub fn nat_event(&self, event: NatEvent) -> u64 {
        sum(&self.nat_events, event as u32).packets
    }

    /// Reply-direction traffic of NAT VIP id `id` (backends to clients).
    pub fn vip_replies(&self, id: u32) -> Counter {
        sum(&self.vip_replies, id)
    }

    /// Reply-direction traffic from backend id `id` of a NAT VIP.
    pub fn backend_replies(&self, id: u32) -> Counter {
        sum(&self.backend_replies, id)
    }
}
