//! L2 to L4 parsing: Ethernet with at most one 802.1Q tag, IPv4 (options
//! skipped by IHL), TCP and UDP ports.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr, vlan::VlanHdr};

/// EtherType of IPv4, network byte order as read from the frame.
const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// EtherType of an 802.1Q tag.
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
/// IPv4 "more fragments" flag and fragment offset bits (RFC 791).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// The one bounds-check helper: a pointer to a `T` at `offset` bytes into the
/// frame, or `None` when the frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

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

/// An IPv4 header found in the frame, with its length.
pub struct Ipv4 {
    /// The header in the frame.
    pub hdr: *mut Ipv4Hdr,
    /// Header length from IHL, 20 to 60 bytes.
    pub len: usize,
}

/// The IPv4 header at `offset`; `Err(DropMalformed)` when truncated, when the
/// version is not 4 or IHL is below 5.
#[inline(always)]
pub fn ipv4_at(ctx: &XdpContext, offset: usize) -> Result<Ipv4, Outcome> {
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let vihl = unsafe { (*hdr).vihl };
    let len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || len < Ipv4Hdr::LEN {
        return Err(Outcome::DropMalformed);
    }
    Ok(Ipv4 { hdr, len })
}

/// Whether the packet is a fragment (first or later): MF set or offset non-zero.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0
}

/// Source and destination ports, network byte order.
pub type Ports = ([u8; 2], [u8; 2]);

/// Source and destination ports (network byte order) of the TCP or UDP header
/// at `offset`. `Ok(None)` for other protocols; `Err(DropMalformed)` when the
/// header (20 bytes for TCP, 8 for UDP) is truncated.
#[inline(always)]
pub fn ports_at(ctx: &XdpContext, offset: usize, proto: u8) -> Result<Option<Ports>, Outcome> {
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        return Ok(Some(unsafe { ((*tcp).source, (*tcp).dest) }));
    }
    if proto == PROTO_UDP {
        let udp: *const UdpHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        return Ok(Some(unsafe { ((*udp).src, (*udp).dst) }));
    }
    Ok(None)
}
