//! Outer headers toward a backend: IP-in-IP and GUE over IPv4 or IPv6
//! ([`outer`]), their checksums ([`csum`]), and the Ethernet headers of
//! the frame sent.

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::parse::{ptr_at, ptr_at_fresh};

pub mod csum;
pub mod outer;

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
