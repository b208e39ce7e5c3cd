//! Counters: what happened to each packet, summed per CPU by the programs.

/// Packets and bytes. 16 bytes; the value of every per-CPU counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes of those packets as received (frame length, before encapsulation).
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// What a program did with a packet: the row of its counters in
/// [`crate::MAP_STATS`] (see [`stat_index`]). Drop reasons double as metrics, as Cilium's codes do.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not for a VIP (or the data plane is not ready): XDP_PASS untouched.
    Passed = 0,
    /// Encapsulated toward a backend and sent back out of the ingress
    /// interface (XDP_TX).
    Forwarded = 1,
    /// Encapsulated and redirected to another interface (XDP_REDIRECT).
    Redirected = 2,
    /// Encapsulated, but the kernel had no neighbour entry for the next hop:
    /// passed to the kernel, which forwards it and resolves the neighbour.
    PassedNoNeighbour = 3,
    /// Dropped: source outside the allowed prefixes.
    DropSourceFilter = 4,
    /// Dropped: an IP fragment for a VIP address (cannot be hashed on ports).
    DropFragment = 5,
    /// Dropped: headers truncated or invalid (Ethernet, IPv4 or TCP/UDP).
    DropMalformed = 6,
    /// Dropped: the VIP has no usable backend and `on_no_backend = "drop"`.
    DropNoBackend = 7,
    /// Passed: the VIP has no usable backend and `on_no_backend = "pass"`.
    PassedNoBackend = 8,
    /// Dropped: `bpf_fib_lookup` found no route to the backend.
    DropNoRoute = 9,
    /// Dropped: the frame could not be grown for the outer header, or the
    /// encapsulated packet would exceed the egress MTU.
    DropEncap = 10,
    /// Backend side: outer header removed, inner packet passed to the kernel.
    Decapsulated = 11,
    /// An ICMP echo request to a VIP address, answered by the load balancer
    /// (XDP_TX).
    EchoReplied = 12,
    /// A packet with DF set that would not fit toward its backend once
    /// encapsulated: answered with ICMP "fragmentation needed" (XDP_TX).
    TooBigSent = 13,
    /// Like `TooBigSent`, but the per-CPU rate limit suppressed the ICMP
    /// message: dropped.
    TooBigSuppressed = 14,
    /// Dropped: a packet without DF that would not fit toward its backend
    /// once encapsulated (XDP cannot fragment).
    DropTooBigNoDf = 15,
    /// An ICMP error about a VIP flow (destination unreachable, time
    /// exceeded) encapsulated toward the backend that serves the flow.
    IcmpForwarded = 16,
    /// Dropped: an ICMP error to a VIP address that quotes a packet not sent
    /// from that VIP, or of a protocol other than TCP and UDP.
    DropIcmpNotFromVip = 17,
    /// Dropped: an ICMP message (or its quoted header) cut short.
    DropIcmpTruncated = 18,
    /// Dropped: "fragmentation needed" with a next-hop MTU below 68 (RFC 791).
    DropIcmpBadMtu = 19,
    /// Dropped: the source is not in the VIP's own `allow` list.
    DropVipSourceFilter = 20,
    /// Dropped: IPv6 traffic to a VIP address whose extension headers
    /// `xdp_lb` does not walk (more than 4, or others than hop-by-hop,
    /// routing and destination options before the transport header).
    DropIpv6Ext = 21,
}

impl Outcome {
    /// Number of outcomes: the rows of [`crate::MAP_STATS`].
    pub const COUNT: u32 = 22;
    /// Every outcome, in index order.
    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Self::Passed,
        Self::Forwarded,
        Self::Redirected,
        Self::PassedNoNeighbour,
        Self::DropSourceFilter,
        Self::DropFragment,
        Self::DropMalformed,
        Self::DropNoBackend,
        Self::PassedNoBackend,
        Self::DropNoRoute,
        Self::DropEncap,
        Self::Decapsulated,
        Self::EchoReplied,
        Self::TooBigSent,
        Self::TooBigSuppressed,
        Self::DropTooBigNoDf,
        Self::IcmpForwarded,
        Self::DropIcmpNotFromVip,
        Self::DropIcmpTruncated,
        Self::DropIcmpBadMtu,
        Self::DropVipSourceFilter,
        Self::DropIpv6Ext,
    ];

    /// The outcome of counter index `index` (its discriminant), if any.
    #[inline(always)]
    pub const fn from_index(index: u32) -> Option<Outcome> {
        Some(match index {
            0 => Self::Passed,
            1 => Self::Forwarded,
            2 => Self::Redirected,
            3 => Self::PassedNoNeighbour,
            4 => Self::DropSourceFilter,
            5 => Self::DropFragment,
            6 => Self::DropMalformed,
            7 => Self::DropNoBackend,
            8 => Self::PassedNoBackend,
            9 => Self::DropNoRoute,
            10 => Self::DropEncap,
            11 => Self::Decapsulated,
            12 => Self::EchoReplied,
            13 => Self::TooBigSent,
            14 => Self::TooBigSuppressed,
            15 => Self::DropTooBigNoDf,
            16 => Self::IcmpForwarded,
            17 => Self::DropIcmpNotFromVip,
            18 => Self::DropIcmpTruncated,
            19 => Self::DropIcmpBadMtu,
            20 => Self::DropVipSourceFilter,
            21 => Self::DropIpv6Ext,
            _ => return None,
        })
    }

    /// Name used in metrics, status and logs (snake case).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Forwarded => "forwarded_tx",
            Self::Redirected => "forwarded_redirect",
            Self::PassedNoNeighbour => "passed_no_neighbour",
            Self::DropSourceFilter => "drop_source_filter",
            Self::DropFragment => "drop_fragment",
            Self::DropMalformed => "drop_malformed",
            Self::DropNoBackend => "drop_no_backend",
            Self::PassedNoBackend => "passed_no_backend",
            Self::DropNoRoute => "drop_no_route",
            Self::DropEncap => "drop_encap",
            Self::Decapsulated => "decapsulated",
            Self::EchoReplied => "echo_replied",
            Self::TooBigSent => "too_big_sent",
            Self::TooBigSuppressed => "too_big_suppressed",
            Self::DropTooBigNoDf => "drop_too_big_no_df",
            Self::IcmpForwarded => "icmp_forwarded",
            Self::DropIcmpNotFromVip => "drop_icmp_not_from_vip",
            Self::DropIcmpTruncated => "drop_icmp_truncated",
            Self::DropIcmpBadMtu => "drop_icmp_bad_mtu",
            Self::DropVipSourceFilter => "drop_vip_source_filter",
            Self::DropIpv6Ext => "drop_ipv6_ext",
        }
    }
}

/// What the connection table did for a packet of a VIP flow: its slot in
/// the packet's outcome row of [`crate::MAP_STATS`] (see [`stat_index`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// The flow had an entry and its backend is still usable: kept. Read
    /// from the connection table ([`ConnEvent::HitCached`]: from a copy).
    Hit = 0,
    /// The flow had no entry: chosen by Maglev and recorded.
    Miss = 1,
    /// The flow's backend was removed or is unhealthy: chosen again by Maglev.
    Rehash = 2,
    /// A TCP SYN (without ACK) of a flow without a usable entry: the Maglev
    /// choice, not recorded. The flow is recorded on its first packet that
    /// is not a SYN, so spoofed SYNs never fill the connection table.
    Syn = 3,
    /// A new flow above `conntrack.max_new_per_cpu` on this CPU: the Maglev
    /// choice, not recorded (recorded by a later packet once under it).
    Limited = 4,
    /// A TCP SYN (without ACK) to a VIP whose recorded flows all name the
    /// backend its Maglev table names ([`crate::VIP_F_CONNS_MATCH_TABLE`]):
    /// the Maglev choice with no connection-table lookup, not recorded. Its
    /// first packet that is not a SYN finds that backend either way.
    SynDirect = 5,
    /// The flow's entry as this CPU's flow cache holds it
    /// ([`crate::MAP_FLOW_CACHE`]), its backend still usable: kept, with no
    /// connection-table lookup. One packet in
    /// [`crate::FLOW_CACHE_REFRESH`] of a cached flow reads the table again
    /// (a [`ConnEvent::Hit`]).
    HitCached = 6,
}

impl ConnEvent {
    /// Number of events ([`NO_CONN_EVENT`] is the slot after them).
    pub const COUNT: u32 = 7;
    /// Every event, in index order.
    pub const ALL: [ConnEvent; Self::COUNT as usize] = [
        Self::Hit,
        Self::Miss,
        Self::Rehash,
        Self::Syn,
        Self::Limited,
        Self::SynDirect,
        Self::HitCached,
    ];

    /// Name used in metrics, status and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hit => "conntrack_hit",
            Self::Miss => "conntrack_miss",
            Self::Rehash => "conntrack_rehash",
            Self::Syn => "conntrack_syn",
            Self::Limited => "conntrack_limited",
            Self::SynDirect => "conntrack_syn_direct",
            Self::HitCached => "conntrack_hit_cached",
        }
    }

    /// The `event` label of `lb_conntrack_events_total` and the key in
    /// `/status`: the name without its `conntrack_` prefix.
    pub fn label(self) -> &'static str {
        let name = self.name();
        name.strip_prefix("conntrack_").unwrap_or(name)
    }
}

/// Entries of [`crate::MAP_STATS`] per outcome: one per [`ConnEvent`], then
/// [`NO_CONN_EVENT`]. A packet's outcome and its connection-table event are
/// one counter, so `xdp_lb` updates one per-CPU entry for both.
pub const STAT_SLOTS: u32 = ConnEvent::COUNT + 1;
/// The slot of a packet that caused no connection-table event (not VIP
/// traffic, dropped before the backend choice, an ICMP error, decapsulation).
pub const NO_CONN_EVENT: u32 = ConnEvent::COUNT;
/// Entries of [`crate::MAP_STATS`]: [`Outcome::COUNT`] rows of [`STAT_SLOTS`].
pub const STAT_ENTRIES: u32 = Outcome::COUNT * STAT_SLOTS;

/// The entry of [`crate::MAP_STATS`] counting packets with `outcome` (an
/// [`Outcome`]'s index) and connection-table `event_slot` (a [`ConnEvent`]'s
/// index, or [`NO_CONN_EVENT`]). The counter of an outcome is the sum of its
/// row; that of an event the sum of its column.
#[inline(always)]
pub const fn stat_index(outcome: u32, event_slot: u32) -> u32 {
    outcome * STAT_SLOTS + event_slot
}

#[cfg(test)]
mod tests {
    use super::{ConnEvent, Outcome};

    /// Counter enums are append-only. This match has no wildcard: a new
    /// variant does not compile here until listed, and then fails unless it
    /// is in `ALL` with an index below `COUNT`.
    #[test]
    fn every_counter_is_in_all_and_count() {
        let variant = |o: Outcome| match o {
            Outcome::Passed
            | Outcome::Forwarded
            | Outcome::Redirected
            | Outcome::PassedNoNeighbour
            | Outcome::DropSourceFilter
            | Outcome::DropFragment
            | Outcome::DropMalformed
            | Outcome::DropNoBackend
            | Outcome::PassedNoBackend
            | Outcome::DropNoRoute
            | Outcome::DropEncap
            | Outcome::Decapsulated
            | Outcome::EchoReplied
            | Outcome::TooBigSent
            | Outcome::TooBigSuppressed
            | Outcome::DropTooBigNoDf
            | Outcome::IcmpForwarded
            | Outcome::DropIcmpNotFromVip
            | Outcome::DropIcmpTruncated
            | Outcome::DropIcmpBadMtu
            | Outcome::DropVipSourceFilter
            | Outcome::DropIpv6Ext => o,
        };
        for o in Outcome::ALL {
            let o = variant(o);
            assert!((o as u32) < Outcome::COUNT, "{}", o.name());
        }
        assert_eq!(Outcome::ALL.len(), Outcome::COUNT as usize);
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_index(o as u32), Some(o), "{}", o.name());
        }
        assert_eq!(Outcome::from_index(Outcome::COUNT), None);
        let event = |e: ConnEvent| match e {
            ConnEvent::Hit
            | ConnEvent::Miss
            | ConnEvent::Rehash
            | ConnEvent::Syn
            | ConnEvent::Limited
            | ConnEvent::SynDirect
            | ConnEvent::HitCached => e,
        };
        for e in ConnEvent::ALL {
            assert!((event(e) as u32) < ConnEvent::COUNT, "{}", e.name());
        }
    }

    #[test]
    fn outcome_indices_are_dense_and_in_order() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{}", outcome.name());
        }
    }
}
