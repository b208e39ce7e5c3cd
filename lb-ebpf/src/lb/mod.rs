//! The load balancer's path for one packet: source filter, ICMP to a VIP
//! address, VIP lookup and the VIP's own source list, backend selection
//! (connection table, Maglev), encapsulation or "too big", next hop.
//! Returns the outcome; the entry point in main.rs counts it and turns it
//! into an XDP action.

use aya_ebpf::{helpers::generated::bpf_redirect, programs::XdpContext};
use lb_common::{
    AddrKey, FlowKey, GLOBAL_F_READY, GLOBAL_F_SCOPE_ALL, Outcome, PROTO_ICMP, VIP_F_OWN_ALLOW,
    VIP_F_PASS_ON_NO_BACKEND, VipValue, flow_hash_v4,
    rules::{FilterVerdict, filter_verdict, vip_source_allowed},
};
use network_types::ip::Ipv4Hdr;

pub mod filter;
pub mod icmp;
pub mod select;

use filter::{source_allowed_v4, source_allowed_vip_v4};
use icmp::Icmp;
use select::{find_vip_v4, flow_backend, lookup_backend};

use crate::{
    encap::{self, OuterV4},
    maps::{LB_BE_STATS, LB_GLOBALS, LB_VIP_ADDRS, LB_VIP_DROPS, LB_VIP_STATS, count},
    nexthop::{self, NextHop},
    parse::{ipv4_at, is_fragment, l3_offset_v4, ports_at},
};

/// IPv4 "don't fragment" flag, as the frags field reads (RFC 791).
const IP_DF: u16 = 0x4000;

/// The flow a packet belongs to, client to VIP; ports in network byte order.
struct Flow {
    client: [u8; 4],
    vip: [u8; 4],
    client_port: [u8; 2],
    vip_port: [u8; 2],
    proto: u8,
}

/// Processes one frame of `bytes` bytes. `Ok` and `Err` both carry the
/// outcome; `Err` is taken by `?` on a parse or lookup failure.
#[inline(always)]
pub fn try_lb(ctx: &XdpContext, bytes: u64) -> Result<Outcome, Outcome> {
    let Some(globals) = LB_GLOBALS.get(0) else {
        return Ok(Outcome::Passed);
    };
    if globals.flags & GLOBAL_F_READY == 0 {
        return Ok(Outcome::Passed);
    }
    let Some(l3) = l3_offset_v4(ctx)? else {
        return Ok(Outcome::Passed);
    };
    let ip = ipv4_at(ctx, l3)?;
    // SAFETY: bounds checked by ipv4_at; fields are copied out before the
    // frame is changed.
    let hdr: &Ipv4Hdr = unsafe { &*ip.hdr };
    let (src, dst, proto, tos) = (hdr.src_addr, hdr.dst_addr, hdr.proto, hdr.tos);
    let frags = u16::from_be_bytes(hdr.frags);
    let inner_len = u16::from_be_bytes(hdr.tot_len);

    // Source filter first, so unwanted sources cost the least (SPEC 4).
    let for_vip_addr = LB_VIP_ADDRS.get_ptr(AddrKey::v4(dst)).is_some();
    match filter_verdict(
        globals.flags & GLOBAL_F_SCOPE_ALL != 0,
        for_vip_addr,
        || source_allowed_v4(src),
    ) {
        FilterVerdict::Drop => return Err(Outcome::DropSourceFilter),
        FilterVerdict::Pass => return Ok(Outcome::Passed),
        FilterVerdict::ToVipAddress => {}
    }
    // A fragment has no ports to hash on (later fragments carry no L4 header).
    if is_fragment(hdr) {
        return Err(Outcome::DropFragment);
    }
    let l4 = l3 + ip.len;
    // An ICMP error is about a flow whose packets went the other way (a DSR
    // reply from the VIP): it follows that flow to its backend.
    let (flow, icmp_error) = if proto == PROTO_ICMP {
        match icmp::classify(ctx, l4)? {
            Icmp::EchoRequest => return icmp::echo_reply(ctx, l3, ip.len),
            Icmp::Other => return Ok(Outcome::Passed),
            Icmp::Error => {
                let q = icmp::quoted_flow(ctx, l4, dst)?;
                let flow = Flow {
                    client: q.client,
                    vip: dst,
                    client_port: q.client_port,
                    vip_port: q.vip_port,
                    proto: q.proto,
                };
                (flow, true)
            }
        }
    } else {
        let Some((sport, dport)) = ports_at(ctx, l4, proto)? else {
            return Ok(Outcome::Passed);
        };
        let flow = Flow {
            client: src,
            vip: dst,
            client_port: sport,
            vip_port: dport,
            proto,
        };
        (flow, false)
    };
    let Some(vip) = find_vip_v4(flow.vip, flow.vip_port, flow.proto) else {
        return if icmp_error {
            Err(Outcome::DropIcmpNotFromVip)
        } else {
            Ok(Outcome::Passed)
        };
    };
    // The VIP's own list narrows the perimeter for its clients. An ICMP
    // error comes from a router on the path, not from the client: only the
    // global filter applies to it.
    if !icmp_error
        && !vip_source_allowed(vip.flags & VIP_F_OWN_ALLOW != 0, || {
            source_allowed_vip_v4(vip.vip_id, src)
        })
    {
        count(&LB_VIP_DROPS, vip.vip_id, bytes);
        return Err(Outcome::DropVipSourceFilter);
    }
    count(&LB_VIP_STATS, vip.vip_id, bytes);

    let hash = flow_hash_v4(
        flow.client,
        flow.vip,
        flow.client_port,
        flow.vip_port,
        flow.proto,
    );
    let key = FlowKey::v4(
        flow.client,
        flow.vip,
        flow.client_port,
        flow.vip_port,
        flow.proto,
    );
    let chosen = if icmp_error {
        lookup_backend(vip, &key, hash)
    } else {
        flow_backend(vip, &key, hash, bytes)
    };
    let Some((backend_id, backend)) = chosen else {
        return no_backend(vip);
    };
    let Some(tot_len) = inner_len.checked_add(Ipv4Hdr::LEN as u16) else {
        return Err(Outcome::DropEncap);
    };
    let outer = OuterV4 {
        src: globals.encap_src_v4,
        dst: [
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ],
        tos,
        tot_len,
    };
    // Route before touching the frame, so a packet we cannot send is left
    // intact; a packet that would not fit is answered, or dropped.
    let next_hop = nexthop::lookup_v4(ctx, outer.src, outer.dst, tot_len);
    let mtu = match next_hop {
        NextHop::NoRoute => return Err(Outcome::DropNoRoute),
        NextHop::FragNeeded { mtu } => Some(mtu),
        _ if globals.encap_mtu != 0 && u32::from(tot_len) > globals.encap_mtu => {
            Some(globals.encap_mtu as u16)
        }
        NextHop::Resolved { .. } | NextHop::NoNeighbour => None,
    };
    if let Some(mtu) = mtu {
        return too_big(ctx, l3, ip.len, frags, mtu, globals.too_big_per_cpu);
    }
    encap::push_ipv4(ctx, l3, &outer)?;
    count(&LB_BE_STATS, backend_id, bytes);

    match next_hop {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            encap::set_macs(ctx, smac, dmac)?;
            if ifindex != ctx.ingress_ifindex() as u32 {
                // SAFETY: plain helper call; returns XDP_REDIRECT for flags 0.
                unsafe { bpf_redirect(ifindex, 0) };
                Ok(Outcome::Redirected)
            } else if icmp_error {
                Ok(Outcome::IcmpForwarded)
            } else {
                Ok(Outcome::Forwarded)
            }
        }
        // The frame still carries our own MAC as destination: the kernel
        // routes the encapsulated packet, resolving the neighbour as it does.
        _ => Ok(Outcome::PassedNoNeighbour),
    }
}

/// The rule for a packet that would exceed `mtu` once encapsulated: with DF
/// set (and no IP options to quote around), "fragmentation needed" back to
/// the client with the MTU left for the inner packet; without DF, dropped
/// (XDP cannot fragment).
#[inline(always)]
fn too_big(
    ctx: &XdpContext,
    l3: usize,
    ip_len: usize,
    frags: u16,
    mtu: u16,
    per_second: u32,
) -> Result<Outcome, Outcome> {
    if frags & IP_DF == 0 {
        return Err(Outcome::DropTooBigNoDf);
    }
    if ip_len != Ipv4Hdr::LEN {
        return Err(Outcome::DropEncap);
    }
    encap::too_big::reply(ctx, l3, mtu.saturating_sub(Ipv4Hdr::LEN as u16), per_second)
}

/// The rule for a VIP without a usable backend (`on_no_backend`).
#[inline(always)]
fn no_backend(vip: &VipValue) -> Result<Outcome, Outcome> {
    if vip.flags & VIP_F_PASS_ON_NO_BACKEND != 0 {
        Ok(Outcome::PassedNoBackend)
    } else {
        Err(Outcome::DropNoBackend)
    }
}
