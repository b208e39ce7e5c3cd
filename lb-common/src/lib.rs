//! What the XDP programs and the agent must agree on: map names and
//! capacities, map key and value layouts, counter indices, and the flow hash.
//!
//! Every map type is `#[repr(C)]` with explicit padding fields and a
//! compile-time size check, multi-byte network fields are big-endian byte
//! arrays (alignment 1, no byte-order guessing), and nothing here uses `bool`,
//! enums or `Option` inside a map type. With the `user` feature the types
//! implement `aya::Pod` so the agent can read and write them.
#![no_std]

pub mod bench;
pub mod csum;
pub mod flow_cache;
pub mod globals;
pub mod hash;
pub mod layout;
pub mod maps;
pub mod nat;
pub mod progs;
pub mod rules;
pub mod stats;

pub use bench::*;
pub use flow_cache::*;
pub use globals::*;
pub use hash::{flow_hash, flow_hash_v4, flow_hash_v6, maglev_permutation, maglev_slot};
pub use layout::LAYOUT_FINGERPRINT;
pub use maps::*;
pub use nat::*;
pub use progs::*;
pub use stats::{
    ConnEvent, Counter, NO_CONN_EVENT, NatEvent, Outcome, STAT_ENTRIES, STAT_SLOTS, stat_index,
    xdp_action,
};

/// Address family code used in map keys and values for IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family code used in map keys and values for IPv6.
pub const FAMILY_V6: u8 = 6;

/// IANA protocol number of IPv6-in-IP encapsulation (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
/// IANA protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// IANA protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IANA protocol number of IPv4-in-IPv4 encapsulation (RFC 2003).
pub const PROTO_IPIP: u8 = 4;
