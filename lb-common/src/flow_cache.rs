//! Each CPU's flow cache ([`crate::MAP_FLOW_CACHE`]): its size, how long
//! a copy serves, and the entry.

use crate::{ConnValue, FlowKey};

/// Slots of [`crate::MAP_FLOW_CACHE`] per CPU: a power of two. 8192 slots of 64
/// bytes are 512 KiB per CPU.
pub const FLOW_CACHE_SLOTS: u32 = 1 << 13;

/// Longest a [`FlowCacheEntry`] serves its flow, in seconds: the agent
/// moves [`crate::Globals::conns_epoch`] on this often, so a flow's next packet
/// reads its connection-table entry at least this often, which keeps the
/// entry's place in the LRU (a flow too slow to reach
/// [`FLOW_CACHE_REFRESH`] packets would otherwise look idle to it, and be
/// evicted from a full table while it lives).
pub const FLOW_CACHE_MAX_AGE_SECS: u64 = 10;

/// Uses of a [`FlowCacheEntry`] before `xdp_lb` reads the flow's
/// connection-table entry again (which refreshes its place in the LRU and
/// takes in whatever changed it).
pub const FLOW_CACHE_REFRESH: u32 = 32;

/// Value of [`crate::MAP_FLOW_CACHE`]: one CPU's copy of a connection-table entry,
/// in the slot of its flow ([`FlowKey::cache_slot`]), with the flow's hash
/// (so that a packet the copy serves computes no MurmurHash3). Only
/// `xdp_lb` reads and writes it. 64 bytes.
///
/// A copy serves a packet of its flow (not a SYN, not an ICMP error) while
/// `epoch` is [`crate::Globals::conns_epoch`], `hits` is below
/// [`FLOW_CACHE_REFRESH`] and its backend is still usable with the same
/// generation; a TCP SYN of the flow that looks the flow up (its VIP's
/// [`crate::VIP_F_CONNS_MATCH_TABLE`] clear) drops this CPU's copy.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    /// The flow (all zero in an unused slot, which no flow's key is: its
    /// family is never 0).
    pub key: FlowKey,
    /// Its connection-table entry as read (or as written) by this CPU.
    pub conn: ConnValue,
    /// [`crate::Globals::conns_epoch`] as the packet that made the copy read it.
    pub epoch: u32,
    /// Packets the copy served since it was made.
    pub hits: u32,
    /// The flow's [`FlowKey::hash`] (GUE source port, IPv6 flow label).
    pub flow_hash: u32,
    /// Zero.
    pub _reserved: u32,
}
const _: () = assert!(size_of::<FlowCacheEntry>() == 64);
