//! Every map of the XDP programs, in one place. Names and layouts come from
//! `lb_common::maps`; capacities marked "set at load" are overridden by the agent.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    ALLOW16_WORDS, AddrKey, Backend, CachedNextHop, ConnValue, Counter, FLOW_CACHE_SLOTS,
    FlowCacheEntry, FlowKey, Globals, MAX_BACKENDS, MAX_LOCAL_ADDRS, MAX_SOURCE_PREFIXES,
    MAX_VIP_SOURCE_PREFIXES, MAX_VIPS, NatEntry, NatEvent, NatHandoff, NatSources, STAT_ENTRIES,
    TokenBucket, VIP_BLOOM_WORDS, VipKey, VipSourceKey, VipSourceKey6, VipValue,
    rules::vip_bloom_bit,
};

/// The programs `xdp_lb` tail-calls (`lb_common::MAP_PROGS`): `xdp_lb_v6`
/// at `lb_common::PROG_LB_V6`. Filled by the agent.
#[map]
pub static LB_PROGS: ProgramArray = ProgramArray::with_max_entries(lb_common::PROG_SLOTS, 0);

/// VIP (address, port, protocol) -> its id, Maglev table and flags.
#[map]
pub static LB_VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(MAX_VIPS, 0);

/// VIP id -> its flags with `VIP_LIVE` and `VIP_SHADOWED` (0: a free id).
#[map]
pub static LB_VIP_FLAGS: Array<u32> = Array::with_max_entries(MAX_VIPS, 0);

/// Addresses that carry a VIP -> number of VIPs on them.
#[map]
pub static LB_VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Maglev tables of every VIP, back to back: backend ids. Size set at load.
/// Memory-mappable, so the agent writes a whole table with one copy.
#[map]
pub static LB_MAGLEV: Array<u32> = Array::with_max_entries(1, lb_common::MAGLEV_MAP_FLAGS);

/// Backend id -> backend address and state.
#[map]
pub static LB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> the next hop the agent resolved for it.
#[map]
pub static LB_NEXTHOPS: Array<CachedNextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Outer IPv4 sources `xdp_decap` takes tunnels from (`lb_common::MAP_DECAP_SOURCES4`).
#[map]
pub static DECAP_SOURCES4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(lb_common::MAX_DECAP_SOURCES, 0);

/// Outer IPv6 sources `xdp_decap` takes tunnels from (`lb_common::MAP_DECAP_SOURCES6`).
#[map]
pub static DECAP_SOURCES6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(lb_common::MAX_DECAP_SOURCES, 0);

/// Allowed IPv4 source prefixes.
#[map]
pub static LB_SRC_ALLOW4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 0);

/// The IPv4 source filter by /16 (two bits each), before `LB_SRC_ALLOW4`.
#[map]
pub static LB_SRC_ALLOW4_16: Array<u64> = Array::with_max_entries(ALLOW16_WORDS, 0);

/// The IPv6 source filter by first 16 bits (two bits each), before
/// `LB_SRC_ALLOW6`.
#[map]
pub static LB_SRC_ALLOW6_16: Array<u64> = Array::with_max_entries(ALLOW16_WORDS, 0);

/// Data-plane settings (one entry).
#[map]
pub static LB_GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Per-outcome and per-connection-table-event counters, indexed by
/// `lb_common::stat_index`.
#[map]
pub static LB_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STAT_ENTRIES, 0);

/// Per-VIP counters, indexed by VIP id.
#[map]
pub static LB_VIP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-backend counters, indexed by backend id.
#[map]
pub static LB_BE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Connection table: flow -> backend it was given. Size set at load.
#[map]
pub static LB_CONNS: LruHashMap<FlowKey, ConnValue> = LruHashMap::with_max_entries(1, 0);

/// A bit per VIP address (`lb_common::rules::vip_bloom_bit`).
#[map]
pub static LB_VIP_BLOOM: Array<u64> = Array::with_max_entries(VIP_BLOOM_WORDS, 0);

/// Backend side: VIPs served by this host.
#[map]
pub static DECAP_VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Backend side: this host's addresses (accepted outer destinations).
#[map]
pub static DECAP_LOCAL: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

/// Per-VIP `allow` lists: (VIP id, source) prefixes; see [`VipSourceKey`].
#[map]
pub static LB_SRC_ALLOW_VIP4: LpmTrie<VipSourceKey, u32> =
    LpmTrie::with_max_entries(MAX_VIP_SOURCE_PREFIXES, 1);

/// Backend side: settings of `lb decap`; entry 0 is the GUE port (0: no
/// GUE).
#[map]
pub static DECAP_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Allowed IPv6 source prefixes.
#[map]
pub static LB_SRC_ALLOW6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 1);

/// Per-VIP IPv6 `allow` lists: (VIP id, source) prefixes.
#[map]
pub static LB_SRC_ALLOW_VIP6: LpmTrie<VipSourceKey6, u32> =
    LpmTrie::with_max_entries(MAX_VIP_SOURCE_PREFIXES, 1);

/// Per-VIP packets refused by the VIP's own `allow` list, by VIP id.
#[map]
pub static LB_VIP_DROPS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-CPU token bucket of ICMP "too big" generation.
#[map]
pub static LB_ICMP_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU token bucket of connection-table inserts.
#[map]
pub static LB_CONN_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's direct-mapped copy of connection-table entries it used lately.
#[map]
pub static LB_FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// The NAT table (`lb_common::MAP_NAT`): both directions of every
/// translation. Size set at load.
#[map]
pub static LB_NAT: LruHashMap<FlowKey, NatEntry> = LruHashMap::with_max_entries(1, 0);

/// This node's SNAT addresses and ports (one entry).
#[map]
pub static LB_NAT_SOURCES: Array<NatSources> = Array::with_max_entries(1, 0);

/// Backend id -> the port it serves its VIP on (host order; 0: the VIP's).
#[map]
pub static LB_BE_PORTS: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// What `xdp_lb` hands the NAT programs (one per-CPU entry).
#[map]
pub static LB_NAT_HANDOFF: PerCpuArray<NatHandoff> = PerCpuArray::with_max_entries(1, 0);

/// NAT events, indexed by `NatEvent`.
#[map]
pub static LB_NAT_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(NatEvent::COUNT, 0);

/// Reply-direction counters of NAT VIPs, by VIP id.
#[map]
pub static LB_VIP_REPLY_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Reply-direction counters of NAT VIPs, by backend id.
#[map]
pub static LB_BE_REPLY_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Whether `key` may carry a VIP: its bit in `LB_VIP_BLOOM` is set. One
/// array read (inlined by the verifier), no hash lookup; `false` is exact,
/// `true` is confirmed by [`is_vip_address`] where it matters.
#[inline(always)]
pub fn may_be_vip_address(key: &AddrKey) -> bool {
    let (word, mask) = vip_bloom_bit(key);
    LB_VIP_BLOOM.get(word).is_some_and(|w| *w & mask != 0)
}

/// Whether `key` carries a VIP (`LB_VIP_ADDRS`, a hash lookup).
#[inline(always)]
pub fn is_vip_address(key: &AddrKey) -> bool {
    LB_VIP_ADDRS.get_ptr(key).is_some()
}

/// Adds one packet of `bytes` bytes to entry `index` of a per-CPU counter map.
/// An index past the map's end is ignored (the lookup fails).
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
