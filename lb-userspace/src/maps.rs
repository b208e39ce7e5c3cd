//! Writing the load balancer's maps: a small trait, so the Maglev and backend
//! bookkeeping in [`crate::balancer`] is unit-tested without root, and its
//! implementation over aya's maps.

use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use lb_common::{
    AddrKey, Backend, ConnEvent, Counter, Globals, MAGLEV_MAP_FLAGS, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_CONN_STATS, MAP_GLOBALS, MAP_MAGLEV, MAP_SRC_ALLOW_V4, MAP_STATS,
    MAP_VIP_ADDRS, MAP_VIP_STATS, MAP_VIPS, Outcome, VipKey, VipValue,
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

/// The writes the agent makes to the load balancer's maps, and the reads it
/// needs to adopt maps filled by an earlier agent.
pub trait MapWriter {
    /// Replaces the single [`Globals`] entry.
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapWriteError>;
    /// Adds an allowed IPv4 source prefix.
    fn allow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError>;
    /// Removes an allowed IPv4 source prefix.
    fn disallow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError>;
    /// Inserts or replaces a VIP.
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError>;
    /// Removes a VIP.
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapWriteError>;
    /// Marks an address as carrying `count` VIPs; 0 removes the entry.
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError>;
    /// Writes backend `id`.
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError>;
    /// Writes `entries` into the Maglev map starting at index `offset`.
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError>;

    /// The [`Globals`] entry.
    fn globals(&self) -> Result<Globals, MapWriteError>;
    /// Every allowed IPv4 source prefix.
    fn allowed_v4(&self) -> Result<Vec<(Ipv4Addr, u8)>, MapWriteError>;
    /// Every VIP.
    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapWriteError>;
    /// Every VIP address with its VIP count.
    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapWriteError>;
    /// Every backend entry, free ones included, by id.
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError>;
    /// `len` entries of the Maglev map from index `offset`.
    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapWriteError>;
}

/// The Maglev map, written and read through a shared memory mapping
/// (`BPF_F_MMAPABLE`, see [`lb_common::MAGLEV_MAP_FLAGS`]): a table of
/// 65 537 entries is one pass over memory instead of 65 537 system calls.
/// The kernel lays array elements out every 8 bytes (`round_up(value_size,
/// 8)`), so entry `i` is the `u32` at byte `8 * i`.
pub struct MaglevMap {
    ptr: std::ptr::NonNull<u32>,
    entries: usize,
    mapped_len: usize,
    // Keeps the map alive as long as the mapping.
    _data: MapData,
}

/// `u32`s per array element in the mapping: elements are 8-byte aligned.
const ELEM_STRIDE: usize = 2;

// SAFETY: the mapping is owned by this value and only reached through `&self`
// / `&mut self`; the kernel side reads it concurrently by design.
unsafe impl Send for MaglevMap {}
unsafe impl Sync for MaglevMap {}

impl MaglevMap {
    /// Maps `data`, which must be the memory-mappable Maglev array.
    ///
    /// # Errors
    /// The map was not created memory-mappable (another layout), or mmap fails.
    pub fn new(data: MapData) -> Result<Self, MapWriteError> {
        let info = data.info().map_err(wrap(MAP_MAGLEV, "inspect"))?;
        let err = |msg: String| MapWriteError {
            map: MAP_MAGLEV,
            op: "mmap",
            source: MapError::IoError(std::io::Error::other(msg)),
        };
        if info.map_flags() & MAGLEV_MAP_FLAGS != MAGLEV_MAP_FLAGS || info.value_size() != 4 {
            return Err(err(format!(
                "flags {:#x} and value size {}: not a memory-mappable array of u32",
                info.map_flags(),
                info.value_size()
            )));
        }
        let entries = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mapped_len = (entries * ELEM_STRIDE * 4).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, of the size the
        // kernel allows for it (rounded up to pages); checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error().to_string()));
        }
        Ok(Self {
            ptr: std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| err("null mapping".into()))?,
            entries,
            mapped_len,
            _data: data,
        })
    }

    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, MapWriteError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.entries => Ok(start..end),
            _ => Err(MapWriteError {
                map: MAP_MAGLEV,
                op: "index",
                source: MapError::OutOfBounds {
                    index: offset,
                    max_entries: self.entries as u32,
                },
            }),
        }
    }

    /// The mapping as `u32`s: entry `i` at `ELEM_STRIDE * i`.
    fn as_slice(&self) -> &[u32] {
        // SAFETY: `entries` elements of 8 bytes are mapped at `ptr` for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.entries * ELEM_STRIDE) }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as above, and `&mut self` makes this the only userspace view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.entries * ELEM_STRIDE) }
    }

    /// Copies `entries` to index `offset` on.
    ///
    /// # Errors
    /// The range is outside the map.
    pub fn write(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError> {
        let range = self.range(offset, entries.len())?;
        let slots = &mut self.as_mut_slice()[range.start * ELEM_STRIDE..range.end * ELEM_STRIDE];
        for (slot, id) in slots.chunks_exact_mut(ELEM_STRIDE).zip(entries) {
            slot[0] = *id;
        }
        // Order the table before the VIP update that publishes it (that
        // update is a system call, itself a full barrier; this is belt and
        // braces).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// `len` entries from index `offset`.
    ///
    /// # Errors
    /// The range is outside the map.
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapWriteError> {
        let range = self.range(offset, len as usize)?;
        Ok(
            self.as_slice()[range.start * ELEM_STRIDE..range.end * ELEM_STRIDE]
                .iter()
                .step_by(ELEM_STRIDE)
                .copied()
                .collect(),
        )
    }
}

impl Drop for MaglevMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.mapped_len);
        }
    }
}

/// [`MapWriter`] over the maps of a loaded `xdp_lb` object, or of a pinned one.
pub struct AyaMaps {
    vips: HashMap<MapData, VipKey, VipValue>,
    vip_addrs: HashMap<MapData, AddrKey, u32>,
    maglev: MaglevMap,
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

/// Opens map `name` pinned in `dir` as type `T`.
///
/// # Errors
/// The pin is missing, or the map is of another type or key/value size.
pub fn open_pin<T>(dir: &Path, name: &'static str) -> Result<T, MapWriteError>
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
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let maglev = ebpf.take_map(MAP_MAGLEV).ok_or_else(|| MapWriteError {
            map: MAP_MAGLEV,
            op: "take",
            source: MapError::InvalidName {
                name: MAP_MAGLEV.to_string(),
            },
        })?;
        let aya::maps::Map::Array(maglev) = maglev else {
            return Err(MapWriteError {
                map: MAP_MAGLEV,
                op: "take",
                source: MapError::InvalidMapType { map_type: 0 },
            });
        };
        Ok(Self {
            vips: take(ebpf, MAP_VIPS)?,
            vip_addrs: take(ebpf, MAP_VIP_ADDRS)?,
            maglev: MaglevMap::new(maglev)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            allow_v4: take(ebpf, MAP_SRC_ALLOW_V4)?,
            globals: take(ebpf, MAP_GLOBALS)?,
        })
    }

    /// Opens the writable maps pinned in `dir` by an earlier agent.
    ///
    /// # Errors
    /// A pin is missing, or a map is of another type or size than this
    /// agent's (check [`pinned_layout`] first for a clearer message).
    pub fn from_pins(dir: &Path) -> Result<Self, MapWriteError> {
        let maglev =
            MapData::from_pin(dir.join(MAP_MAGLEV)).map_err(wrap(MAP_MAGLEV, "open pin"))?;
        Ok(Self {
            vips: open_pin(dir, MAP_VIPS)?,
            vip_addrs: open_pin(dir, MAP_VIP_ADDRS)?,
            maglev: MaglevMap::new(maglev)?,
            backends: open_pin(dir, MAP_BACKENDS)?,
            allow_v4: open_pin(dir, MAP_SRC_ALLOW_V4)?,
            globals: open_pin(dir, MAP_GLOBALS)?,
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
pub fn pinned_layout(dir: &Path) -> Result<Option<u32>, MapWriteError> {
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

    fn disallow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError> {
        self.allow_v4
            .remove(&Key::new(u32::from(prefix_len), addr.octets()))
            .map_err(wrap(MAP_SRC_ALLOW_V4, "remove"))
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError> {
        self.vips
            .insert(key, value, 0)
            .map_err(wrap(MAP_VIPS, "insert"))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapWriteError> {
        self.vips.remove(key).map_err(wrap(MAP_VIPS, "remove"))
    }

    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError> {
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

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.backends
            .set(id, backend, 0)
            .map_err(wrap(MAP_BACKENDS, "set"))
    }

    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError> {
        self.maglev.write(offset, entries)
    }

    fn globals(&self) -> Result<Globals, MapWriteError> {
        self.globals.get(&0, 0).map_err(wrap(MAP_GLOBALS, "get"))
    }

    fn allowed_v4(&self) -> Result<Vec<(Ipv4Addr, u8)>, MapWriteError> {
        self.allow_v4
            .keys()
            .map(|k| {
                k.map(|k| (Ipv4Addr::from(k.data()), k.prefix_len() as u8))
                    .map_err(wrap(MAP_SRC_ALLOW_V4, "iterate"))
            })
            .collect()
    }

    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapWriteError> {
        self.vips
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIPS, "iterate")))
            .collect()
    }

    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapWriteError> {
        self.vip_addrs
            .iter()
            .map(|r| r.map_err(wrap(MAP_VIP_ADDRS, "iterate")))
            .collect()
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.map(|b| (i as u32, b))
                    .map_err(wrap(MAP_BACKENDS, "iterate"))
            })
            .collect()
    }

    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapWriteError> {
        self.maglev.read(offset, len)
    }
}

/// In-memory [`MapWriter`] for tests: what the maps would hold, and how
/// many writes were made.
#[derive(Debug, Default, Clone)]
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
    /// Number of write calls of any kind so far.
    pub writes: usize,
}

impl MapWriter for FakeMaps {
    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.globals = *globals;
        Ok(())
    }
    fn allow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.allow_v4.push((addr, prefix_len));
        Ok(())
    }
    fn disallow_v4(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.allow_v4.retain(|&p| p != (addr, prefix_len));
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.vips.insert(*key, *value);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.vips.remove(key);
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapWriteError> {
        self.writes += 1;
        if count == 0 {
            self.vip_addrs.remove(key);
        } else {
            self.vip_addrs.insert(*key, count);
        }
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapWriteError> {
        self.writes += 1;
        for (i, id) in entries.iter().enumerate() {
            self.maglev.insert(offset + i as u32, *id);
        }
        Ok(())
    }
    fn globals(&self) -> Result<Globals, MapWriteError> {
        Ok(self.globals)
    }
    fn allowed_v4(&self) -> Result<Vec<(Ipv4Addr, u8)>, MapWriteError> {
        Ok(self.allow_v4.clone())
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapWriteError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapWriteError> {
        Ok(self.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError> {
        Ok((0..lb_common::MAX_BACKENDS)
            .map(|id| (id, self.backends.get(&id).copied().unwrap_or_default()))
            .collect())
    }
    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapWriteError> {
        Ok((offset..offset + len)
            .map(|i| self.maglev.get(&i).copied().unwrap_or(0))
            .collect())
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
    pub fn from_pins(dir: &Path) -> Result<Self, MapWriteError> {
        Ok(Self {
            outcomes: open_pin(dir, MAP_STATS)?,
            vips: open_pin(dir, MAP_VIP_STATS)?,
            backends: open_pin(dir, MAP_BACKEND_STATS)?,
            conns: open_pin(dir, MAP_CONN_STATS)?,
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
