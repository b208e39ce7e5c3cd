//! The data plane's settings, one entry of [`crate::MAP_GLOBALS`] that the
//! agent writes and every program reads: [`Globals`] and its flags.

/// Value of [`crate::MAP_GLOBALS`] (one entry). 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Outer source address of IPv4 encapsulation, network byte order.
    pub encap_src_v4: [u8; 4],
    /// `GLOBAL_F_*` bits.
    pub flags: u32,
    /// Outer source address of IPv6 encapsulation, network byte order.
    pub encap_src_v6: [u8; 16],
    /// [`crate::LAYOUT_FINGERPRINT`] of the agent that filled the maps.
    pub layout_version: u32,
    /// Maglev table size `M` of every VIP. Only the agent reads it: to
    /// adopt pinned maps after a restart.
    pub table_size: u32,
    /// Largest outer packet toward backends in bytes (`encap.mtu`); 0: the
    /// egress interface's MTU (from `bpf_fib_lookup`).
    pub encap_mtu: u32,
    /// ICMP "too big" messages generated per second per CPU
    /// (`icmp.too_big_per_cpu`); 0: never.
    pub too_big_per_cpu: u32,
    /// Destination UDP port of GUE packets (`encap.gue_port`), host order;
    /// used with [`GLOBAL_F_GUE`].
    pub gue_port: u32,
    /// New flows recorded in the connection table per second per CPU
    /// (`conntrack.max_new_per_cpu`); above it a new flow keeps its Maglev
    /// choice unrecorded (`conntrack_limited`).
    pub max_new_per_cpu: u32,
    /// The connection-table epoch: the agent increases it (wrapping) when
    /// copies in the flow caches ([`crate::MAP_FLOW_CACHE`]) may no longer match
    /// the connection table (before it lets SYNs skip the table after a
    /// walk); a copy made under another epoch is not used.
    pub conns_epoch: u32,
    /// Zero.
    pub _reserved: u32,
}
const _: () = assert!(size_of::<Globals>() == 56);

/// [`Globals::flags`]: apply the source filter to every packet on the
/// interface (`scope = "all"`), not only to packets for VIP addresses.
pub const GLOBAL_F_SCOPE_ALL: u32 = 1;
/// [`Globals::flags`]: the agent has filled the maps; until then every packet
/// is passed.
pub const GLOBAL_F_READY: u32 = 2;
/// [`Globals::flags`]: encapsulate in GUE (UDP to [`Globals::gue_port`],
/// the inner IP packet directly after the UDP header) instead of IP-in-IP.
pub const GLOBAL_F_GUE: u32 = 4;
/// [`Globals::flags`]: a VIP is in a NAT mode: packets `xdp_lb` would pass
/// are looked up as replies to translations (`xdp_nat_reply_v4`/`_v6`).
pub const GLOBAL_F_NAT: u32 = 8;
/// [`Globals::flags`]: a VIP is in `dnat` mode: replies come addressed to
/// clients, on any port; without it only packets to a SNAT port are
/// looked up.
pub const GLOBAL_F_DNAT: u32 = 16;
