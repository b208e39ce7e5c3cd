//! IPv6 packets: the source filter, extension headers and fragments,
//! ICMPv6 to a VIP address, and the flow of a TCP or UDP packet.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrKey, FAMILY_V6, FlowKey, Globals, Outcome, PROTO_ICMPV6};
use network_types::ip::Ipv6Hdr;

use super::{
    Inner, Packet,
    filter::{screen, source_allowed_v6},
    step::Step,
};
use crate::{
    icmp::{Icmp, v6 as icmp6},
    maps::is_vip_address,
    parse::{L3, flow_ports_at, ipv6_at},
};

/// Processes the IPv6 packet at `l3`. No [`super::shortcut`] here (choose
/// makes every choice): its stack frame on top of this step's would pass
/// the 512 bytes the entry and one subprogram may have together.
// A subprogram of its own: its stack frame does not add to the others'.
#[inline(never)]
pub(super) fn parse(ctx: &XdpContext, globals: &Globals, l3: usize, p: *mut Packet) -> Step {
    // The frame's length, for the counters (as the IPv4 step takes it).
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    Step::or_verdict(try_parse(ctx, globals, l3, bytes, p))
}

#[inline(always)]
fn try_parse(
    ctx: &XdpContext,
    globals: &Globals,
    l3: usize,
    bytes: u64,
    p: *mut Packet,
) -> Result<Step, Outcome> {
    let hdr: *const Ipv6Hdr = crate::parse::ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at; fields copied out.
    let (vcf, payload_len, src, dst) = unsafe {
        (
            (*hdr).vcf,
            (*hdr).payload_len,
            (*hdr).src_addr,
            (*hdr).dst_addr,
        )
    };

    // Source filter first; NDP and other traffic for this host pass. A set
    // VIP-address bit is confirmed wherever it drops or answers the packet
    // (as in the IPv4 path).
    let dst_key = AddrKey::v6(dst);
    if let Some(done) = screen(globals, &dst_key, || source_allowed_v6(src)) {
        return done;
    }
    let fields = Fields {
        vcf,
        payload_len,
        src,
        dst,
    };
    match vip_address(ctx, l3, bytes, p, &fields, &dst_key) {
        Err(_) if !is_vip_address(&dst_key) => Ok(Step::verdict(Outcome::Passed)),
        done => done,
    }
}

/// The IPv6 header's fields [`vip_address`] needs, copied out.
struct Fields {
    vcf: [u8; 4],
    payload_len: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
}

/// A packet to a VIP address (or to an address that shares its filter
/// bit): extension headers, fragments, ICMPv6, the flow.
#[inline(always)]
fn vip_address(
    ctx: &XdpContext,
    l3: usize,
    bytes: u64,
    p: *mut Packet,
    fields: &Fields,
    dst_key: &AddrKey,
) -> Result<Step, Outcome> {
    let Fields {
        vcf,
        payload_len,
        src,
        dst,
    } = fields;
    let ip = ipv6_at(ctx, l3)?;
    if ip.fragment {
        return Err(Outcome::DropFragment);
    }
    let (flow, icmp_error, syn) = if ip.proto == PROTO_ICMPV6 {
        if !is_vip_address(dst_key) {
            return Ok(Step::verdict(Outcome::Passed));
        }
        match icmp6::classify(ctx, ip.l4)? {
            Icmp::EchoRequest => return icmp6::echo_reply(ctx, l3, ip.l4).map(Step::verdict),
            // NDP and the rest: the kernel's (a VIP address on the link
            // needs its neighbour discovery).
            Icmp::Other => return Ok(Step::verdict(Outcome::Passed)),
            Icmp::Error => {
                let q = icmp6::quoted_flow(ctx, ip.l4, dst)?;
                let flow = FlowKey::new(
                    FAMILY_V6,
                    q.client,
                    *dst,
                    q.client_port,
                    q.vip_port,
                    q.proto,
                );
                (flow, true, false)
            }
        }
    } else {
        let Some(((sport, dport), syn)) = flow_ports_at(ctx, ip.l4, ip.proto)? else {
            // Another protocol: no VIP takes it (the caller passes it when
            // the address is no VIP's after all).
            return Err(Outcome::DropNoVip);
        };
        let flow = FlowKey::new(FAMILY_V6, *src, *dst, sport, dport, ip.proto);
        (flow, false, syn)
    };
    let len = u16::from_be_bytes(*payload_len)
        .checked_add(Ipv6Hdr::LEN as u16)
        .ok_or(Outcome::DropMalformed)?;
    // SAFETY: the caller's packet, written whole.
    unsafe {
        p.write(Packet::new(
            flow,
            Inner {
                l3,
                family: L3::V6,
                len,
                tos: (u32::from_be_bytes(*vcf) >> 20) as u8,
                df: true,
                options: false,
            },
            *src,
            icmp_error,
            syn,
            bytes,
        ));
    }
    Ok(Step::CHOOSE)
}
