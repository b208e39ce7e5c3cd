//! Ethernet, with at most one 802.1Q tag.

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::{eth::EthHdr, vlan::VlanHdr};

use super::ptr_at;

/// EtherType of IPv4, network byte order as read from the frame.
const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// EtherType of an 802.1Q tag.
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();

/// Where the IPv4 header of a frame starts: 14, or 18 with a VLAN tag.
/// `Ok(None)` for frames that are not IPv4; `Err` when truncated.
#[inline(always)]
pub fn l3_offset_v4(ctx: &XdpContext) -> Result<Option<usize>, Outcome> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        ether_type = unsafe { (*vlan).ether_type };
        offset += VlanHdr::LEN;
    }
    if ether_type != ETH_P_IP {
        return Ok(None);
    }
    Ok(Some(offset))
}
