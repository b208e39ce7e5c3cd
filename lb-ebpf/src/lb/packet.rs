//! The packet and the backend choice as the steps hand them on: what the
//! parse step leaves ([`Packet`], [`Inner`]), what the shortcut found in the
//! connection table ([`ConnLookup`]), and what choose picked for forward
//! ([`Choice`]). Plain data, written whole by the step that makes it.

use lb_common::{ConnValue, FlowKey};

use crate::parse::L3;

/// What the connection table said of a packet's flow before [`choose`]:
/// whether the [`shortcut`] looked it up, and the entry it found. The
/// entry itself, or an id no backend has (backend ids are below
/// `lb_common::MAX_BACKENDS`) for "not looked up" and "missing": written
/// with word stores of constants that differ (zeroed fields side by side
/// become a `memset` call).
#[derive(Clone, Copy)]
pub(super) struct ConnLookup(ConnValue);

impl ConnLookup {
    /// Not looked up yet.
    pub(super) const NOT_LOOKED_UP: Self = ConnLookup(ConnValue {
        backend_id: u32::MAX,
        generation: 1,
    });
    /// Looked up, not there.
    pub(super) const MISSING: Self = ConnLookup(ConnValue {
        backend_id: u32::MAX - 1,
        generation: 1,
    });

    /// Looked up: `entry`, if any.
    #[inline(always)]
    pub(super) fn of(entry: Option<ConnValue>) -> Self {
        entry.map_or(Self::MISSING, ConnLookup)
    }

    /// Whether the shortcut looked the flow up.
    #[inline(always)]
    pub(super) fn done(self) -> bool {
        self.0.backend_id != Self::NOT_LOOKED_UP.0.backend_id
    }

    /// The entry found (once looked up).
    #[inline(always)]
    pub(super) fn entry(self) -> Option<ConnValue> {
        // then_some, not then: the payload is defined on both branches (a
        // None with an undefined payload is refused by 6.1's verifier).
        (self.0.backend_id != Self::MISSING.0.backend_id).then_some(self.0)
    }
}

/// The packet as it is forwarded (the inner packet once encapsulated).
pub(super) struct Inner {
    /// Offset of its IP header.
    pub(super) l3: usize,
    pub(super) family: L3,
    /// Its length in bytes (IPv4 total length; IPv6 header plus payload).
    pub(super) len: u16,
    /// DSCP/ECN byte.
    pub(super) tos: u8,
    /// IPv4: DF set. IPv6 packets are never fragmented on the way.
    pub(super) df: bool,
    /// IPv4: options present (the "too big" answer does not quote them).
    pub(super) options: bool,
}

/// A packet of a VIP flow, as the parse step leaves it.
pub(super) struct Packet {
    /// The flow, client to VIP, as the connection table's key (aligned to
    /// 8: read by words, and used as the key where it stands).
    pub(super) flow: FlowKey,
    pub(super) inner: Inner,
    /// The packet's own source (the client, or for an ICMP error the router
    /// that sent it).
    pub(super) source: [u8; 16],
    /// An ICMP error about the flow (a router's, about a DSR reply): it
    /// follows the flow to its backend without touching the connection
    /// table, and only the global source filter applies to it.
    pub(super) icmp_error: bool,
    /// A TCP SYN without ACK: its flow is not recorded yet.
    pub(super) syn: bool,
    /// The frame's length, for the counters.
    pub(super) bytes: u64,
    /// `lb_common::flow_hash` of the flow, once the [`shortcut`] looked
    /// the flow up (`conn`); 0 before.
    pub(super) hash: u32,
    /// What the [`shortcut`] found in the connection table.
    pub(super) conn: ConnLookup,
}

impl Packet {
    /// The packet of `flow` as a parse step writes it, before [`shortcut`].
    #[inline(always)]
    pub(super) fn new(
        flow: FlowKey,
        inner: Inner,
        source: [u8; 16],
        icmp_error: bool,
        syn: bool,
        bytes: u64,
    ) -> Self {
        Packet {
            flow,
            inner,
            source,
            icmp_error,
            syn,
            bytes,
            hash: 0,
            conn: ConnLookup::NOT_LOOKED_UP,
        }
    }
}

/// The backend [`choose`] picked, for [`forward`].
pub(super) struct Choice {
    pub(super) backend_id: u32,
    pub(super) hash: u32,
    /// The backend's address as in its map entry (IPv4 in the first 4
    /// bytes), copied by words: a map value's address kept on the stack
    /// across subprograms is lost by 6.1's verifier, and a byte copy would
    /// cost a memmove call.
    pub(super) backend_addr: [u32; 4],
    /// The backend's family ([`lb_common::FAMILY_V4`] or [`FAMILY_V6`]).
    pub(super) backend_family: u8,
    /// The backend entry's generation, which a cached next hop must match.
    pub(super) backend_generation: u32,
    /// What the connection table did (a [`lb_common::ConnEvent`]'s index, or
    /// [`NO_CONN_EVENT`]), counted with the packet's outcome.
    pub(super) conn_event: u32,
    /// With `TOO_BIG`: the bytes the inner packet may have.
    pub(super) mtu_left: u16,
    /// The VIP's NAT mode bits (`lb_common::VIP_F_NAT_MODES` of its
    /// flags): non-zero hands the packet to the NAT program of its family.
    pub(super) nat: u32,
}
