//! The NAT modes (docs/datapath.md, "NAT modes"): the NAT table's maps and entries, the SNAT
//! port rule, the clock of the entries and the rule of their expiry,
//! written once for the XDP programs and the agent.
//!
//! ```text
//!  mode = "nat"   client C:c -> VIP:v   becomes  S:s -> B:b    (S:s a SNAT address and port)
//!                 B:b -> S:s            becomes  VIP:v -> C:c
//!  mode = "dnat"  client C:c -> VIP:v   becomes  C:c -> B:b
//!                 B:b -> C:c            becomes  VIP:v -> C:c  (the backend routes it via the LB)
//! ```
//!
//! A translation is two entries of [`MAP_NAT`], keyed by the packet's
//! 5-tuple as it arrives in each direction ([`crate::FlowKey`]): the
//! forward entry (client -> VIP) and the reply entry (backend -> SNAT
//! address or client). Each [`NatEntry`] holds what its direction's
//! packets become, so the entry of the other direction is its own key
//! with addresses and ports swapped ([`NatEntry::peer_key`]). The data
//! path writes an entry's [`NatEntry::last_seen`] and
//! [`NAT_F_CLOSING`] only for its own direction; the agent removes a
//! translation, both entries, once [`expired`] says so (the LRU is only
//! the last resort).

use crate::FlowKey;

/// The NAT table: LRU hash of [`FlowKey`] -> [`NatEntry`], two entries per
/// translation, capacity `2 x nat.max_entries` (set at load).
pub const MAP_NAT: &str = "LB_NAT";
/// This node's SNAT addresses and ports: array of one [`NatSources`].
pub const MAP_NAT_SOURCES: &str = "LB_NAT_SOURCES";
/// The port each backend serves its VIP on (`[[vip.backend]] port`):
/// array of `u32` (host order; 0 for a DSR VIP) indexed by backend id,
/// [`crate::MAX_BACKENDS`] entries. Read by the NAT programs only.
pub const MAP_BACKEND_PORTS: &str = "LB_BE_PORTS";
/// What `xdp_lb` hands the NAT program of its family with a new or
/// established NAT flow: per-CPU array of one [`NatHandoff`] (a program
/// runs to completion on its CPU, tail calls included).
pub const MAP_NAT_HANDOFF: &str = "LB_NAT_HANDOFF";
/// NAT events: per-CPU array of [`crate::Counter`] indexed by
/// [`crate::NatEvent`].
pub const MAP_NAT_STATS: &str = "LB_NAT_STATS";
/// Reply-direction packets of NAT VIPs, per VIP: per-CPU array of
/// [`crate::Counter`] indexed by VIP id, [`crate::MAX_VIPS`] entries.
pub const MAP_VIP_REPLY_STATS: &str = "LB_VIP_REPLY_STATS";
/// Reply-direction packets of NAT VIPs, per backend: per-CPU array of
/// [`crate::Counter`] indexed by backend id, [`crate::MAX_BACKENDS`]
/// entries.
pub const MAP_BACKEND_REPLY_STATS: &str = "LB_BE_REPLY_STATS";

/// Most SNAT addresses per family ([`NatSources`]).
pub const MAX_NAT_SOURCES: usize = 4;
/// SNAT ports a new `nat` flow tries before it is dropped
/// ([`crate::Outcome::DropNatNoPort`]): each try is one insert with
/// `BPF_NOEXIST`, so the data path stays bounded.
pub const SNAT_PORT_TRIES: u32 = 4;

/// Value of [`MAP_NAT_SOURCES`]: the SNAT addresses of this node and the
/// ports to use on them. 96 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSources {
    /// IPv4 SNAT addresses, network byte order; the first `v4_count` used.
    pub v4: [[u8; 4]; MAX_NAT_SOURCES],
    /// IPv6 SNAT addresses; the first `v6_count` used.
    pub v6: [[u8; 16]; MAX_NAT_SOURCES],
    /// IPv4 addresses in use, at most [`MAX_NAT_SOURCES`].
    pub v4_count: u32,
    /// IPv6 addresses in use, at most [`MAX_NAT_SOURCES`].
    pub v6_count: u32,
    /// First SNAT port (host order).
    pub port_first: u32,
    /// Ports from `port_first` on (0: no SNAT port, every `nat` flow is
    /// dropped).
    pub port_count: u32,
}
const _: () = assert!(size_of::<NatSources>() == 96);

/// Value of [`MAP_NAT`]: what one direction's packets of a translation
/// become. 56 bytes, aligned to 8.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// The packet's new source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// The packet's new destination address.
    pub dst: [u8; 16],
    /// The new source port, network byte order.
    pub sport: [u8; 2],
    /// The new destination port, network byte order.
    pub dport: [u8; 2],
    /// `NAT_F_*` bits.
    pub flags: u8,
    /// Zero.
    pub _pad: u8,
    /// The VIP's id.
    pub vip_id: u16,
    /// The backend's id (its counters, its next hop).
    pub backend_id: u32,
    /// The backend entry's [`crate::Backend::generation`] when translated.
    pub generation: u32,
    /// [`nat_clock`] of this direction's last packet (of the translation's
    /// creation, in a reply entry before the first reply).
    pub last_seen: u32,
    /// Zero.
    pub _reserved: u32,
}
const _: () = assert!(size_of::<NatEntry>() == 56);

/// [`NatEntry::flags`]: the reply direction's entry (backend -> SNAT
/// address or client).
pub const NAT_F_REPLY: u8 = 1;
/// [`NatEntry::flags`]: a TCP FIN or RST went this way.
pub const NAT_F_CLOSING: u8 = 2;
/// [`NatEntry::flags`]: a `dnat` translation (the client's address kept).
pub const NAT_F_DNAT: u8 = 4;
/// [`NatEntry::flags`], in a reply entry: the backend has answered.
pub const NAT_F_ANSWERED: u8 = 8;

impl NatEntry {
    /// The key of the other direction's entry: the packet this entry makes,
    /// answered (`key`: this entry's own key, for the protocol and family).
    #[inline(always)]
    pub const fn peer_key(&self, key: &FlowKey) -> FlowKey {
        FlowKey::new(
            key.family, self.dst, self.src, self.dport, self.sport, key.proto,
        )
    }
}

/// Value of [`MAP_NAT_HANDOFF`]: the flow and the backend `xdp_lb`
/// chose for a packet of a NAT VIP (the NAT program parses the frame
/// again: offsets from a map value would be unbounded for the verifier).
/// 64 bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatHandoff {
    /// The flow, client -> VIP.
    pub flow: FlowKey,
    /// The chosen backend's id.
    pub backend_id: u32,
    /// The flow's [`FlowKey::hash`].
    pub hash: u32,
    /// The connection-table event ([`crate::ConnEvent`] index, or
    /// [`crate::NO_CONN_EVENT`]), counted with the outcome.
    pub conn_event: u32,
    /// The VIP's `VIP_F_*` bits.
    pub vip_flags: u32,
    /// 1: the packet is an ICMP error about the flow (quoting the VIP's
    /// reply to the client), not one of the flow's packets.
    pub icmp_error: u32,
    /// Zero.
    pub _reserved: u32,
}
const _: () = assert!(size_of::<NatHandoff>() == 64);

/// Bits of nanoseconds dropped by [`nat_clock`].
pub const NAT_CLOCK_SHIFT: u32 = 30;

/// The clock of [`NatEntry::last_seen`]: `CLOCK_MONOTONIC` nanoseconds
/// (`bpf_ktime_get_ns`, which the agent reads with `clock_gettime`) in
/// units of 2^30 ns (1.07 s), never 0 (an entry's unused value). Coarse on
/// purpose: an entry is written when its unit changes, not per packet.
#[inline(always)]
pub const fn nat_clock(ns: u64) -> u32 {
    let t = (ns >> NAT_CLOCK_SHIFT) as u32;
    if t == 0 { 1 } else { t }
}

/// The SNAT port of try `attempt` (0 to [`SNAT_PORT_TRIES`] - 1) of a
/// flow of hash `hash`, in the `count` ports from `first` (host order):
/// spread by the hash, each try a fixed stride further (a prime, so
/// successive tries land far apart). `count` is not 0.
#[inline(always)]
pub const fn snat_port(first: u32, count: u32, hash: u32, attempt: u32) -> u16 {
    const STRIDE: u32 = 7919;
    let offset = (hash % count + (attempt * STRIDE) % count) % count;
    (first + offset) as u16
}

/// The SNAT address index of a flow of hash `hash` among `count`
/// addresses (not 0).
#[inline(always)]
pub const fn snat_source(hash: u32, count: u32) -> usize {
    // The hash's high bits: its low bits chose the port.
    ((hash >> 16) % count) as usize
}

/// How long translations live idle, in [`nat_clock`] units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTimeouts {
    /// An established TCP translation (`nat.tcp_timeout`).
    pub tcp: u32,
    /// A TCP translation that saw FIN or RST in either direction.
    pub tcp_closing: u32,
    /// A translation whose backend never answered (a SYN without
    /// SYN-ACK, a UDP request without a response).
    pub unanswered: u32,
    /// An answered UDP translation.
    pub udp: u32,
}

impl NatTimeouts {
    /// The timeouts for an established TCP idle time of `tcp_secs`
    /// seconds; the others are fixed: 10 s closing (as Cilium's
    /// `CT_CLOSE_TIMEOUT`), 60 s unanswered (Cilium's SYN timeout), 300 s
    /// UDP (IPVS's `udp` timeout).
    pub const fn new(tcp_secs: u64) -> Self {
        NatTimeouts {
            tcp: secs_to_clock(tcp_secs),
            tcp_closing: secs_to_clock(10),
            unanswered: secs_to_clock(60),
            udp: secs_to_clock(300),
        }
    }
}

/// Seconds as [`nat_clock`] units, rounded up.
pub const fn secs_to_clock(secs: u64) -> u32 {
    let ns = secs * 1_000_000_000;
    ns.div_ceil(1 << NAT_CLOCK_SHIFT) as u32
}

/// Whether the translation of `forward` and `reply` (its two entries;
/// `None` for one the LRU evicted) has expired at [`nat_clock`] `now`
/// for protocol `proto`: idle past its timeout since the later of its two
/// directions' last packets. A translation missing an entry is expired
/// once its other entry is two clock units old (the data path writes the
/// reply entry first, the forward entry right after).
pub const fn expired(
    proto: u8,
    forward: Option<&NatEntry>,
    reply: Option<&NatEntry>,
    now: u32,
    t: &NatTimeouts,
) -> bool {
    let (f, r) = match (forward, reply) {
        (Some(f), Some(r)) => (f, r),
        (Some(e), None) | (None, Some(e)) => {
            return now.wrapping_sub(e.last_seen) >= 2;
        }
        (None, None) => return true,
    };
    let last = if r.last_seen > f.last_seen {
        r.last_seen
    } else {
        f.last_seen
    };
    let idle = now.wrapping_sub(last);
    // Closing first: a FIN or RST ends a flow whether or not the backend
    // ever answered.
    let limit = if proto == crate::PROTO_TCP && (f.flags | r.flags) & NAT_F_CLOSING != 0 {
        t.tcp_closing
    } else if r.flags & NAT_F_ANSWERED == 0 {
        t.unanswered
    } else if proto == crate::PROTO_TCP {
        t.tcp
    } else {
        t.udp
    };
    idle >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_ports_stay_in_range_and_tries_differ() {
        for (first, count) in [(1024, 31744), (40000, 1024), (65535, 1)] {
            for hash in [0, 1, 0xdead_beef, u32::MAX] {
                let ports: [u16; SNAT_PORT_TRIES as usize] =
                    core::array::from_fn(|i| snat_port(first, count, hash, i as u32));
                for p in ports {
                    assert!(u32::from(p) >= first && u32::from(p) < first + count);
                }
                if count > SNAT_PORT_TRIES * 7919 {
                    for i in 1..ports.len() {
                        assert!(!ports[..i].contains(&ports[i]), "{ports:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_peer_of_a_forward_entry_is_the_reply_s_key() {
        let fwd_key = FlowKey::v4(
            [10, 0, 0, 10],
            [10, 0, 0, 100],
            40000u16.to_be_bytes(),
            80u16.to_be_bytes(),
            6,
        );
        let fwd = NatEntry {
            src: FlowKey::v4([10, 0, 0, 2], [0; 4], [0; 2], [0; 2], 6).src,
            dst: FlowKey::v4([10, 0, 0, 21], [0; 4], [0; 2], [0; 2], 6).src,
            sport: 2000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
            ..NatEntry::default()
        };
        let reply_key = fwd.peer_key(&fwd_key);
        assert_eq!(
            reply_key,
            FlowKey::v4(
                [10, 0, 0, 21],
                [10, 0, 0, 2],
                8080u16.to_be_bytes(),
                2000u16.to_be_bytes(),
                6
            )
        );
    }

    #[test]
    fn translations_expire_by_state() {
        let t = NatTimeouts::new(3600);
        let at = |last_seen, flags| NatEntry {
            last_seen,
            flags,
            ..NatEntry::default()
        };
        let now = 100_000;
        // Established TCP, idle 100 units (107 s): kept; idle past an hour: expired.
        let answered = NAT_F_REPLY | NAT_F_ANSWERED;
        assert!(!expired(
            6,
            Some(&at(now - 100, 0)),
            Some(&at(now - 100, answered)),
            now,
            &t
        ));
        assert!(expired(
            6,
            Some(&at(now - 3400, 0)),
            Some(&at(now - 3400, answered)),
            now,
            &t
        ));
        // The later direction counts.
        assert!(!expired(
            6,
            Some(&at(now - 5000, 0)),
            Some(&at(now - 1, answered)),
            now,
            &t
        ));
        // FIN or RST seen: 10 s.
        assert!(expired(
            6,
            Some(&at(now - 10, NAT_F_CLOSING)),
            Some(&at(now - 10, answered)),
            now,
            &t
        ));
        assert!(!expired(
            6,
            Some(&at(now - 5, NAT_F_CLOSING)),
            Some(&at(now - 5, answered)),
            now,
            &t
        ));
        // Never answered: 60 s.
        assert!(expired(
            6,
            Some(&at(now - 60, 0)),
            Some(&at(now - 60, NAT_F_REPLY)),
            now,
            &t
        ));
        assert!(!expired(
            6,
            Some(&at(now - 30, 0)),
            Some(&at(now - 30, NAT_F_REPLY)),
            now,
            &t
        ));
        // UDP: 300 s.
        assert!(!expired(
            17,
            Some(&at(now - 200, 0)),
            Some(&at(now - 200, answered)),
            now,
            &t
        ));
        assert!(expired(
            17,
            Some(&at(now - 290, 0)),
            Some(&at(now - 290, answered)),
            now,
            &t
        ));
        // Half a translation: gone two units after its last packet.
        assert!(!expired(6, Some(&at(now - 1, 0)), None, now, &t));
        assert!(expired(6, None, Some(&at(now - 2, NAT_F_REPLY)), now, &t));
    }

    #[test]
    fn the_clock_is_never_zero() {
        assert_eq!(nat_clock(0), 1);
        assert_eq!(nat_clock(5 << 30), 5);
    }
}
