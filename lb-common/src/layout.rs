//! The shape of the data plane that kernel and agent share, in one list,
//! and its fingerprint. [`MAPS`] names every map the agent opens with its
//! kind, key and value sizes, flags and capacity; a test of the agent
//! checks the compiled object against it. [`LAYOUT_FINGERPRINT`] hashes
//! that list with the size and field offsets of every shared type and the
//! order of the counter enums, so any change that would make one agent
//! misread another's pinned maps (a field moved, a counter reordered, a map
//! retyped) changes it, and adoption is refused instead.

use core::mem::{offset_of, size_of};

use crate::{
    ALLOW16_WORDS, AddrKey, Backend, CachedNextHop, ConnEvent, ConnValue, Counter,
    FLOW_CACHE_SLOTS, FlowCacheEntry, FlowKey, Globals, MAGLEV_MAP_FLAGS, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_CONN_BUCKET, MAP_CONNS, MAP_DECAP_CONFIG, MAP_DECAP_LOCAL,
    MAP_DECAP_SOURCES4, MAP_DECAP_SOURCES6, MAP_DECAP_VIPS, MAP_FLOW_CACHE, MAP_GLOBALS,
    MAP_ICMP_BUCKET, MAP_MAGLEV, MAP_NEXTHOPS, MAP_PROGS, MAP_SRC_ALLOW_V4, MAP_SRC_ALLOW_V6,
    MAP_SRC_ALLOW_VIP4, MAP_SRC_ALLOW_VIP6, MAP_SRC_ALLOW4_16, MAP_SRC_ALLOW6_16, MAP_STATS,
    MAP_VIP_ADDRS, MAP_VIP_BLOOM, MAP_VIP_DROPS, MAP_VIP_FLAGS, MAP_VIP_STATS, MAP_VIPS,
    MAX_BACKENDS, MAX_DECAP_SOURCES, MAX_LOCAL_ADDRS, MAX_SOURCE_PREFIXES, MAX_VIP_SOURCE_PREFIXES,
    MAX_VIPS, Outcome, PROG_SLOTS, STAT_ENTRIES, TokenBucket, VIP_BLOOM_WORDS, VipKey,
    VipSourceKey, VipSourceKey6, VipValue,
};

/// Kind of a BPF map: its `bpf_map_type` number (include/uapi/linux/bpf.h).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_PROG_ARRAY`.
    ProgArray = 3,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray = 6,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
}

/// One map as both sides must declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Name in the object and pin name.
    pub name: &'static str,
    /// Kind.
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// `map_flags`.
    pub flags: u32,
    /// Capacity in the object; `None` when the agent sets it at load
    /// (Maglev tables and connection table, from the configuration).
    pub max_entries: Option<u32>,
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key_size: usize,
    value_size: usize,
    flags: u32,
    max_entries: Option<u32>,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key_size as u32,
        value_size: value_size as u32,
        flags,
        max_entries,
    }
}

/// `BPF_F_NO_PREALLOC`: LPM tries require it.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Every map of `xdp_lb` and `xdp_decap` (the benchmark's own maps are not
/// part of the layout).
pub const MAPS: [MapSpec; 35] = [
    spec(
        MAP_VIPS,
        MapKind::Hash,
        size_of::<VipKey>(),
        size_of::<VipValue>(),
        0,
        Some(MAX_VIPS),
    ),
    spec(
        MAP_VIP_ADDRS,
        MapKind::Hash,
        size_of::<AddrKey>(),
        4,
        0,
        Some(MAX_VIPS),
    ),
    spec(MAP_MAGLEV, MapKind::Array, 4, 4, MAGLEV_MAP_FLAGS, None),
    spec(
        MAP_BACKENDS,
        MapKind::Array,
        4,
        size_of::<Backend>(),
        0,
        Some(MAX_BACKENDS),
    ),
    spec(
        MAP_NEXTHOPS,
        MapKind::Array,
        4,
        size_of::<CachedNextHop>(),
        0,
        Some(MAX_BACKENDS),
    ),
    spec(
        MAP_SRC_ALLOW_V4,
        MapKind::LpmTrie,
        8,
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_SOURCE_PREFIXES),
    ),
    spec(
        MAP_GLOBALS,
        MapKind::Array,
        4,
        size_of::<Globals>(),
        0,
        Some(1),
    ),
    spec(
        MAP_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(STAT_ENTRIES),
    ),
    spec(
        MAP_VIP_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(MAX_VIPS),
    ),
    spec(
        MAP_BACKEND_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(MAX_BACKENDS),
    ),
    spec(
        MAP_CONNS,
        MapKind::LruHash,
        size_of::<FlowKey>(),
        size_of::<ConnValue>(),
        0,
        None,
    ),
    spec(
        MAP_SRC_ALLOW4_16,
        MapKind::Array,
        4,
        8,
        0,
        Some(ALLOW16_WORDS),
    ),
    spec(
        MAP_SRC_ALLOW6_16,
        MapKind::Array,
        4,
        8,
        0,
        Some(ALLOW16_WORDS),
    ),
    spec(MAP_VIP_FLAGS, MapKind::Array, 4, 4, 0, Some(MAX_VIPS)),
    spec(
        MAP_VIP_BLOOM,
        MapKind::Array,
        4,
        8,
        0,
        Some(VIP_BLOOM_WORDS),
    ),
    spec(
        MAP_DECAP_VIPS,
        MapKind::Hash,
        size_of::<AddrKey>(),
        4,
        0,
        Some(MAX_VIPS),
    ),
    spec(
        MAP_DECAP_LOCAL,
        MapKind::Hash,
        size_of::<AddrKey>(),
        4,
        0,
        Some(MAX_LOCAL_ADDRS),
    ),
    spec(
        MAP_SRC_ALLOW_VIP4,
        MapKind::LpmTrie,
        4 + size_of::<VipSourceKey>(),
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_VIP_SOURCE_PREFIXES),
    ),
    spec(
        MAP_VIP_DROPS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(MAX_VIPS),
    ),
    spec(
        MAP_ICMP_BUCKET,
        MapKind::PerCpuArray,
        4,
        size_of::<TokenBucket>(),
        0,
        Some(1),
    ),
    spec(
        MAP_CONN_BUCKET,
        MapKind::PerCpuArray,
        4,
        size_of::<TokenBucket>(),
        0,
        Some(1),
    ),
    spec(
        MAP_SRC_ALLOW_V6,
        MapKind::LpmTrie,
        4 + 16,
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_SOURCE_PREFIXES),
    ),
    spec(
        MAP_SRC_ALLOW_VIP6,
        MapKind::LpmTrie,
        4 + size_of::<VipSourceKey6>(),
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_VIP_SOURCE_PREFIXES),
    ),
    spec(MAP_DECAP_CONFIG, MapKind::Array, 4, 4, 0, Some(1)),
    spec(
        MAP_FLOW_CACHE,
        MapKind::PerCpuArray,
        4,
        size_of::<FlowCacheEntry>(),
        0,
        Some(FLOW_CACHE_SLOTS),
    ),
    spec(MAP_PROGS, MapKind::ProgArray, 4, 4, 0, Some(PROG_SLOTS)),
    spec(
        MAP_DECAP_SOURCES4,
        MapKind::LpmTrie,
        8,
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_DECAP_SOURCES),
    ),
    spec(
        MAP_DECAP_SOURCES6,
        MapKind::LpmTrie,
        20,
        4,
        BPF_F_NO_PREALLOC,
        Some(MAX_DECAP_SOURCES),
    ),
    spec(
        crate::MAP_NAT,
        MapKind::LruHash,
        size_of::<FlowKey>(),
        size_of::<crate::NatEntry>(),
        0,
        None,
    ),
    spec(
        crate::MAP_NAT_SOURCES,
        MapKind::Array,
        4,
        size_of::<crate::NatSources>(),
        0,
        Some(1),
    ),
    spec(
        crate::MAP_BACKEND_PORTS,
        MapKind::Array,
        4,
        4,
        0,
        Some(MAX_BACKENDS),
    ),
    spec(
        crate::MAP_NAT_HANDOFF,
        MapKind::PerCpuArray,
        4,
        size_of::<crate::NatHandoff>(),
        0,
        Some(1),
    ),
    spec(
        crate::MAP_NAT_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(crate::NatEvent::COUNT),
    ),
    spec(
        crate::MAP_VIP_REPLY_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(MAX_VIPS),
    ),
    spec(
        crate::MAP_BACKEND_REPLY_STATS,
        MapKind::PerCpuArray,
        4,
        size_of::<Counter>(),
        0,
        Some(MAX_BACKENDS),
    ),
];

/// FNV-1a (32 bits) of `bytes`, continuing from `hash`.
const fn fnv(mut hash: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

const fn fnv_u32s(mut hash: u32, values: &[usize]) -> u32 {
    let mut i = 0;
    while i < values.len() {
        hash = fnv(hash, &(values[i] as u32).to_le_bytes());
        i += 1;
    }
    hash
}

/// Sizes and field offsets of every shared map type, in a fixed order.
const SHAPES: [usize; 93] = [
    size_of::<VipKey>(),
    offset_of!(VipKey, addr),
    offset_of!(VipKey, port),
    offset_of!(VipKey, proto),
    offset_of!(VipKey, family),
    size_of::<VipValue>(),
    offset_of!(VipValue, vip_id),
    offset_of!(VipValue, table_offset),
    offset_of!(VipValue, table_size),
    offset_of!(VipValue, flags),
    size_of::<AddrKey>(),
    offset_of!(AddrKey, addr),
    offset_of!(AddrKey, family),
    size_of::<Backend>(),
    offset_of!(Backend, addr),
    offset_of!(Backend, family),
    offset_of!(Backend, flags),
    offset_of!(Backend, vip_id),
    offset_of!(Backend, generation),
    size_of::<CachedNextHop>(),
    offset_of!(CachedNextHop, generation),
    offset_of!(CachedNextHop, ifindex),
    offset_of!(CachedNextHop, mtu),
    offset_of!(CachedNextHop, smac),
    offset_of!(CachedNextHop, dmac),
    size_of::<FlowKey>(),
    offset_of!(FlowKey, src),
    offset_of!(FlowKey, dst),
    offset_of!(FlowKey, sport),
    offset_of!(FlowKey, dport),
    offset_of!(FlowKey, proto),
    offset_of!(FlowKey, family),
    size_of::<ConnValue>(),
    offset_of!(ConnValue, backend_id),
    offset_of!(ConnValue, generation),
    size_of::<Globals>(),
    offset_of!(Globals, encap_src_v4),
    offset_of!(Globals, flags),
    offset_of!(Globals, encap_src_v6),
    offset_of!(Globals, layout_version),
    offset_of!(Globals, table_size),
    offset_of!(Globals, encap_mtu),
    offset_of!(Globals, too_big_per_cpu),
    offset_of!(Globals, gue_port),
    offset_of!(Globals, max_new_per_cpu),
    offset_of!(Globals, conns_epoch),
    size_of::<VipSourceKey6>(),
    offset_of!(VipSourceKey6, vip_id),
    offset_of!(VipSourceKey6, addr),
    size_of::<VipSourceKey>(),
    offset_of!(VipSourceKey, vip_id),
    offset_of!(VipSourceKey, addr),
    size_of::<TokenBucket>(),
    offset_of!(TokenBucket, credit_ns),
    offset_of!(TokenBucket, last_ns),
    size_of::<Counter>(),
    offset_of!(Counter, packets),
    offset_of!(Counter, bytes),
    // Flag bits whose meaning both sides share.
    crate::BACKEND_F_ACTIVE as usize,
    crate::BACKEND_F_HEALTHY as usize,
    crate::VIP_F_PASS_ON_NO_BACKEND as usize,
    crate::VIP_F_OWN_ALLOW as usize,
    crate::VIP_F_CONNS_MATCH_TABLE as usize,
    crate::GLOBAL_F_SCOPE_ALL as usize,
    crate::GLOBAL_F_READY as usize,
    crate::GLOBAL_F_GUE as usize,
    crate::FAMILY_V4 as usize,
    size_of::<crate::NatEntry>(),
    offset_of!(crate::NatEntry, src),
    offset_of!(crate::NatEntry, dst),
    offset_of!(crate::NatEntry, sport),
    offset_of!(crate::NatEntry, dport),
    offset_of!(crate::NatEntry, flags),
    offset_of!(crate::NatEntry, vip_id),
    offset_of!(crate::NatEntry, backend_id),
    offset_of!(crate::NatEntry, generation),
    offset_of!(crate::NatEntry, last_seen),
    size_of::<crate::NatSources>(),
    offset_of!(crate::NatSources, v4),
    offset_of!(crate::NatSources, v6),
    offset_of!(crate::NatSources, v4_count),
    offset_of!(crate::NatSources, port_first),
    offset_of!(crate::NatSources, port_count),
    crate::VIP_F_NAT as usize,
    crate::VIP_F_DNAT as usize,
    crate::GLOBAL_F_NAT as usize,
    crate::GLOBAL_F_DNAT as usize,
    crate::NAT_F_REPLY as usize,
    crate::NAT_F_CLOSING as usize,
    crate::NAT_F_DNAT as usize,
    crate::NAT_F_ANSWERED as usize,
    crate::NAT_CLOCK_SHIFT as usize,
    crate::PROG_SLOTS as usize,
];

const fn fingerprint() -> u32 {
    let mut hash = fnv(0x811c_9dc5, b"lb layout");
    hash = fnv_u32s(hash, &SHAPES);
    let mut i = 0;
    while i < MAPS.len() {
        let m = &MAPS[i];
        hash = fnv(hash, m.name.as_bytes());
        hash = fnv_u32s(
            hash,
            &[
                m.kind as usize,
                m.key_size as usize,
                m.value_size as usize,
                m.flags as usize,
            ],
        );
        i += 1;
    }
    let mut i = 0;
    while i < Outcome::ALL.len() {
        hash = fnv(hash, Outcome::ALL[i].name().as_bytes());
        hash = fnv_u32s(hash, &[Outcome::ALL[i] as usize]);
        i += 1;
    }
    let mut i = 0;
    while i < ConnEvent::ALL.len() {
        hash = fnv(hash, ConnEvent::ALL[i].name().as_bytes());
        hash = fnv_u32s(hash, &[ConnEvent::ALL[i] as usize]);
        i += 1;
    }
    let mut i = 0;
    while i < crate::NatEvent::ALL.len() {
        hash = fnv(hash, crate::NatEvent::ALL[i].name().as_bytes());
        hash = fnv_u32s(hash, &[crate::NatEvent::ALL[i] as usize]);
        i += 1;
    }
    hash
}

/// Fingerprint of the layout ([`MAPS`], the shared types' sizes and field
/// offsets, the counter enums' order). The agent stores it in
/// [`Globals::layout_version`] and refuses pinned maps of another.
pub const LAYOUT_FINGERPRINT: u32 = fingerprint();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_every_part_of_the_layout() {
        let base = fingerprint();
        assert_eq!(base, LAYOUT_FINGERPRINT);
        // A field moved: the same sizes, another offset.
        let mut shapes = SHAPES;
        shapes.swap(2, 3);
        assert_ne!(
            fnv_u32s(fnv(0x811c_9dc5, b"lb layout"), &shapes),
            fnv_u32s(fnv(0x811c_9dc5, b"lb layout"), &SHAPES)
        );
        // Two counters swapped.
        let a = fnv(fnv(0, b"passed"), b"forwarded_tx");
        let b = fnv(fnv(0, b"forwarded_tx"), b"passed");
        assert_ne!(a, b);
    }

    #[test]
    fn map_names_are_unique() {
        for (i, a) in MAPS.iter().enumerate() {
            for b in &MAPS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }
}
