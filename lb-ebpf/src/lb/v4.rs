//! IPv4 packets: the source filter, fragments, ICMP to a VIP address, and
//! the flow of a TCP or UDP packet.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrKey, FlowKey, Globals, Outcome, PROTO_ICMP};
use network_types::ip::Ipv4Hdr;

use super::{
    Choice, Inner, Packet,
    filter::{screen, source_allowed_v4},
    step::Step,
};
use crate::{
    icmp::{self, Icmp},
    maps::is_vip_address,
    parse::{L3, flow_ports_at, ipv4_at, is_fragment},
};

/// IPv4 "don't fragment" flag, as the frags field reads (RFC 791).
const IP_DF: u16 = 0x4000;

/// Processes the IPv4 packet at `l3`, and ends with the
/// [`super::shortcut`] of an established flow (`c`: the choice it writes).
// A subprogram of its own: its stack frame does not add to the others'.
#[inline(never)]
pub(super) fn parse(
    ctx: &XdpContext,
    globals: &Globals,
    l3: usize,
    p: *mut Packet,
    c: *mut Choice,
) -> Step {
    // The frame's length, for the counters (the entry's own figure: a
    // sixth argument is more than a BPF call can pass).
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    match try_parse(ctx, globals, l3, bytes, p) {
        Ok(Step::CHOOSE) => super::shortcut(ctx, globals, p, c),
        step => Step::or_verdict(step),
    }
}

#[inline(always)]
fn try_parse(
    ctx: &XdpContext,
    globals: &Globals,
    l3: usize,
    bytes: u64,
    p: *mut Packet,
) -> Result<Step, Outcome> {
    let ip = ipv4_at(ctx, l3)?;
    // SAFETY: bounds checked by ipv4_at; fields are copied out before the
    // frame is changed.
    let hdr: &Ipv4Hdr = unsafe { &*ip.hdr };
    let (src, dst, proto) = (hdr.src_addr, hdr.dst_addr, hdr.proto);

    // Source filter first, so unwanted sources cost the least. The
    // VIP-address filter answers "maybe" for a few other addresses: what
    // drops or answers a packet because it is for a VIP address confirms
    // it (`vip_address` below, and ICMP), the rest needs no confirmation
    // (a packet that matches no VIP passes).
    let dst_key = AddrKey::v4(dst);
    if let Some(done) = screen(globals, &dst_key, || source_allowed_v4(src)) {
        return done;
    }
    if proto == PROTO_ICMP && !is_vip_address(&dst_key) {
        return Ok(Step::verdict(Outcome::Passed));
    }
    match vip_address(ctx, l3, bytes, p, ip.len, hdr) {
        Err(_) if !is_vip_address(&dst_key) => Ok(Step::verdict(Outcome::Passed)),
        done => done,
    }
}

/// A packet to a VIP address (or to an address that shares its filter
/// bit): fragments, ICMP, the flow.
#[inline(always)]
fn vip_address(
    ctx: &XdpContext,
    l3: usize,
    bytes: u64,
    p: *mut Packet,
    ip_len: usize,
    hdr: &Ipv4Hdr,
) -> Result<Step, Outcome> {
    let (src, dst, proto, tos) = (hdr.src_addr, hdr.dst_addr, hdr.proto, hdr.tos);
    let df = u16::from_be_bytes(hdr.frags) & IP_DF != 0;
    let len = u16::from_be_bytes(hdr.tot_len);
    // A fragment has no ports to hash on (later fragments carry no L4 header).
    if is_fragment(hdr) {
        return Err(Outcome::DropFragment);
    }
    let l4 = l3 + ip_len;
    let (flow, icmp_error, syn) = if proto == PROTO_ICMP {
        match icmp::v4::classify(ctx, l4)? {
            Icmp::EchoRequest => return icmp::v4::echo_reply(ctx, l3, ip_len).map(Step::verdict),
            // Not echo, not an error: nothing the node answers for a
            // VIP address (the caller passes it when the address is no
            // VIP's after all).
            Icmp::Other => return Err(Outcome::DropNoVip),
            Icmp::Error => {
                let q = icmp::v4::quoted_flow(ctx, l4, dst)?;
                let flow = FlowKey::v4(q.client, dst, q.client_port, q.vip_port, q.proto);
                (flow, true, false)
            }
        }
    } else {
        let Some(((sport, dport), syn)) = flow_ports_at(ctx, l4, proto)? else {
            // Another protocol: no VIP takes it.
            return Err(Outcome::DropNoVip);
        };
        let flow = FlowKey::v4(src, dst, sport, dport, proto);
        (flow, false, syn)
    };
    // SAFETY: the caller's packet, written whole.
    unsafe {
        p.write(Packet::new(
            flow,
            Inner {
                l3,
                family: L3::V4,
                len,
                tos,
                df,
                options: ip_len != Ipv4Hdr::LEN,
            },
            AddrKey::v4(src).addr,
            icmp_error,
            syn,
            bytes,
        ));
    }
    Ok(Step::CHOOSE)
}
