//! The load balancer's path for one packet: source filter, VIP lookup,
//! Maglev selection, encapsulation, next hop. Returns the outcome; the entry
//! point in main.rs counts it and turns it into an XDP action.

use aya_ebpf::{helpers::generated::bpf_redirect, programs::XdpContext};
use lb_common::{
    AddrKey, FlowKey, GLOBAL_F_READY, GLOBAL_F_SCOPE_ALL, Outcome, VIP_F_PASS_ON_NO_BACKEND,
    VipValue, flow_hash_v4,
    rules::{FilterVerdict, filter_verdict},
};
use network_types::ip::Ipv4Hdr;

pub mod filter;
pub mod select;

use filter::source_allowed_v4;
use select::{find_vip_v4, flow_backend};

use crate::{
    encap::{self, OuterV4},
    maps::{LB_BE_STATS, LB_GLOBALS, LB_VIP_ADDRS, LB_VIP_STATS, count},
    nexthop::{self, NextHop},
    parse::{ipv4_at, is_fragment, l3_offset_v4, ports_at},
};

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
    let Some((sport, dport)) = ports_at(ctx, l3 + ip.len, proto)? else {
        return Ok(Outcome::Passed);
    };
    let Some(vip) = find_vip_v4(dst, dport, proto) else {
        return Ok(Outcome::Passed);
    };
    count(&LB_VIP_STATS, vip.vip_id, bytes);

    let hash = flow_hash_v4(src, dst, sport, dport, proto);
    let flow = FlowKey::v4(src, dst, sport, dport, proto);
    let Some((backend_id, backend)) = flow_backend(vip, &flow, hash, bytes) else {
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
    // Route before touching the frame, so a packet we cannot send is left intact.
    let next_hop = nexthop::lookup_v4(ctx, outer.src, outer.dst, tot_len);
    match next_hop {
        NextHop::NoRoute => return Err(Outcome::DropNoRoute),
        NextHop::FragNeeded => return Err(Outcome::DropEncap),
        NextHop::Resolved { .. } | NextHop::NoNeighbour => {}
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
            if ifindex == ctx.ingress_ifindex() as u32 {
                Ok(Outcome::Forwarded)
            } else {
                // SAFETY: plain helper call; returns XDP_REDIRECT for flags 0.
                unsafe { bpf_redirect(ifindex, 0) };
                Ok(Outcome::Redirected)
            }
        }
        // The frame still carries our own MAC as destination: the kernel
        // routes the encapsulated packet, resolving the neighbour as it does.
        _ => Ok(Outcome::PassedNoNeighbour),
    }
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
