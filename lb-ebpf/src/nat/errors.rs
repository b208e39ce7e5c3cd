//! ICMP and ICMPv6 errors about a translated flow, both ways (the
//! rewrite itself is [`super::rewrite::icmp_error`]): one from the
//! client's side, handed over by `xdp_lb` with the flow it quotes, goes to
//! the backend ([`forward_error`]); one from the backend's side, which
//! `xdp_lb` would pass, is looked up by the packet it quotes and goes to
//! the client ([`quoted_reply`], [`reply_error`]).

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrKey, FlowKey, NAT_F_REPLY, NatHandoff, Outcome, PROTO_TCP, PROTO_UDP};
use network_types::ip::Ipv4Hdr;

use super::{ipv6_len, rewrite, send};
use crate::{
    maps::{LB_BE_STATS, LB_NAT, LB_NAT_SOURCES, count},
    nexthop::{self, Route},
    parse::{L3, ipv4_at, ipv6_at, is_fragment, l3_offset, ptr_at},
};

/// An ICMP error from the client's side about the handed-over flow (it
/// quotes the VIP's reply to the client): translated for the backend with
/// the flow's forward entry ([`rewrite::icmp_error`]) and sent to it. A
/// flow without a translation: `DropNatUnavailable`. One that would not fit
/// toward the backend is dropped (`DropEncap`): an ICMP error is never
/// answered with one (RFC 1122 3.2.2).
#[inline(always)]
pub(super) fn forward_error<const V6: bool>(
    ctx: &XdpContext,
    h: &NatHandoff,
) -> Result<Outcome, Outcome> {
    let e = LB_NAT.get_ptr(h.flow).ok_or(Outcome::DropNatUnavailable)?;
    // SAFETY: a map value, live while the program runs.
    let e = unsafe { &*e };
    let (l3, l4, len) = icmp_offsets::<V6>(ctx)?;
    let family = if V6 { L3::V6 } else { L3::V4 };
    let next_hop = match nexthop::cached(e.backend_id, e.generation, len) {
        Some(next_hop) => next_hop,
        None => nexthop::lookup(ctx, family, &e.src, &e.dst, len),
    };
    match next_hop.route {
        Route::NoRoute => return Err(Outcome::DropNoRoute),
        Route::FragNeeded => return Err(Outcome::DropEncap),
        Route::Resolved | Route::NoNeighbour => {}
    }
    rewrite::icmp_error::<V6>(ctx, l3, l4, e)?;
    count(
        &LB_BE_STATS,
        e.backend_id,
        (ctx.data_end() - ctx.data()) as u64,
    );
    send(ctx, &next_hop, Outcome::IcmpForwarded)
}

/// The offsets of an ICMP or ICMPv6 message in the frame (IP header, ICMP
/// header) and the IP packet's length.
#[inline(always)]
fn icmp_offsets<const V6: bool>(ctx: &XdpContext) -> Result<(usize, usize, u16), Outcome> {
    let (l3, _) = l3_offset(ctx)?.ok_or(Outcome::DropMalformed)?;
    if V6 {
        let ip = ipv6_at(ctx, l3)?;
        Ok((l3, ip.l4, ipv6_len(ctx, l3)?))
    } else {
        let ip = ipv4_at(ctx, l3)?;
        // SAFETY: bounds checked by ipv4_at.
        let len = u16::from_be_bytes(unsafe { (*ip.hdr).tot_len });
        Ok((l3, l3 + ip.len, len))
    }
}

/// An ICMP error that may be about a translated flow, seen from the
/// backend's side: what the reply program needs to look it up.
pub(super) struct QuotedReply {
    l3: usize,
    l4: usize,
    len: u16,
    /// The key of the translation's reply entry: the quoted packet
    /// (SNAT address or client -> backend) answered.
    key: FlowKey,
}

/// The frame's ICMP (`V6`: ICMPv6) error, if it is one, quoting a TCP or
/// UDP packet with its ports: `Ok(None)` for anything else.
#[inline(always)]
pub(super) fn quoted_reply<const V6: bool>(
    ctx: &XdpContext,
) -> Result<Option<QuotedReply>, Outcome> {
    let Some((l3, family)) = l3_offset(ctx)? else {
        return Ok(None);
    };
    let (l4, len, icmp_proto) = match family {
        L3::V4 if !V6 => {
            let ip = ipv4_at(ctx, l3)?;
            // SAFETY: bounds checked by ipv4_at.
            let (tot, proto, frag) = unsafe {
                (
                    u16::from_be_bytes((*ip.hdr).tot_len),
                    (*ip.hdr).proto,
                    is_fragment(&*ip.hdr),
                )
            };
            if frag {
                return Ok(None);
            }
            (l3 + ip.len, tot, proto == lb_common::PROTO_ICMP)
        }
        L3::V6 if V6 => {
            let ip = ipv6_at(ctx, l3)?;
            (
                ip.l4,
                ipv6_len(ctx, l3)?,
                ip.proto == lb_common::PROTO_ICMPV6 && !ip.fragment,
            )
        }
        _ => return Ok(None),
    };
    if !icmp_proto {
        return Ok(None);
    }
    // The whole 8-byte header: a one-byte bounds check compiles to a form
    // the verifier does not learn a range from.
    let icmp: *const [u8; 8] = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    // Destination unreachable, time exceeded (and ICMPv6 packet too big).
    let error = if V6 {
        matches!(kind, 1..=3)
    } else {
        kind == 3 || kind == 11
    };
    if !error {
        return Ok(None);
    }
    let inner_l3 = l4 + 8;
    let (src, dst, proto, inner_l4) = if V6 {
        let inner: *const network_types::ip::Ipv6Hdr =
            ptr_at(ctx, inner_l3).ok_or(Outcome::DropIcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            (
                (*inner).src_addr,
                (*inner).dst_addr,
                (*inner).next_hdr,
                inner_l3 + 40,
            )
        }
    } else {
        let inner: *const Ipv4Hdr = ptr_at(ctx, inner_l3).ok_or(Outcome::DropIcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            (
                AddrKey::v4((*inner).src_addr).addr,
                AddrKey::v4((*inner).dst_addr).addr,
                (*inner).proto,
                inner_l3 + usize::from((*inner).vihl & 0x0f) * 4,
            )
        }
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let ports: *const [[u8; 2]; 2] = ptr_at(ctx, inner_l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let [sport, dport] = unsafe { *ports };
    let family = if V6 {
        lb_common::FAMILY_V6
    } else {
        lb_common::FAMILY_V4
    };
    Ok(Some(QuotedReply {
        l3,
        l4,
        len,
        key: FlowKey::new(family, dst, src, dport, sport, proto),
    }))
}

/// An ICMP error from the backend's side about a translated flow (it
/// quotes the packet sent to the backend): translated for the client with
/// the translation's reply entry and sent to it; an error about anything
/// else is passed untouched. Without `dnat` VIPs only errors quoting a
/// SNAT port are looked up.
#[inline(always)]
pub(super) fn reply_error<const V6: bool>(
    ctx: &XdpContext,
    q: &QuotedReply,
    dnat: bool,
) -> Result<Outcome, Outcome> {
    if !dnat {
        let sources = LB_NAT_SOURCES.get(0).ok_or(Outcome::Passed)?;
        // The quoted packet's source port: the SNAT port.
        let port = u32::from(u16::from_be_bytes(q.key.dport));
        if port.wrapping_sub(sources.port_first) >= sources.port_count {
            return Ok(Outcome::Passed);
        }
    }
    let Some(e) = LB_NAT.get_ptr(q.key) else {
        return Ok(Outcome::Passed);
    };
    // SAFETY: a map value, live while the program runs.
    let e = unsafe { &*e };
    if e.flags & NAT_F_REPLY == 0 {
        return Ok(Outcome::Passed);
    }
    let family = if V6 { L3::V6 } else { L3::V4 };
    let next_hop = nexthop::lookup(ctx, family, &e.src, &e.dst, q.len);
    match next_hop.route {
        Route::NoRoute => return Err(Outcome::DropNoRoute),
        Route::FragNeeded => return Err(Outcome::DropEncap),
        Route::Resolved | Route::NoNeighbour => {}
    }
    rewrite::icmp_error::<V6>(ctx, q.l3, q.l4, e)?;
    send(ctx, &next_hop, Outcome::IcmpForwarded)
}
