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

/// XDP actions, as the kernel numbers them (`enum xdp_action` in
/// include/uapi/linux/bpf.h): the verdicts of [`Outcome::action`], and what
/// the tests and the bench compare `BPF_PROG_TEST_RUN`'s return value with.
pub mod xdp_action {
    /// An error in the program: dropped, with the `xdp_exception` tracepoint.
    pub const ABORTED: u32 = 0;
    /// Dropped.
    pub const DROP: u32 = 1;
    /// Handed to the kernel's stack.
    pub const PASS: u32 = 2;
    /// Sent back out of the interface it came in on.
    pub const TX: u32 = 3;
    /// Sent where `bpf_redirect` said.
    pub const REDIRECT: u32 = 4;
}

/// One table per counter enum: a row per variant (its doc, its index, its
/// name in metrics, status and logs, and for [`Outcome`] its XDP action)
/// generates the enum, `COUNT`, `ALL`, `from_index` and `name` (and
/// `action`), so a new variant is written once. A compile-time check
/// refuses indices that are not dense and in order.
macro_rules! counter_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $index:literal => $label:literal, $action:ident; )*
        }
    ) => {
        counter_enum!(@common $(#[$meta])* $name { $( $(#[$vmeta])* $variant = $index => $label; )* });
        impl $name {
            /// The XDP action that carries out this outcome ([`xdp_action`]).
            #[inline(always)]
            pub const fn action(self) -> u32 {
                match self {
                    $( Self::$variant => xdp_action::$action, )*
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $index:literal => $label:literal; )*
        }
    ) => {
        counter_enum!(@common $(#[$meta])* $name { $( $(#[$vmeta])* $variant = $index => $label; )* });
    };
    (@common $(#[$meta:meta])* $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $index:literal => $label:literal; )* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $index, )*
        }

        impl $name {
            /// Number of variants.
            pub const COUNT: u32 = [ $( Self::$variant, )* ].len() as u32;
            /// Every variant, in index order.
            pub const ALL: [$name; Self::COUNT as usize] = [ $( Self::$variant, )* ];

            /// The variant of counter index `index` (its discriminant), if any.
            #[inline(always)]
            pub const fn from_index(index: u32) -> Option<$name> {
                Some(match index {
                    $( $index => Self::$variant, )*
                    _ => return None,
                })
            }

            /// Name used in metrics, status and logs (snake case).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )*
                }
            }
        }

        // Indices dense and in order: ALL[i] has index i.
        const _: () = {
            let mut i = 0;
            while i < $name::ALL.len() {
                assert!($name::ALL[i] as usize == i);
                i += 1;
            }
        };
    };
}

counter_enum! {
    /// What a program did with a packet: the row of its counters in
    /// [`crate::MAP_STATS`] (see [`stat_index`]). Drop reasons double as metrics, as Cilium's codes do.
    pub enum Outcome {
        /// Not for a VIP (or the data plane is not ready): XDP_PASS untouched.
        Passed = 0 => "passed", PASS;
        /// Encapsulated toward a backend and sent back out of the ingress
        /// interface (XDP_TX).
        Forwarded = 1 => "forwarded_tx", TX;
        /// Encapsulated and redirected to another interface (XDP_REDIRECT).
        Redirected = 2 => "forwarded_redirect", REDIRECT;
        /// Encapsulated, but the kernel had no neighbour entry for the next hop:
        /// passed to the kernel, which forwards it and resolves the neighbour.
        PassedNoNeighbour = 3 => "passed_no_neighbour", PASS;
        /// Dropped: source outside the allowed prefixes.
        DropSourceFilter = 4 => "drop_source_filter", DROP;
        /// Dropped: an IP fragment for a VIP address (cannot be hashed on ports).
        DropFragment = 5 => "drop_fragment", DROP;
        /// Dropped: headers truncated or invalid (Ethernet, IPv4 or TCP/UDP).
        DropMalformed = 6 => "drop_malformed", DROP;
        /// Dropped: the VIP has no usable backend and `on_no_backend = "drop"`.
        DropNoBackend = 7 => "drop_no_backend", DROP;
        /// Passed: the VIP has no usable backend and `on_no_backend = "pass"`.
        PassedNoBackend = 8 => "passed_no_backend", PASS;
        /// Dropped: `bpf_fib_lookup` found no route to the backend.
        DropNoRoute = 9 => "drop_no_route", DROP;
        /// Dropped: the frame could not be grown for the outer header, or the
        /// encapsulated packet would exceed the egress MTU.
        DropEncap = 10 => "drop_encap", DROP;
        /// Backend side: outer header removed, inner packet passed to the kernel.
        Decapsulated = 11 => "decapsulated", PASS;
        /// An ICMP echo request to a VIP address, answered by the load balancer
        /// (XDP_TX).
        EchoReplied = 12 => "echo_replied", TX;
        /// A packet with DF set that would not fit toward its backend once
        /// encapsulated: answered with ICMP "fragmentation needed" (XDP_TX).
        TooBigSent = 13 => "too_big_sent", TX;
        /// Like `TooBigSent`, but the per-CPU rate limit suppressed the ICMP
        /// message: dropped.
        TooBigSuppressed = 14 => "too_big_suppressed", DROP;
        /// Dropped: a packet without DF that would not fit toward its backend
        /// once encapsulated (XDP cannot fragment).
        DropTooBigNoDf = 15 => "drop_too_big_no_df", DROP;
        /// An ICMP error about a VIP flow (destination unreachable, time
        /// exceeded) encapsulated toward the backend that serves the flow.
        IcmpForwarded = 16 => "icmp_forwarded", TX;
        /// Dropped: an ICMP error to a VIP address that quotes a packet not sent
        /// from that VIP, or of a protocol other than TCP and UDP.
        DropIcmpNotFromVip = 17 => "drop_icmp_not_from_vip", DROP;
        /// Dropped: an ICMP message (or its quoted header) cut short.
        DropIcmpTruncated = 18 => "drop_icmp_truncated", DROP;
        /// Dropped: "fragmentation needed" with a next-hop MTU below 68 (RFC 791).
        DropIcmpBadMtu = 19 => "drop_icmp_bad_mtu", DROP;
        /// Dropped: the source is not in the VIP's own `allow` list.
        DropVipSourceFilter = 20 => "drop_vip_source_filter", DROP;
        /// Dropped: IPv6 traffic to a VIP address whose extension headers
        /// `xdp_lb` does not walk (more than 4, or others than hop-by-hop,
        /// routing and destination options before the transport header).
        DropIpv6Ext = 21 => "drop_ipv6_ext", DROP;
        /// Backend side: a tunnelled packet for a served VIP whose outer
        /// source is not a load balancer's (`lb decap --lb`; by default the
        /// private ranges): dropped, so no one who reaches a backend can
        /// inject traffic past the load balancer's filters.
        DropDecapSource = 22 => "drop_decap_source", DROP;
        /// A packet of a NAT VIP's flow, translated toward its backend
        /// (`nat`: SNAT address and port -> backend:port; `dnat`: client ->
        /// backend:port) and sent back out of the ingress interface.
        NatForwarded = 23 => "nat_forwarded_tx", TX;
        /// A backend's reply to a NAT translation, translated back to VIP:port
        /// -> client and sent back out of the ingress interface.
        NatReplied = 24 => "nat_replied_tx", TX;
        /// Dropped: a new flow of a `nat` VIP found no free SNAT port in
        /// [`crate::SNAT_PORT_TRIES`] tries (or, in `dnat`, its reply's
        /// 5-tuple is another translation's).
        DropNatNoPort = 25 => "drop_nat_no_port", DROP;
        /// Dropped: a packet of a NAT VIP that the NAT program could not take
        /// (not in `LB_PROGS`), or an ICMP error about a NAT VIP's flow that
        /// has no translation.
        DropNatUnavailable = 26 => "drop_nat_unavailable", DROP;
        /// Dropped: a packet to a VIP address that no VIP takes (a port or a
        /// protocol without a VIP, an ICMP message other than echo requests
        /// and errors): the node has no route for a VIP address but back
        /// out, so the kernel would send it to the router, which sends it
        /// back, until its TTL runs out. IPv6 NDP to a VIP address is passed.
        DropNoVip = 27 => "drop_no_vip", DROP;
    }
}

counter_enum! {
    /// What the NAT table did for a packet: the rows of
    /// [`crate::MAP_NAT_STATS`].
    pub enum NatEvent {
        /// A forward packet found its translation.
        Hit = 0 => "nat_hit";
        /// A new flow got a translation (and, in `nat`, a SNAT port).
        Allocated = 1 => "nat_allocated";
        /// A flow whose backend changed (its old one unusable) was translated
        /// anew toward its new backend.
        Moved = 2 => "nat_moved";
        /// A reply found its translation.
        ReplyHit = 3 => "nat_reply_hit";
        /// A packet the NAT program looked up as a reply found none: passed to
        /// the kernel untouched (it may be the host's own connection).
        ReplyMiss = 4 => "nat_reply_miss";
        /// A TCP FIN or RST shortened a translation's life.
        Closing = 5 => "nat_closing";
    }
}

counter_enum! {
    /// What the connection table did for a packet of a VIP flow: its slot in
    /// the packet's outcome row of [`crate::MAP_STATS`] (see [`stat_index`]).
    pub enum ConnEvent {
        /// The flow had an entry and its backend is still usable: kept. Read
        /// from the connection table ([`ConnEvent::HitCached`]: from a copy).
        Hit = 0 => "conntrack_hit";
        /// The flow had no entry: chosen by Maglev and recorded.
        Miss = 1 => "conntrack_miss";
        /// The flow's backend was removed or is unhealthy: chosen again by Maglev.
        Rehash = 2 => "conntrack_rehash";
        /// A TCP SYN (without ACK) of a flow without a usable entry: the Maglev
        /// choice, not recorded. The flow is recorded on its first packet that
        /// is not a SYN, so spoofed SYNs never fill the connection table.
        Syn = 3 => "conntrack_syn";
        /// A new flow above `conntrack.max_new_per_cpu` on this CPU: the Maglev
        /// choice, not recorded (recorded by a later packet once under it).
        Limited = 4 => "conntrack_limited";
        /// A TCP SYN (without ACK) to a VIP whose recorded flows all name the
        /// backend its Maglev table names ([`crate::VIP_F_CONNS_MATCH_TABLE`]):
        /// the Maglev choice with no connection-table lookup, not recorded. Its
        /// first packet that is not a SYN finds that backend either way.
        SynDirect = 5 => "conntrack_syn_direct";
        /// The flow's entry as this CPU's flow cache holds it
        /// ([`crate::MAP_FLOW_CACHE`]), its backend still usable: kept, with no
        /// connection-table lookup. One packet in
        /// [`crate::FLOW_CACHE_REFRESH`] of a cached flow reads the table again
        /// (a [`ConnEvent::Hit`]).
        HitCached = 6 => "conntrack_hit_cached";
    }
}

impl ConnEvent {
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
    use super::{ConnEvent, Outcome, xdp_action};

    #[test]
    fn every_counter_index_maps_back_to_its_variant_and_no_further() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_index(o as u32), Some(o), "{}", o.name());
        }
        assert_eq!(Outcome::from_index(Outcome::COUNT), None);
        for e in ConnEvent::ALL {
            assert_eq!(ConnEvent::from_index(e as u32), Some(e), "{}", e.name());
        }
        assert_eq!(ConnEvent::from_index(ConnEvent::COUNT), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let snake = |name: &str| {
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        for (i, a) in Outcome::ALL.iter().enumerate() {
            assert!(snake(a.name()), "{}", a.name());
            for b in &Outcome::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        for (i, a) in ConnEvent::ALL.iter().enumerate() {
            assert!(snake(a.name()), "{}", a.name());
            for b in &ConnEvent::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn drops_drop_and_only_answers_forwards_and_redirects_leave_the_program() {
        for o in Outcome::ALL {
            let name = o.name();
            let expected = if name.starts_with("drop_") || o == Outcome::TooBigSuppressed {
                xdp_action::DROP
            } else if name.starts_with("passed") || o == Outcome::Decapsulated {
                xdp_action::PASS
            } else if o == Outcome::Redirected {
                xdp_action::REDIRECT
            } else {
                xdp_action::TX
            };
            assert_eq!(o.action(), expected, "{name}");
        }
    }
}
