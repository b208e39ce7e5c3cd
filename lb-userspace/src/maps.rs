//! Writing the load balancer's maps: a small trait, so the Maglev and backend
//! bookkeeping in [`crate::balancer`] is unit-tested without root, and its
//! implementation over aya's maps.

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use lb_common::{
    AddrKey, Backend, ConnEvent, Counter, Globals, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONN_STATS,
    MAP_GLOBALS, MAP_MAGLEV, MAP_SRC_ALLOW_V4, MAP_STATS, MAP_VIP_ADDRS, MAP_VIP_STATS, MAP_VIPS,
    Outcome, VipKey, VipValue,
};

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map} failed: {source}")]
pub struct MapWriteError {
    /// Map name.
    pub map: &'static str,
    /// What was being done (`insert`, `remove`, `take`, …).
    pub op: &'static str,
    /// aya's error.
    #[source]
    pub source: MapError,
}

fn wrap(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapWriteError {
    move |source| MapWriteError { map, op, source }
}

/// The writes the agent makes to the load balancer's maps.
pub trait MapWriter {
    /// Replaces the single [`Globals`] entry.
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapWriteError>;
    /// Adds an allowed IPv4 source prefix.
    fn allow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError>;
    /// Inserts or replaces a VIP.
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError>;
    /// Marks an address as carrying `count` VIPs.
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError>;
    /// Writes backend `id`.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError>;
    /// Writes `entries` into the Maglev map starting at index `offset`.
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError>;
}

/// [`MapWriter`] over the maps of a loaded `xdp_lb` object.
pub struct AyaMaps {
    vips: HashMap<MapData, VipKey, VipValue>,
    vip_addrs: HashMap<MapData, AddrKey, u32>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    allow_v4: LpmTrie<MapData, [u8; 4], u32>,
    globals: Array<MapData, Globals>,
}

/// Takes map `name` out of a loaded object as type `T`.
///
/// # Errors
/// The map is missing or of another type.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapWriteError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| MapWriteError {
        map: name,
        op: "take",
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(wrap(name, "take"))
}

impl AyaMaps {
    /// Takes the writable maps out of a loaded object.
    ///
    /// # Errors
    /// A map is missing or of another type than expected.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            vips: take(ebpf, MAP_VIPS)?,
            vip_addrs: take(ebpf, MAP_VIP_ADDRS)?,
            maglev: take(ebpf, MAP_MAGLEV)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            allow_v4: take(ebpf, MAP_SRC_ALLOW_V4)?,
            globals: take(ebpf, MAP_GLOBALS)?,
        })
    }
}

impl MapWriter for AyaMaps {
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapWriteError> {
        self.globals
            .set(0, globals, 0)
            .map_err(wrap(MAP_GLOBALS, "set"))
    }

    fn allow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError> {
        self.allow_v4
            .insert(&Key::new(u32::from(prefix_len), addr.octets()), 1, 0)
            .map_err(wrap(MAP_SRC_ALLOW_V4, "insert"))
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError> {
        self.vips
            .insert(key, value, 0)
            .map_err(wrap(MAP_VIPS, "insert"))
    }

    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError> {
        self.vip_addrs
            .insert(key, count, 0)
            .map_err(wrap(MAP_VIP_ADDRS, "insert"))
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.backends
            .set(id, backend, 0)
            .map_err(wrap(MAP_BACKENDS, "set"))
    }

    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError> {
        for (i, id) in entries.iter().enumerate() {
            self.maglev
                .set(offset + i as u32, id, 0)
                .map_err(wrap(MAP_MAGLEV, "set"))?;
        }
        Ok(())
    }
}

/// In-memory [`MapWriter`] for tests: what the maps would hold.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// The globals entry.
    pub globals: Globals,
    /// Allowed prefixes.
    pub allow_v4: Vec<(Ipv4Addr, u8)>,
    /// VIPs.
    pub vips: StdHashMap<VipKey, VipValue>,
    /// VIP addresses.
    pub vip_addrs: StdHashMap<AddrKey, u32>,
    /// Backends by id.
    pub backends: StdHashMap<u32, Backend>,
    /// Maglev map entries by index.
    pub maglev: StdHashMap<u32, u32>,
}

impl MapWriter for FakeMaps {
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapWriteError> {
        self.globals = *globals;
        Ok(())
    }
    fn allow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError> {
        self.allow_v4.push((addr, prefix_len));
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError> {
        self.vips.insert(*key, *value);
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError> {
        self.vip_addrs.insert(*key, count);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError> {
        for (i, id) in entries.iter().enumerate() {
            self.maglev.insert(offset + i as u32, *id);
        }
        Ok(())
    }
}

/// Reads the per-CPU counters of a loaded (or pinned) data plane, summed over CPUs.
pub struct StatsReader {
    outcomes: PerCpuArray<MapData, Counter>,
    vips: PerCpuArray<MapData, Counter>,
    backends: PerCpuArray<MapData, Counter>,
    conns: PerCpuArray<MapData, Counter>,
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

impl StatsReader {
    /// Takes the counter maps out of a loaded object.
    ///
    /// # Errors
    /// A map is missing or of another type.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            outcomes: take(ebpf, MAP_STATS)?,
            vips: take(ebpf, MAP_VIP_STATS)?,
            backends: take(ebpf, MAP_BACKEND_STATS)?,
            conns: take(ebpf, MAP_CONN_STATS)?,
        })
    }

    /// Opens the counter maps pinned in `dir` (by `lb run`).
    ///
    /// # Errors
    /// A pin is missing or not a map of the expected type.
    pub fn from_pins(dir: &std::path::Path) -> Result<Self, MapWriteError> {
        fn open(
            dir: &std::path::Path,
            name: &'static str,
        ) -> Result<PerCpuArray<MapData, Counter>, MapWriteError> {
            let data = MapData::from_pin(dir.join(name)).map_err(wrap(name, "open pin"))?;
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(wrap(name, "open pin"))
        }
        Ok(Self {
            outcomes: open(dir, MAP_STATS)?,
            vips: open(dir, MAP_VIP_STATS)?,
            backends: open(dir, MAP_BACKEND_STATS)?,
            conns: open(dir, MAP_CONN_STATS)?,
        })
    }

    /// Counter of one outcome.
    pub fn outcome(&self, outcome: Outcome) -> Counter {
        sum(&self.outcomes, outcome as u32)
    }

    /// Counter of one connection-table event.
    pub fn conn(&self, event: ConnEvent) -> Counter {
        sum(&self.conns, event as u32)
    }

    /// Counter of VIP id `id`.
    pub fn vip(&self, id: u32) -> Counter {
        sum(&self.vips, id)
    }

    /// Counter of backend id `id`.
    pub fn backend(&self, id: u32) -> Counter {
        sum(&self.backends, id)
    }
}
