//! ICMP to a VIP address (RFC 792): echo requests answered here, and errors
//! about a VIP flow (destination unreachable, time exceeded) traced back to
//! the client's flow so they reach the backend that serves it, as Katran
//! and GLB do for path MTU discovery through a load balancer.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use super::{Icmp, IcmpHdr, TTL};
use crate::{
    encap::csum,
    parse::{ptr_at, ptr_at_fresh},
};

/// ICMP echo reply, echo request, destination unreachable, time exceeded.
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
/// Destination unreachable code "fragmentation needed and DF set" (RFC 1191).
const FRAG_NEEDED: u8 = 4;
/// The smallest MTU an IPv4 link may have (RFC 791).
const MIN_MTU: u16 = 68;

/// The kind of the ICMP message at `l4`.
#[inline(always)]
pub fn classify(ctx: &XdpContext, l4: usize) -> Result<Icmp, Outcome> {
    let icmp: *const IcmpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
    Ok(match kind {
        ECHO_REQUEST if code == 0 => Icmp::EchoRequest,
        DEST_UNREACH | TIME_EXCEEDED => Icmp::Error,
        _ => Icmp::Other,
    })
}

/// Turns the echo request at `l3` (IPv4 header of `ip_len` bytes) into its
/// reply in place: MACs and addresses swapped, type 0, TTL reset; both
/// checksums updated incrementally (RFC 1624). The caller sends it back
/// (XDP_TX).
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, l3: usize, ip_len: usize) -> Result<Outcome, Outcome> {
    let eth: *mut EthHdr = ptr_at_fresh(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l3 + ip_len).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at; no other pointer aliases these.
    unsafe {
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = dst;
        (*ip).dst_addr = src;
        let proto = u16::from((*ip).proto);
        let old = u16::from((*ip).ttl) << 8 | proto;
        (*ip).ttl = TTL;
        (*ip).check = csum::replace_u16((*ip).check, old, u16::from(TTL) << 8 | proto);
        let old = u16::from((*icmp).kind) << 8 | u16::from((*icmp).code);
        (*icmp).kind = ECHO_REPLY;
        (*icmp).check = csum::replace_u16((*icmp).check, old, u16::from((*icmp).code));
    }
    Ok(Outcome::EchoReplied)
}

/// The client's flow an ICMP error to VIP address `vip` is about.
pub struct QuotedFlow {
    /// The client (destination of the quoted packet).
    pub client: [u8; 4],
    /// The client's port, network byte order.
    pub client_port: [u8; 2],
    /// The VIP's port (source port of the quoted packet), network byte order.
    pub vip_port: [u8; 2],
    /// TCP or UDP.
    pub proto: u8,
}

/// Reads the packet an ICMP error at `l4` quotes: it must be a TCP or UDP
/// packet sent from `vip` (a DSR reply), with at least the 8 bytes of L4
/// header RFC 792 guarantees; a "fragmentation needed" must carry a
/// next-hop MTU of 68 or more.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, l4: usize, vip: [u8; 4]) -> Result<QuotedFlow, Outcome> {
    let icmp: *const IcmpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp = unsafe { *icmp };
    if icmp.kind == DEST_UNREACH
        && icmp.code == FRAG_NEEDED
        && u16::from_be_bytes(icmp.rest_lo) < MIN_MTU
    {
        return Err(Outcome::DropIcmpBadMtu);
    }
    let inner_at = l4 + size_of::<IcmpHdr>();
    let inner: *const Ipv4Hdr = ptr_at(ctx, inner_at).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { *inner };
    let inner_len = usize::from(inner.vihl & 0x0f) * 4;
    if inner.vihl >> 4 != 4 || inner_len < Ipv4Hdr::LEN {
        return Err(Outcome::DropIcmpTruncated);
    }
    if inner.src_addr != vip || (inner.proto != PROTO_TCP && inner.proto != PROTO_UDP) {
        return Err(Outcome::DropIcmpNotFromVip);
    }
    // The first 8 bytes of TCP or UDP: ports first.
    let l4_quote: *const [[u8; 2]; 4] =
        ptr_at(ctx, inner_at + inner_len).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let quote = unsafe { *l4_quote };
    Ok(QuotedFlow {
        client: inner.dst_addr,
        client_port: quote[1],
        vip_port: quote[0],
        proto: inner.proto,
    })
}
