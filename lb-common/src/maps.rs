//! Map names, capacities, and the layouts of their keys and values.
//!
//! The XDP programs use these names in `#[map(name = …)]` and the agent uses
//! them to find the maps; capacities marked "set at load" are placeholders in
//! the object that the agent overrides from the configuration.

/// VIP table: [`VipKey`] -> [`VipValue`], hash map of [`MAX_VIPS`] entries.
pub const MAP_VIPS: &str = "LB_VIPS";
/// Addresses that carry at least one VIP: [`AddrKey`] -> `u32` (number of VIPs
/// on it), hash map of [`MAX_VIPS`] entries. Lets the program apply the source
/// filter and the fragment rule before it has parsed ports.
pub const MAP_VIP_ADDRS: &str = "LB_VIP_ADDRS";
/// Maglev tables: array of `u32` backend ids, `regions × table_size` entries
/// (set at load). A VIP's table is the region starting at
/// [`VipValue::table_offset`]; the agent writes a new table into a free region
/// and then points the VIP at it, so a reader never sees a half-written table.
pub const MAP_MAGLEV: &str = "LB_MAGLEV";
/// Creation flags of [`MAP_MAGLEV`]: `BPF_F_MMAPABLE` (kernel 5.5+), so the
/// agent writes tables through a shared mapping instead of one system call
/// per entry.
pub const MAGLEV_MAP_FLAGS: u32 = 1 << 10;
/// Backends: array of [`Backend`] indexed by backend id, [`MAX_BACKENDS`] entries.
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// Next hops the agent resolved for the backends: array of [`CachedNextHop`]
/// indexed by backend id, [`MAX_BACKENDS`] entries. `xdp_lb` uses a valid
/// entry instead of `bpf_fib_lookup`, and falls back to the lookup when the
/// entry is empty or stale.
pub const MAP_NEXTHOPS: &str = "LB_NEXTHOPS";
/// Allowed IPv4 source prefixes: LPM trie of `[u8; 4]` -> `u32` (unused value
/// 1), [`MAX_SOURCE_PREFIXES`] entries.
pub const MAP_SRC_ALLOW_V4: &str = "LB_SRC_ALLOW4";
/// The IPv4 source filter by /16, in front of [`MAP_SRC_ALLOW_V4`]: array
/// of [`ALLOW16_WORDS`] `u64`, two bits per /16 of the IPv4 space
/// ([`crate::rules::allow16_slot`]): [`ALLOW16_WHOLE`] when an allowed
/// prefix of length 16 or less covers it, else [`ALLOW16_PART`] when an
/// allowed prefix lies inside it (the trie decides), else neither (denied).
/// With the default private ranges (/8, /10, /12, /16) every source is
/// decided by one array read, which the verifier inlines, instead of a trie
/// walk.
pub const MAP_SRC_ALLOW4_16: &str = "LB_SRC_ALLOW4_16";
/// The IPv6 source filter by its first 16 bits, in front of
/// [`MAP_SRC_ALLOW_V6`]: as [`MAP_SRC_ALLOW4_16`] (the default fc00::/7
/// covers 512 whole slots).
pub const MAP_SRC_ALLOW6_16: &str = "LB_SRC_ALLOW6_16";
/// Words of [`MAP_SRC_ALLOW4_16`] and [`MAP_SRC_ALLOW6_16`]: 2^16 slots of
/// 2 bits (16 KiB).
pub const ALLOW16_WORDS: u32 = (1 << 16) * 2 / 64;
/// A /16 covered by an allowed prefix (see [`MAP_SRC_ALLOW4_16`]).
pub const ALLOW16_WHOLE: u64 = 1;
/// A /16 holding a longer allowed prefix: the trie decides.
pub const ALLOW16_PART: u64 = 2;
/// Data-plane settings: array of one [`crate::Globals`].
pub const MAP_GLOBALS: &str = "LB_GLOBALS";
/// Per-outcome and per-connection-table-event counters: per-CPU array of
/// [`crate::Counter`], [`crate::STAT_ENTRIES`] entries indexed by
/// [`crate::stat_index`] (outcome, event): one update per packet for both.
pub const MAP_STATS: &str = "LB_STATS";
/// Per-VIP counters: per-CPU array of [`crate::Counter`] indexed by VIP id,
/// [`MAX_VIPS`] entries.
pub const MAP_VIP_STATS: &str = "LB_VIP_STATS";
/// Per-backend counters: per-CPU array of [`crate::Counter`] indexed by
/// backend id, [`MAX_BACKENDS`] entries.
pub const MAP_BACKEND_STATS: &str = "LB_BE_STATS";
/// Connection table: LRU hash of [`FlowKey`] -> [`ConnValue`], capacity
/// `conntrack.max_entries` (set at load).
pub const MAP_CONNS: &str = "LB_CONNS";
/// Which addresses may carry a VIP: array of [`VIP_BLOOM_WORDS`] `u64`, a
/// bit per [`crate::rules::vip_bloom_bit`] of each VIP address (a Bloom
/// filter with one hash). A clear bit means "no VIP on this address", so
/// most traffic that is not for a VIP costs `xdp_lb` no hash lookup, and
/// VIP traffic only the VIP lookup; a set bit is confirmed in
/// [`MAP_VIP_ADDRS`] wherever the answer drops or answers the packet.
pub const MAP_VIP_BLOOM: &str = "LB_VIP_BLOOM";
/// Words of [`MAP_VIP_BLOOM`]: 4096 x 64 = 2^18 bits (32 KiB); with the
/// most VIP addresses [`MAX_VIPS`] allows, under 1 % of other addresses
/// find their bit set.
pub const VIP_BLOOM_WORDS: u32 = 1 << (VIP_BLOOM_BITS_LOG2 - 6);
/// Bits of [`MAP_VIP_BLOOM`], as a power of two.
pub const VIP_BLOOM_BITS_LOG2: u32 = 18;
/// Backend side: VIPs this host serves, [`AddrKey`] -> `u32` (unused value 1),
/// hash map of [`MAX_VIPS`] entries.
pub const MAP_DECAP_VIPS: &str = "DECAP_VIPS";
/// Backend side: this host's own addresses, the outer destinations it accepts,
/// [`AddrKey`] -> `u32` (unused value 1), hash map of [`MAX_LOCAL_ADDRS`] entries.
pub const MAP_DECAP_LOCAL: &str = "DECAP_LOCAL";
/// Backend side: `lb decap`'s settings, array of one `u32`: the GUE port
/// (0: GUE not decapsulated).
pub const MAP_DECAP_CONFIG: &str = "DECAP_CONFIG";
/// Outer IPv4 sources `xdp_decap` takes tunnels from (the load balancers'
/// addresses): LPM trie `[u8; 4]` -> `u32` (unused value). Filled by `lb
/// decap` (`--lb PREFIX`; by default the private ranges).
pub const MAP_DECAP_SOURCES4: &str = "DECAP_SOURCES4";
/// Likewise for outer IPv6 sources: LPM trie `[u8; 16]` -> `u32`.
pub const MAP_DECAP_SOURCES6: &str = "DECAP_SOURCES6";
/// Prefixes each of [`MAP_DECAP_SOURCES4`] and [`MAP_DECAP_SOURCES6`] holds.
pub const MAX_DECAP_SOURCES: u32 = 256;
/// Per-VIP source lists: LPM trie keyed by [`VipSourceKey`] (VIP id, then
/// IPv4 source) -> `u32` (unused value 1), [`MAX_VIP_SOURCE_PREFIXES`]
/// entries. One lookup tells whether a source is in a VIP's own `allow`.
pub const MAP_SRC_ALLOW_VIP4: &str = "LB_SRC_ALLOW_VIP4";
/// Per-VIP refused packets (source not in the VIP's own `allow`): per-CPU
/// array of [`crate::Counter`] indexed by VIP id, [`MAX_VIPS`] entries.
pub const MAP_VIP_DROPS: &str = "LB_VIP_DROPS";
/// Per-CPU token bucket of ICMP "too big" generation: array of one
/// [`TokenBucket`].
pub const MAP_ICMP_BUCKET: &str = "LB_ICMP_BUCKET";
/// Per-CPU token bucket of connection-table inserts (new flows recorded,
/// [`crate::Globals::max_new_per_cpu`] per second): array of one [`TokenBucket`].
pub const MAP_CONN_BUCKET: &str = "LB_CONN_BUCKET";
/// Per-CPU array of [`crate::FLOW_CACHE_SLOTS`] [`crate::FlowCacheEntry`]: each CPU's
/// direct-mapped copies of the connection-table entries it used lately, so
/// an established flow's packet costs an array read instead of a hash
/// lookup of its 40-byte key. Pinned with the other maps, and kept by an
/// agent that adopts or upgrades the data plane when its pin is there (not
/// required for adoption).
pub const MAP_FLOW_CACHE: &str = "LB_FLOW_CACHE";
/// Allowed IPv6 source prefixes: LPM trie `[u8; 16]` -> `u32` (unused value
/// 1), [`MAX_SOURCE_PREFIXES`] entries.
pub const MAP_SRC_ALLOW_V6: &str = "LB_SRC_ALLOW6";
/// Per-VIP IPv6 source lists: LPM trie keyed by [`VipSourceKey6`],
/// [`MAX_VIP_SOURCE_PREFIXES`] entries.
pub const MAP_SRC_ALLOW_VIP6: &str = "LB_SRC_ALLOW_VIP6";

/// Most VIPs one data plane holds; VIP ids are `0..MAX_VIPS`.
pub const MAX_VIPS: u32 = 1024;
/// Most backend entries one data plane holds; backend ids are
/// `0..MAX_BACKENDS`. One entry per (VIP, backend) pair.
pub const MAX_BACKENDS: u32 = 16384;
/// Most allowed source prefixes per family.
pub const MAX_SOURCE_PREFIXES: u32 = 1024;
/// Most local addresses the decapsulation program accepts as outer destination.
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Most prefixes over all VIPs' own `allow` lists.
pub const MAX_VIP_SOURCE_PREFIXES: u32 = 16384;
/// Largest Maglev table size the agent accepts (a prime, as Katran's largest).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

// The layout's fingerprint, checked on adoption, is
// `crate::layout::LAYOUT_FINGERPRINT`: computed from these types, never
// bumped by hand.

/// Key of [`MAP_VIPS`]: a VIP's address, port and protocol. 20 bytes, aligned
/// to 4 (so `xdp_lb` builds it with word stores).
/// `port` 0 is the wildcard (every port of that address and protocol).
/// IPv4 addresses use the first 4 bytes of `addr`, the rest zero. Callers
/// zero the whole key before filling it, or hash lookups miss.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Address, network byte order.
    pub addr: [u8; 16],
    /// Port, network byte order; 0 = every port.
    pub port: [u8; 2],
    /// IANA protocol number ([`crate::PROTO_TCP`] or [`crate::PROTO_UDP`]).
    pub proto: u8,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

impl VipKey {
    /// The key of an IPv4 VIP; `port` in host byte order.
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr: AddrKey::v4(addr).addr,
            port: port.to_be_bytes(),
            proto,
            family: crate::FAMILY_V4,
        }
    }

    /// The key of an IPv6 VIP; `port` in host byte order.
    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            proto,
            family: crate::FAMILY_V6,
        }
    }
}

/// Flags of every VIP by id: array of `u32`, [`MAX_VIPS`] entries: the
/// VIP's [`VipValue::flags`] with [`VIP_LIVE`] while the id is in use (and
/// [`VIP_SHADOWED`]), 0 when it is free. An established flow reaches its
/// VIP through its backend's [`Backend::vip_id`] and this array (an
/// inlined array read) instead of the [`MAP_VIPS`] hash lookup. Written by
/// the agent after the VIPs of a reload.
pub const MAP_VIP_FLAGS: &str = "LB_VIP_FLAGS";
/// In [`MAP_VIP_FLAGS`] only: the VIP id is in use.
pub const VIP_LIVE: u32 = 1 << 31;
/// In [`MAP_VIP_FLAGS`] only: a port-0 VIP with a VIP of a given port on
/// the same address and protocol. Its established flows are looked up by
/// address, port and protocol like new ones, so the VIP their packets match
/// (its own `allow` list, its counters) decides, as the VIP lookup would.
pub const VIP_SHADOWED: u32 = 1 << 30;

/// Value of [`MAP_VIPS`]. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Index into [`MAP_VIP_STATS`], `< MAX_VIPS`.
    pub vip_id: u32,
    /// First entry of this VIP's Maglev table in [`MAP_MAGLEV`].
    pub table_offset: u32,
    /// Number of entries of the table (a prime, `M` in the Maglev paper);
    /// 0 when the VIP has no usable backend.
    pub table_size: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<VipValue>() == 16);

/// [`VipValue::flags`]: pass packets to the kernel, rather than drop them,
/// when the VIP has no usable backend (`on_no_backend = "pass"`).
pub const VIP_F_PASS_ON_NO_BACKEND: u32 = 1;
/// [`VipValue::flags`]: the VIP has its own `allow` list in
/// [`MAP_SRC_ALLOW_VIP4`]; a source must be in it too.
pub const VIP_F_OWN_ALLOW: u32 = 2;
/// [`VipValue::flags`]: every usable entry of the connection table for a
/// flow of this VIP names the backend the VIP's current Maglev table names
/// for it. A TCP SYN then takes the Maglev choice without looking the
/// connection table up ([`crate::ConnEvent::SynDirect`]): the flow's first
/// packet that is not a SYN meets the same backend, recorded or not. The
/// agent sets it on a VIP's first table (its backends are new, so no entry
/// can name them) and after a walk of the connection table finds no entry
/// that disagrees (entries of unhealthy backends included: they are usable
/// again once their backend recovers); it clears it before any change that
/// could make one disagree (a new table, a backend usable again, a port VIP
/// removed over a port-0 VIP). Without it a SYN looks its flow up, so a
/// client that reuses the 5-tuple of a finished flow recorded before the
/// table changed is not split between two backends.
pub const VIP_F_CONNS_MATCH_TABLE: u32 = 4;
/// [`VipValue::flags`]: `mode = "nat"` (docs/datapath.md, "NAT modes"): the VIP's packets are
/// translated (SNAT address and port -> backend:port) by `xdp_nat_v4` or
/// `xdp_nat_v6`, not encapsulated.
pub const VIP_F_NAT: u32 = 8;
/// [`VipValue::flags`]: `mode = "dnat"`: client -> backend:port, the
/// client's address kept.
pub const VIP_F_DNAT: u32 = 16;
/// Either NAT mode.
pub const VIP_F_NAT_MODES: u32 = VIP_F_NAT | VIP_F_DNAT;

/// Data of an LPM key of [`MAP_SRC_ALLOW_VIP4`]: the VIP id (big-endian, so
/// it is the leading 32 bits of every prefix) then the IPv4 source. A
/// VIP's prefix `a/n` is stored with prefix length `32 + n`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipSourceKey {
    /// VIP id, big-endian.
    pub vip_id: [u8; 4],
    /// IPv4 source address (or prefix), network byte order.
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<VipSourceKey>() == 8);

impl VipSourceKey {
    /// The key data for `addr` in VIP `vip_id`'s list.
    pub const fn v4(vip_id: u32, addr: [u8; 4]) -> Self {
        Self {
            vip_id: vip_id.to_be_bytes(),
            addr,
        }
    }
}

/// Data of an LPM key of [`MAP_SRC_ALLOW_VIP6`]: the VIP id (big-endian)
/// then the IPv6 source; a VIP's prefix `a/n` has prefix length `32 + n`.
/// 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipSourceKey6 {
    /// VIP id, big-endian.
    pub vip_id: [u8; 4],
    /// IPv6 source address (or prefix), network byte order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<VipSourceKey6>() == 20);

impl VipSourceKey6 {
    /// The key data for `addr` in VIP `vip_id`'s list.
    pub const fn new(vip_id: u32, addr: [u8; 16]) -> Self {
        Self {
            vip_id: vip_id.to_be_bytes(),
            addr,
        }
    }
}

/// Value of [`MAP_ICMP_BUCKET`]: a token bucket kept in nanoseconds of
/// credit (see [`crate::rules::take_token`]). 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit in nanoseconds, at most one second's worth.
    pub credit_ns: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 16);

/// An address, keying [`MAP_VIP_ADDRS`], [`MAP_DECAP_VIPS`] and
/// [`MAP_DECAP_LOCAL`]. 20 bytes; IPv4 in the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// Address, network byte order.
    pub addr: [u8; 16],
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AddrKey>() == 20);

impl AddrKey {
    /// The key of an IPv4 address.
    #[inline(always)]
    pub const fn v4(addr: [u8; 4]) -> Self {
        Self::from_words([u32::from_ne_bytes(addr), 0, 0, 0], crate::FAMILY_V4)
    }

    /// The key from the address as four native-order words: built as five
    /// 4-byte stores. Filling a zeroed byte array instead compiles, in the
    /// XDP program, to calls of a byte-by-byte `memset`.
    #[inline(always)]
    const fn from_words(addr: [u32; 4], family: u8) -> Self {
        let words = [
            addr[0],
            addr[1],
            addr[2],
            addr[3],
            u32::from_ne_bytes([family, 0, 0, 0]),
        ];
        // SAFETY: AddrKey is 20 bytes of plain data (asserted above), any
        // bit pattern is valid.
        unsafe { core::mem::transmute::<[u32; 5], Self>(words) }
    }

    /// The key of an IPv6 address.
    #[inline(always)]
    pub const fn v6(addr: [u8; 16]) -> Self {
        let a = addr;
        Self::from_words(
            [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ],
            crate::FAMILY_V6,
        )
    }
}

/// Value of [`MAP_BACKENDS`]: where to send a VIP's flows. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address, network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`]; 0 for a free entry.
    pub family: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Id of the VIP this entry belongs to (ids are per (VIP, backend)):
    /// `xdp_lb` finds an established flow's VIP by it ([`MAP_VIP_FLAGS`]),
    /// the agent adopts pinned maps by it after a restart.
    pub vip_id: u16,
    /// Bumped each time the id is given to another backend, so a stale
    /// reference (a connection-table entry) can tell.
    pub generation: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// [`Backend::flags`]: the backend is in its VIP's set.
pub const BACKEND_F_ACTIVE: u8 = 1;
/// [`Backend::flags`]: the backend passes its health check.
pub const BACKEND_F_HEALTHY: u8 = 2;

/// Value of [`MAP_NEXTHOPS`]: where packets to one backend go, as the agent
/// resolved it from the kernel's routes and neighbours (a "route get" of the
/// backend's address, then the next hop's neighbour entry). 24 bytes.
///
/// Valid when `ifindex` is not 0 and `generation` equals the backend
/// entry's [`Backend::generation`]: an id given to another backend, or an
/// entry the agent emptied (no route, no usable neighbour), sends packets
/// through `bpf_fib_lookup` again, which handles those cases.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedNextHop {
    /// The [`Backend::generation`] this was resolved for.
    pub generation: u32,
    /// Egress interface index; 0: no cached next hop.
    pub ifindex: u32,
    /// MTU toward the backend, bytes (the route's, else the interface's):
    /// a larger outer packet takes the "too big" rule.
    pub mtu: u16,
    /// MAC of the egress interface.
    pub smac: [u8; 6],
    /// MAC of the next hop (gateway, or the backend on its link).
    pub dmac: [u8; 6],
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CachedNextHop>() == 24);

/// Key of [`MAP_CONNS`]: a flow's 5-tuple. 40 bytes, aligned to 8 (so
/// `xdp_lb` compares two keys as five words); IPv4 addresses in the first 4
/// bytes of each address, the rest zero. Zero the key before filling it, or
/// lookups miss.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, network byte order.
    pub src: [u8; 16],
    /// Destination (VIP) address, network byte order.
    pub dst: [u8; 16],
    /// Source port, network byte order.
    pub sport: [u8; 2],
    /// Destination port, network byte order.
    pub dport: [u8; 2],
    /// IANA protocol number.
    pub proto: u8,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40 && align_of::<FlowKey>() == 8);

impl FlowKey {
    /// The key of an IPv4 flow; ports in network byte order.
    #[inline(always)]
    pub const fn v4(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> Self {
        Self {
            src: AddrKey::v4(src).addr,
            dst: AddrKey::v4(dst).addr,
            sport,
            dport,
            proto,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    /// The key of a flow of either family, addresses as in map keys.
    #[inline(always)]
    pub const fn new(
        family: u8,
        src: [u8; 16],
        dst: [u8; 16],
        sport: [u8; 2],
        dport: [u8; 2],
        proto: u8,
    ) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        }
    }

    /// The flow's [`crate::flow_hash`]: what its Maglev slot, its IPv6 flow
    /// label and its GUE source port come from.
    #[inline(always)]
    pub const fn hash(&self) -> u32 {
        crate::flow_hash(
            self.family,
            &self.src,
            &self.dst,
            self.sport,
            self.dport,
            self.proto,
        )
    }

    /// The flow's slot in a flow cache ([`MAP_FLOW_CACHE`]), below
    /// [`crate::FLOW_CACHE_SLOTS`]: the key's five 8-byte words folded by XOR and
    /// spread by one multiplication (Fibonacci hashing, Knuth TAOCP vol. 3
    /// section 6.4), the top 13 bits. A few instructions where the flow
    /// hash (MurmurHash3: two multiplications per 4-byte word, a dependent
    /// chain through the words, two more to finish) costs about 7 ns per
    /// packet; a copy keeps the flow hash for what needs it.
    #[inline(always)]
    pub const fn cache_slot(&self) -> u32 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        const BITS: u32 = crate::FLOW_CACHE_SLOTS.trailing_zeros();
        // SAFETY: a FlowKey is 40 bytes of plain data aligned to 8.
        let w = unsafe { &*(self as *const Self).cast::<[u64; 5]>() };
        let folded = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
        (folded.wrapping_mul(GOLDEN) >> (64 - BITS)) as u32
    }
}

/// Value of [`MAP_CONNS`]: the backend a flow was given. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    /// Backend id (index into [`MAP_BACKENDS`]).
    pub backend_id: u32,
    /// [`Backend::generation`] when the flow was given the backend: a
    /// different generation means the id now names another backend.
    pub generation: u32,
}
const _: () = assert!(size_of::<ConnValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    /// `aya::Pod` for map types: plain bytes to read and write.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: `#[repr(C)]`, only integers and byte arrays, no
                // implicit padding (each size is asserted beside the type).
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    pod!(
        super::VipKey,
        super::VipValue,
        super::AddrKey,
        super::CachedNextHop,
        super::Backend,
        crate::Globals,
        super::FlowKey,
        super::ConnValue,
        crate::Counter,
        super::VipSourceKey,
        super::TokenBucket,
        super::VipSourceKey6,
        crate::NatEntry,
        crate::NatSources,
        crate::NatHandoff,
    );
}
