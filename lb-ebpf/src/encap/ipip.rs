//! IPv4-in-IPv4 encapsulation (RFC 2003) toward a backend.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Outcome, PROTO_IPIP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};

use super::csum;
use crate::parse::ptr_at;

/// Outer IPv4 "don't fragment" flag (RFC 791), as the frags field reads.
const IP_DF: [u8; 2] = [0x40, 0x00];
/// TTL of outer headers (SPEC 6); 63 in the upgrade test's variant build.
const OUTER_TTL: u8 = if cfg!(feature = "test-outer-ttl-63") {
    63
} else {
    64
};

/// The outer IPv4 header to push.
pub struct OuterV4 {
    /// Outer source address (the load balancer's), network byte order.
    pub src: [u8; 4],
    /// Outer destination address (the backend's), network byte order.
    pub dst: [u8; 4],
    /// TOS byte copied from the inner header, so DSCP survives the tunnel.
    pub tos: u8,
    /// Total length of the outer packet (inner total length + 20).
    pub tot_len: u16,
}

/// Inserts an outer IPv4 header between the L2 header and the IPv4 packet
/// starting at `l3` (14, or 18 with a VLAN tag). The Ethernet header and the
/// VLAN tag are kept as they were; the inner packet is not touched.
/// `Err(DropEncap)` when the frame cannot grow.
#[inline(always)]
pub fn push_ipv4(ctx: &XdpContext, l3: usize, outer: &OuterV4) -> Result<(), Outcome> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at; copied before the frame moves.
    let eth = unsafe { *eth };
    let vlan = if l3 > EthHdr::LEN {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropMalformed)?;
        Some(unsafe { *vlan })
    } else {
        None
    };

    // SAFETY: ctx.ctx is the program's context; a negative delta grows the
    // headroom. Every packet pointer taken before this call is now invalid.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(Ipv4Hdr::LEN as i32)) } != 0 {
        return Err(Outcome::DropEncap);
    }

    let new_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropEncap)?;
    unsafe { *new_eth = eth };
    if let Some(vlan) = vlan {
        let new_vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropEncap)?;
        unsafe { *new_vlan = vlan };
    }

    let mut hdr = Ipv4Hdr {
        vihl: 0x45,
        tos: outer.tos,
        tot_len: outer.tot_len.to_be_bytes(),
        id: [0, 0],
        frags: IP_DF,
        ttl: OUTER_TTL,
        proto: PROTO_IPIP,
        check: [0, 0],
        src_addr: outer.src,
        dst_addr: outer.dst,
    };
    hdr.check = csum::ipv4_header(&hdr);
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *ip = hdr };
    Ok(())
}
