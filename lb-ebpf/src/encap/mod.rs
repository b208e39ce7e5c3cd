//! Outer headers toward a backend: IP-in-IP and GUE over IPv4 or IPv6
//! ([`outer`]), their checksums ([`csum`]), the answers when a packet would
//! not fit (ICMP [`too_big`], ICMPv6 [`ptb`]), and the Ethernet addresses
//! of the frame sent.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    },
    programs::XdpContext,
};
use lb_common::{Outcome, rules::take_token};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    maps::LB_ICMP_BUCKET,
    parse::{ptr_at, ptr_at_fresh},
};

pub mod csum;
pub mod outer;
pub mod ptb;
pub mod too_big;

pub use outer::{Outer, push};

/// Sets the Ethernet addresses of the frame.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: [u8; 6], dst: [u8; 6]) -> Result<(), Outcome> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).src_addr = src;
        (*eth).dst_addr = dst;
    }
    Ok(())
}

/// Takes a token from this CPU's bucket of "too big" answers (`per_second`
/// is `icmp.too_big_per_cpu`, [`take_token`]); `Err(TooBigSuppressed)`
/// when it is empty.
#[inline(always)]
pub fn too_big_token(per_second: u32) -> Result<(), Outcome> {
    let bucket = LB_ICMP_BUCKET
        .get_ptr_mut(0)
        .ok_or(Outcome::TooBigSuppressed)?;
    // SAFETY: the per-CPU value has no other writer on this CPU while we run.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if take_token(bucket, now, per_second) {
        Ok(())
    } else {
        Err(Outcome::TooBigSuppressed)
    }
}

/// Makes the frame room for an answer to its sender, in place: `pushed`
/// bytes in front of the IP header at `l3` (so the offending packet starts
/// at `l3 + pushed`, where the quote goes), the frame cut to
/// `l3 + pushed + quote_len` bytes, and the Ethernet header (and 802.1Q
/// tag) written back in front with the MACs swapped. `Err(DropMalformed)`
/// when the L2 headers cannot be read, `Err(DropEncap)` when the frame
/// cannot grow or is shorter than the quote. Every packet pointer taken
/// before is invalid after: copy what the answer needs first.
#[inline(always)]
pub fn reply_room(
    ctx: &XdpContext,
    l3: usize,
    pushed: usize,
    quote_len: usize,
) -> Result<(), Outcome> {
    let (eth, vlan) = l2_headers(ctx, l3)?;
    // SAFETY: plain helper calls on our context; every packet pointer is
    // taken again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(pushed as i32)) } != 0 {
        return Err(Outcome::DropEncap);
    }
    let len = ctx.data_end() - ctx.data();
    let want = l3 + pushed + quote_len;
    // SAFETY: the context's own frame; the helper checks the new length.
    if len < want || unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(Outcome::DropEncap);
    }
    let swapped = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: eth.ether_type,
    };
    write_l2_headers(ctx, swapped, vlan)
}

/// The frame's L2 headers, copied out before the frame moves: Ethernet,
/// and the 802.1Q tag when the IP header at `l3` is past one.
/// `Err(DropMalformed)` when they cannot be read.
#[inline(always)]
pub fn l2_headers(ctx: &XdpContext, l3: usize) -> Result<(EthHdr, Option<VlanHdr>), Outcome> {
    let eth: *const EthHdr = ptr_at_fresh(ctx, 0).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at_fresh; copied.
    let eth = unsafe { *eth };
    let vlan = if l3 > EthHdr::LEN {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        Some(unsafe { *vlan })
    } else {
        None
    };
    Ok((eth, vlan))
}

/// Writes L2 headers (from [`l2_headers`]) at the front of a frame that
/// moved. `Err(DropEncap)` when the frame is too short for them.
#[inline(always)]
pub fn write_l2_headers(
    ctx: &XdpContext,
    eth: EthHdr,
    vlan: Option<VlanHdr>,
) -> Result<(), Outcome> {
    let new_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *new_eth = eth };
    if let Some(vlan) = vlan {
        let new_vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropEncap)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *new_vlan = vlan };
    }
    Ok(())
}
