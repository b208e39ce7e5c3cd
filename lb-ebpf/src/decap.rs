//! The backend side: strip the outer IPv4 header of IPIP packets sent to this
//! host for a VIP it serves. Everything else passes untouched.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{AddrKey, Outcome, PROTO_IPIP};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    maps::{DECAP_LOCAL, DECAP_VIPS},
    parse::{ipv4_at, is_fragment, l3_offset_v4, ptr_at},
};

/// Decapsulates the frame when it is IPIP to a local address carrying an
/// IPv4 packet for a served VIP: `Decapsulated`. Otherwise `Passed`, with the
/// frame unchanged (this program never drops).
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Outcome {
    match decap(ctx) {
        Some(()) => Outcome::Decapsulated,
        None => Outcome::Passed,
    }
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<()> {
    let l3 = l3_offset_v4(ctx).ok()??;
    let outer = ipv4_at(ctx, l3).ok()?;
    // SAFETY: bounds checked by ipv4_at.
    let hdr = unsafe { &*outer.hdr };
    if hdr.proto != PROTO_IPIP || is_fragment(hdr) {
        return None;
    }
    DECAP_LOCAL.get_ptr(AddrKey::v4(hdr.dst_addr))?;
    let inner = ipv4_at(ctx, l3 + outer.len).ok()?;
    // SAFETY: bounds checked by ipv4_at.
    DECAP_VIPS.get_ptr(AddrKey::v4(unsafe { (*inner.hdr).dst_addr }))?;

    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at; copied before the frame moves.
    let eth = unsafe { *eth };
    let vlan = if l3 > EthHdr::LEN {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN)?;
        Some(unsafe { *vlan })
    } else {
        None
    };
    // SAFETY: a positive delta shrinks the frame from the front by the outer
    // header's length (20 to 60 bytes); old packet pointers become invalid.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer.len as i32) } != 0 {
        return None;
    }
    let new_eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe { *new_eth = eth };
    if let Some(vlan) = vlan {
        let new_vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN)?;
        unsafe { *new_vlan = vlan };
    }
    Some(())
}
