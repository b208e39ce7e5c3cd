//! The load balancer's maps over aya: [`AyaMaps`], the implementation of
//! the balancer's [`MapStore`] (the Maglev map through
//! [`super::maglev_map`]).

use std::{borrow::BorrowMut, net::IpAddr, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use lb_common::{
    AddrKey, Backend, Counter, Globals, MAP_BACKEND_REPLY_STATS, MAP_BACKEND_STATS, MAP_BACKENDS,
    MAP_GLOBALS, MAP_MAGLEV, MAP_SRC_ALLOW_V4, MAP_SRC_ALLOW_V6, MAP_SRC_ALLOW_VIP4,
    MAP_SRC_ALLOW_VIP6, MAP_SRC_ALLOW4_16, MAP_SRC_ALLOW6_16, MAP_VIP_ADDRS, MAP_VIP_BLOOM,
    MAP_VIP_DROPS, MAP_VIP_FLAGS, MAP_VIP_REPLY_STATS, MAP_VIP_STATS, MAP_VIPS, VipKey,
    VipSourceKey, VipSourceKey6, VipValue,
    nat::{MAP_BACKEND_PORTS, MAP_NAT_SOURCES, NatSources},
};

use super::maglev_map::MaglevMap;
use crate::balancer::store::{MapStore, MapStoreError, wrap};

/// [`MapStore`] over the maps of a loaded `xdp_lb` object, or of a pinned one.
pub struct AyaMaps {
    vips: HashMap<MapData, VipKey, VipValue>,
    vip_addrs: HashMap<MapData, AddrKey, u32>,
    vip_bloom: Array<MapData, u64>,
    vip_flags: Array<MapData, u32>,
    allow16: Array<MapData, u64>,
    allow16_v6: Array<MapData, u64>,
    maglev: MaglevMap,
    backends: Array<MapData, Backend>,
    allow_v4: LpmTrie<MapData, [u8; 4], u32>,
    allow_v6: LpmTrie<MapData, [u8; 16], u32>,
    allow_vip_v4: LpmTrie<MapData, VipSourceKey, u32>,
    allow_vip_v6: LpmTrie<MapData, VipSourceKey6, u32>,
    globals: Array<MapData, Globals>,
    backend_ports: Array<MapData, u32>,
    nat_sources: Array<MapData, NatSources>,
    /// The per-CPU counters by VIP id and by backend id, reset when an id
    /// is given again (handles of their own: the counter reader holds the
    /// maps too).
    vip_counters: [PerCpuArray<MapData, Counter>; 3],
    backend_counters: [PerCpuArray<MapData, Counter>; 2],
}

/// The per-CPU counter maps by VIP id, and by backend id.
const VIP_COUNTERS: [&str; 3] = [MAP_VIP_STATS, MAP_VIP_DROPS, MAP_VIP_REPLY_STATS];
const BACKEND_COUNTERS: [&str; 2] = [MAP_BACKEND_STATS, MAP_BACKEND_REPLY_STATS];

/// A handle of its own on counter map `name` of a loaded object, which
/// stays in the object: the agent's writes (zeroing an id's counters) and
/// the counter reader each hold one, in either order.
///
/// # Errors
/// The map is missing, of another type, or its fd cannot be duplicated.
pub fn counter_map(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<MapData, Counter>, MapStoreError> {
    let missing = || MapStoreError {
        map: name,
        op: "find",
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    };
    let map = ebpf.map(name).ok_or_else(missing)?;
    let shared: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(map).map_err(wrap(name, "open"))?;
    let fd = shared
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| MapStoreError {
            map: name,
            op: "duplicate the fd of",
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
    let data = MapData::from_fd(fd).map_err(wrap(name, "open"))?;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(wrap(name, "open"))
}

/// Writes zero counters on every CPU at `id` of `map` (`name`).
fn zero(
    map: &mut PerCpuArray<MapData, Counter>,
    id: u32,
    name: &'static str,
) -> Result<(), MapStoreError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapStoreError {
        map: name,
        op: "count the CPUs for",
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: e,
        }),
    })?;
    let zeros =
        PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|e| MapStoreError {
            map: name,
            op: "build zeros for",
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
    map.set(id, zeros, 0).map_err(wrap(name, "zero"))
}

/// The LPM key of IPv4 prefix `net` in VIP `vip_id`'s own list: the VIP
/// id's 32 bits lead every prefix.
fn vip_source_key(vip_id: u32, net: Ipv4Net) -> Key<VipSourceKey> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        VipSourceKey::v4(vip_id, net.network().octets()),
    )
}

/// The LPM key of IPv6 prefix `net` in VIP `vip_id`'s own list.
fn vip_source_key6(vip_id: u32, net: Ipv6Net) -> Key<VipSourceKey6> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        VipSourceKey6::new(vip_id, net.network().octets()),
    )
}

/// Inserts prefix `net` (host bits cleared) into the trie of its family:
/// `v4` or `v6`, named `names` for errors (the source filter's, and
/// `xdp_decap`'s outer sources).
///
/// # Errors
/// The kernel refuses the insert (the trie is full).
pub fn insert_prefix<T4: BorrowMut<MapData>, T6: BorrowMut<MapData>>(
    v4: &mut LpmTrie<T4, [u8; 4], u32>,
    v6: &mut LpmTrie<T6, [u8; 16], u32>,
    net: IpNet,
    names: [&'static str; 2],
) -> Result<(), MapStoreError> {
    match net {
        IpNet::V4(n) => v4
            .insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                1,
                0,
            )
            .map_err(wrap(names[0], "insert")),
        IpNet::V6(n) => v6
            .insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                1,
                0,
            )
            .map_err(wrap(names[1], "insert")),
    }
}

/// A prefix read back from a trie (lengths come from the map: in range).
fn net(addr: IpAddr, len: u32) -> Option<IpNet> {
    IpNet::new(addr, len as u8).ok()
}

/// Takes map `name` out of a loaded object as type `T`.
///
/// # Errors
/// The map is missing or of another type.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapStoreError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| MapStoreError {
        map: name,
        op: "take",
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(wrap(name, "take"))
}

/// Opens map `name` pinned in `dir` as type `T`.
///
/// # Errors
/// The pin is missing, or the map is of another type or key/value size.
pub fn open_pin<T>(dir: &Path, name: &'static str) -> Result<T, MapStoreError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let data = MapData::from_pin(dir.join(name)).map_err(wrap(name, "open pin"))?;
    let map = aya::maps::Map::from_map_data(data).map_err(wrap(name, "open pin"))?;
    T::try_from(map).map_err(wrap(name, "open pin"))
}

impl AyaMaps {
    /// Takes the writable maps out of a loaded object.
    ///
    /// # Errors
    /// A map is missing or of another type than expected.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapStoreError> {
        let maglev = ebpf.take_map(MAP_MAGLEV).ok_or_else(|| MapStoreError {
            map: MAP_MAGLEV,
            op: "take",
            source: MapError::InvalidName {
                name: MAP_MAGLEV.to_string(),
            },
        })?;
        let aya::maps::Map::Array(maglev) = maglev else {
            return Err(MapStoreError {
                map: MAP_MAGLEV,
                op: "take",
                source: MapError::InvalidMapType { map_type: 0 },
            });
        };
        Ok(Self {
            vips: take(ebpf, MAP_VIPS)?,
            vip_addrs: take(ebpf, MAP_VIP_ADDRS)?,
            vip_bloom: take(ebpf, MAP_VIP_BLOOM)?,
            vip_flags: take(ebpf, MAP_VIP_FLAGS)?,
            allow16: take(ebpf, MAP_SRC_ALLOW4_16)?,
            allow16_v6: take(ebpf, MAP_SRC_ALLOW6_16)?,
            maglev: MaglevMap::new(maglev)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            allow_v4: take(ebpf, MAP_SRC_ALLOW_V4)?,
            allow_v6: take(ebpf, MAP_SRC_ALLOW_V6)?,
            allow_vip_v4: take(ebpf, MAP_SRC_ALLOW_VIP4)?,
            allow_vip_v6: take(ebpf, MAP_SRC_ALLOW_VIP6)?,
            globals: take(ebpf, MAP_GLOBALS)?,
            backend_ports: take(ebpf, MAP_BACKEND_PORTS)?,
            nat_sources: take(ebpf, MAP_NAT_SOURCES)?,
            vip_counters: [
                counter_map(ebpf, VIP_COUNTERS[0])?,
                counter_map(ebpf, VIP_COUNTERS[1])?,
                counter_map(ebpf, VIP_COUNTERS[2])?,
            ],
            backend_counters: [
                counter_map(ebpf, BACKEND_COUNTERS[0])?,
                counter_map(ebpf, BACKEND_COUNTERS[1])?,
            ],
        })
    }

    /// Opens the writable maps pinned in `dir` by an earlier agent.
    ///
    /// # Errors
    /// A pin is missing, or a map is of another type or size than this
    /// agent's (check [`pinned_layout`] first for a clearer message).
    pub fn from_pins(dir: &Path) -> Result<Self, MapStoreError> {
        let maglev =
            MapData::from_pin(dir.join(MAP_MAGLEV)).map_err(wrap(MAP_MAGLEV, "open pin"))?;
        Ok(Self {
            vips: open_pin(dir, MAP_VIPS)?,
            vip_addrs: open_pin(dir, MAP_VIP_ADDRS)?,
            vip_bloom: open_pin(dir, MAP_VIP_BLOOM)?,
            vip_flags: open_pin(dir, MAP_VIP_FLAGS)?,
            allow16: open_pin(dir, MAP_SRC_ALLOW4_16)?,
            allow16_v6: open_pin(dir, MAP_SRC_ALLOW6_16)?,
            maglev: MaglevMap::new(maglev)?,
            backends: open_pin(dir, MAP_BACKENDS)?,
            allow_v4: open_pin(dir, MAP_SRC_ALLOW_V4)?,
            allow_v6: open_pin(dir, MAP_SRC_ALLOW_V6)?,
            allow_vip_v4: open_pin(dir, MAP_SRC_ALLOW_VIP4)?,
            allow_vip_v6: open_pin(dir, MAP_SRC_ALLOW_VIP6)?,
            globals: open_pin(dir, MAP_GLOBALS)?,
            backend_ports: open_pin(dir, MAP_BACKEND_PORTS)?,
            nat_sources: open_pin(dir, MAP_NAT_SOURCES)?,
            vip_counters: [
                open_pin(dir, VIP_COUNTERS[0])?,
                open_pin(dir, VIP_COUNTERS[1])?,
                open_pin(dir, VIP_COUNTERS[2])?,
            ],
            backend_counters: [
                open_pin(dir, BACKEND_COUNTERS[0])?,
                open_pin(dir, BACKEND_COUNTERS[1])?,
            ],
        })
    }

    /// Capacity of the Maglev map, in entries.
    pub fn maglev_entries(&self) -> u32 {
        self.maglev.entries as u32
    }
}

/// The layout version stored by the agent that filled the maps pinned in
/// `dir` ([`Globals::layout_version`]), read without assuming this agent's
/// layout: `Ok(None)` when the globals entry has another size than this
/// agent's [`Globals`] (so another layout, older than version numbers or
/// newer).
///
/// # Errors
/// The globals pin is missing or unreadable.
pub fn pinned_layout(dir: &Path) -> Result<Option<u32>, MapStoreError> {
    let data = MapData::from_pin(dir.join(MAP_GLOBALS)).map_err(wrap(MAP_GLOBALS, "open pin"))?;
    let info = data.info().map_err(wrap(MAP_GLOBALS, "inspect"))?;
    if info.value_size() as usize != size_of::<Globals>() {
        return Ok(None);
    }
    let globals: Array<MapData, Globals> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(wrap(MAP_GLOBALS, "open pin"))?;
    let g = globals.get(&0, 0).map_err(wrap(MAP_GLOBALS, "get"))?;
    Ok(Some(g.layout_version))
}

impl MapStore for AyaMaps {
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapStoreError> {
        self.globals
            .set(0, globals, 0)
            .map_err(wrap(MAP_GLOBALS, "set"))
    }

    fn allow(&mut self, net: IpNet) -> Result<(), MapStoreError> {
        insert_prefix(
            &mut self.allow_v4,
            &mut self.allow_v6,
            net,
            [MAP_SRC_ALLOW_V4, MAP_SRC_ALLOW_V6],
        )
    }

    fn disallow(&mut self, net: IpNet) -> Result<(), MapStoreError> {
        match net {
            IpNet::V4(n) => self
                .allow_v4
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets()))
                .map_err(wrap(MAP_SRC_ALLOW_V4, "remove")),
            IpNet::V6(n) => self
                .allow_v6
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets()))
                .map_err(wrap(MAP_SRC_ALLOW_V6, "remove")),
        }
    }

    fn allow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError> {
        match net {
            IpNet::V4(n) => self
                .allow_vip_v4
                .insert(&vip_source_key(vip_id, n), 1, 0)
                .map_err(wrap(MAP_SRC_ALLOW_VIP4, "insert")),
            IpNet::V6(n) => self
                .allow_vip_v6
                .insert(&vip_source_key6(vip_id, n), 1, 0)
                .map_err(wrap(MAP_SRC_ALLOW_VIP6, "insert")),
        }
    }

    fn disallow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError> {
        match net {
            IpNet::V4(n) => self
                .allow_vip_v4
                .remove(&vip_source_key(vip_id, n))
                .map_err(wrap(MAP_SRC_ALLOW_VIP4, "remove")),
            IpNet::V6(n) => self
                .allow_vip_v6
                .remove(&vip_source_key6(vip_id, n))
                .map_err(wrap(MAP_SRC_ALLOW_VIP6, "remove")),
        }
    }

    fn allowed(&self) -> Result<Vec<IpNet>, MapStoreError> {
        let mut out = Vec::new();
        for k in self.allow_v4.keys() {
            let k = k.map_err(wrap(MAP_SRC_ALLOW_V4, "iterate"))?;
            out.extend(net(IpAddr::from(k.data()), k.prefix_len()));
        }
        for k in self.allow_v6.keys() {
            let k = k.map_err(wrap(MAP_SRC_ALLOW_V6, "iterate"))?;
            out.extend(net(IpAddr::from(k.data()), k.prefix_len()));
        }
        Ok(out)
    }

    fn allowed_vip(&self) -> Result<Vec<(u32, IpNet)>, MapStoreError> {
        let mut out = Vec::new();
        for k in self.allow_vip_v4.keys() {
            let k = k.map_err(wrap(MAP_SRC_ALLOW_VIP4, "iterate"))?;
            let d = k.data();
            out.extend(
                net(IpAddr::from(d.addr), k.prefix_len() - 32)
                    .map(|n| (u32::from_be_bytes(d.vip_id), n)),
            );
        }
        for k in self.allow_vip_v6.keys() {
            let k = k.map_err(wrap(MAP_SRC_ALLOW_VIP6, "iterate"))?;
            let d = k.data();
            out.extend(
                net(IpAddr::from(d.addr), k.prefix_len() - 32)
                    .map(|n| (u32::from_be_bytes(d.vip_id), n)),
            );
        }
        Ok(out)
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapStoreError> {
        self.vips
            .insert(key, value, 0)
            .map_err(wrap(MAP_VIPS, "insert"))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapStoreError> {
        self.vips.remove(key).map_err(wrap(MAP_VIPS, "remove"))
    }

    fn set_vip_flags(&mut self, id: u32, flags: u32) -> Result<(), MapStoreError> {
        self.vip_flags
            .set(id, flags, 0)
            .map_err(wrap(MAP_VIP_FLAGS, "set"))
    }

    fn vip_flags(&self) -> Result<Vec<u32>, MapStoreError> {
        self.vip_flags
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIP_FLAGS, "read")))
            .collect()
    }

    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapStoreError> {
        if count == 0 {
            return self
                .vip_addrs
                .remove(key)
                .map_err(wrap(MAP_VIP_ADDRS, "remove"));
        }
        self.vip_addrs
            .insert(key, count, 0)
            .map_err(wrap(MAP_VIP_ADDRS, "insert"))
    }

    fn set_vip_bloom(&mut self, index: u32, bits: u64) -> Result<(), MapStoreError> {
        self.vip_bloom
            .set(index, bits, 0)
            .map_err(wrap(MAP_VIP_BLOOM, "set"))
    }

    fn vip_bloom(&self) -> Result<Vec<u64>, MapStoreError> {
        self.vip_bloom
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIP_BLOOM, "read")))
            .collect()
    }

    fn set_allow16(&mut self, v6: bool, index: u32, bits: u64) -> Result<(), MapStoreError> {
        let (map, name) = if v6 {
            (&mut self.allow16_v6, MAP_SRC_ALLOW6_16)
        } else {
            (&mut self.allow16, MAP_SRC_ALLOW4_16)
        };
        map.set(index, bits, 0).map_err(wrap(name, "set"))
    }

    fn allow16(&self, v6: bool) -> Result<Vec<u64>, MapStoreError> {
        let (map, name) = if v6 {
            (&self.allow16_v6, MAP_SRC_ALLOW6_16)
        } else {
            (&self.allow16, MAP_SRC_ALLOW4_16)
        };
        map.iter().map(|r| r.map_err(wrap(name, "read"))).collect()
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapStoreError> {
        self.backends
            .set(id, backend, 0)
            .map_err(wrap(MAP_BACKENDS, "set"))
    }

    fn set_backend_port(&mut self, id: u32, port: u32) -> Result<(), MapStoreError> {
        self.backend_ports
            .set(id, port, 0)
            .map_err(wrap(MAP_BACKEND_PORTS, "set"))
    }

    fn backend_port(&self, id: u32) -> Result<u32, MapStoreError> {
        self.backend_ports
            .get(&id, 0)
            .map_err(wrap(MAP_BACKEND_PORTS, "get"))
    }

    fn reset_vip_counters(&mut self, id: u32) -> Result<(), MapStoreError> {
        for (map, name) in self.vip_counters.iter_mut().zip(VIP_COUNTERS) {
            zero(map, id, name)?;
        }
        Ok(())
    }

    fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapStoreError> {
        for (map, name) in self.backend_counters.iter_mut().zip(BACKEND_COUNTERS) {
            zero(map, id, name)?;
        }
        Ok(())
    }

    fn nat_sources(&self) -> Result<NatSources, MapStoreError> {
        self.nat_sources
            .get(&0, 0)
            .map_err(wrap(MAP_NAT_SOURCES, "get"))
    }

    fn set_nat_sources(&mut self, sources: &NatSources) -> Result<(), MapStoreError> {
        self.nat_sources
            .set(0, sources, 0)
            .map_err(wrap(MAP_NAT_SOURCES, "set"))
    }

    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapStoreError> {
        self.maglev.write(offset, entries)
    }

    fn globals(&self) -> Result<Globals, MapStoreError> {
        self.globals.get(&0, 0).map_err(wrap(MAP_GLOBALS, "get"))
    }

    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapStoreError> {
        self.vips
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIPS, "iterate")))
            .collect()
    }

    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapStoreError> {
        self.vip_addrs
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIP_ADDRS, "iterate")))
            .collect()
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapStoreError> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.map(|b| (i as u32, b))
                    .map_err(wrap(MAP_BACKENDS, "iterate"))
            })
            .collect()
    }

    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapStoreError> {
        self.maglev.read(offset, len)
    }
}
