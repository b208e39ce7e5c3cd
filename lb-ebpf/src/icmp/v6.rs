//! ICMPv6 to a VIP address (RFC 4443): echo requests answered here, and
//! errors about a VIP flow (destination unreachable, packet too big, time
//! exceeded) traced back to the client's flow, as for IPv4 in
//! [`super::v4`]. Everything else (neighbour discovery first of all)
//! passes to the kernel.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use super::{Icmp, IcmpHdr, TTL, too_big_v6::IPV6_MIN_MTU};
use crate::{
    encap::csum,
    parse::{ptr_at, ptr_at_fresh},
};

const DEST_UNREACH: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// The kind of the ICMPv6 message at `l4`.
#[inline(always)]
pub fn classify(ctx: &XdpContext, l4: usize) -> Result<Icmp, Outcome> {
    let icmp: *const IcmpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
    Ok(match kind {
        ECHO_REQUEST if code == 0 => Icmp::EchoRequest,
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED => Icmp::Error,
        _ => Icmp::Other,
    })
}

/// Turns the echo request (IPv6 at `l3`, ICMPv6 at `l4`) into its reply in
/// place: MACs and addresses swapped (the pseudo-header's sum does not
/// change), type 129, hop limit reset; the checksum updated incrementally.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, l3: usize, l4: usize) -> Result<Outcome, Outcome> {
    let eth: *mut EthHdr = ptr_at_fresh(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked; no other pointer aliases these.
    unsafe {
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = dst;
        (*ip).dst_addr = src;
        (*ip).hop_limit = TTL;
        let code = u16::from((*icmp).code);
        (*icmp).kind = ECHO_REPLY;
        (*icmp).check = csum::replace_u16(
            (*icmp).check,
            u16::from(ECHO_REQUEST) << 8 | code,
            u16::from(ECHO_REPLY) << 8 | code,
        );
    }
    Ok(Outcome::EchoReplied)
}

/// The client's flow an ICMPv6 error is about (see [`super::icmp::QuotedFlow`]).
pub struct QuotedFlow6 {
    /// The client (destination of the quoted packet).
    pub client: [u8; 16],
    /// The client's port, network byte order.
    pub client_port: [u8; 2],
    /// The VIP's port (source port of the quoted packet), network byte order.
    pub vip_port: [u8; 2],
    /// TCP or UDP.
    pub proto: u8,
}

/// Reads the packet an ICMPv6 error at `l4` quotes: a TCP or UDP packet
/// (no extension headers) sent from `vip`, with at least 8 bytes of its
/// transport header; a "packet too big" must announce 1280 or more.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, l4: usize, vip: &[u8; 16]) -> Result<QuotedFlow6, Outcome> {
    let icmp: *const IcmpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp = unsafe { *icmp };
    let mtu = u32::from_be_bytes([
        icmp.rest_hi[0],
        icmp.rest_hi[1],
        icmp.rest_lo[0],
        icmp.rest_lo[1],
    ]);
    if icmp.kind == PACKET_TOO_BIG && mtu < IPV6_MIN_MTU {
        return Err(Outcome::DropIcmpBadMtu);
    }
    let inner_at = l4 + size_of::<IcmpHdr>();
    let inner: *const Ipv6Hdr = ptr_at(ctx, inner_at).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (vcf, next, src, dst) = unsafe {
        (
            (*inner).vcf,
            (*inner).next_hdr,
            (*inner).src_addr,
            (*inner).dst_addr,
        )
    };
    if vcf[0] >> 4 != 6 {
        return Err(Outcome::DropIcmpTruncated);
    }
    if &src != vip || (next != PROTO_TCP && next != PROTO_UDP) {
        return Err(Outcome::DropIcmpNotFromVip);
    }
    let l4_quote: *const [[u8; 2]; 4] =
        ptr_at(ctx, inner_at + Ipv6Hdr::LEN).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let quote = unsafe { *l4_quote };
    Ok(QuotedFlow6 {
        client: dst,
        client_port: quote[1],
        vip_port: quote[0],
        proto: next,
    })
}
