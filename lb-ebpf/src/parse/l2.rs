//! Ethernet, with at most one 802.1Q tag.

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use super::ptr_at;

/// EtherType of IPv4, network byte order as read from the frame.
const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// EtherType of IPv6, network byte order as read from the frame.
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
/// EtherType of an 802.1Q tag.
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();

/// The network layer of a frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where the IP header of a frame starts (14, or 18 with a VLAN tag) and
/// its family. `Ok(None)` for frames that are neither IPv4 nor IPv6; `Err`
/// when truncated.
#[inline(always)]
pub fn l3_offset(ctx: &XdpContext) -> Result<Option<(usize, L3)>, Outcome> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
    }
    Ok(match ether_type {
        ETH_P_IP => Some((offset, L3::V4)),
        ETH_P_IPV6 => Some((offset, L3::V6)),
        _ => None,
    })
}

/// Sets the EtherType of the frame's network layer (after the VLAN tag
/// when `l3` says there is one), for a packet whose outermost IP header
/// changed family.
#[inline(always)]
pub fn set_ether_type(ctx: &XdpContext, l3: usize, family: L3) -> Result<(), Outcome> {
    let value = match family {
        L3::V4 => ETH_P_IP,
        L3::V6 => ETH_P_IPV6,
    };
    let at = if l3 > EthHdr::LEN { l3 - 2 } else { 12 };
    let field: *mut u16 = super::ptr_at_fresh(ctx, at).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at_fresh.
    unsafe { *field = value };
    Ok(())
}
