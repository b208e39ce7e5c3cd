//! Outer headers toward a backend, by the backend's family and the
//! encapsulation kind: IPv4 (RFC 2003 IP-in-IP, protocol 4; or 41 for an
//! IPv6 inner packet) or IPv6 (RFC 2473, next header 41 or 4), optionally
//! followed by a UDP header for GUE variant 1 ("direct IP encapsulation":
//! the inner IP packet right after UDP, draft-ietf-intarea-gue section 4).

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Outcome, PROTO_IPIP, PROTO_IPV6, PROTO_UDP};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use super::csum;
use crate::parse::{L3, ptr_at, set_ether_type};

/// IPv4 "don't fragment" flag (RFC 791), as the frags field reads.
const IP_DF: [u8; 2] = [0x40, 0x00];
/// TTL / hop limit of outer headers; 63 in the upgrade test's
/// variant build.
const OUTER_TTL: u8 = if cfg!(feature = "test-outer-ttl-63") {
    63
} else {
    64
};

/// The outer headers to push.
pub struct Outer {
    /// Family of the outer header (the backend's).
    pub family: L3,
    /// Outer source (the load balancer's), IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    /// Outer destination (the backend), IPv4 in the first 4 bytes.
    pub dst: [u8; 16],
    /// Family of the inner packet.
    pub inner: L3,
    /// Length of the inner IP packet in bytes.
    pub inner_len: u16,
    /// The inner packet's DSCP/ECN byte, copied so QoS survives the tunnel.
    pub tos: u8,
    /// The flow's hash: the IPv6 flow label and the GUE source port.
    pub flow_hash: u32,
    /// GUE destination port; `None` for IP-in-IP.
    pub gue_port: Option<u16>,
}

impl Outer {
    /// Bytes pushed in front of the inner packet: 20 or 40, plus 8 for GUE.
    #[inline(always)]
    pub fn overhead(&self) -> u16 {
        let ip = match self.family {
            L3::V4 => Ipv4Hdr::LEN,
            L3::V6 => Ipv6Hdr::LEN,
        };
        (ip + if self.gue_port.is_some() {
            UdpHdr::LEN
        } else {
            0
        }) as u16
    }

    /// The outer packet's length, `None` past 65535.
    #[inline(always)]
    pub fn total_len(&self) -> Option<u16> {
        self.inner_len.checked_add(self.overhead())
    }

    /// Protocol number of what follows the outer IP header.
    #[inline(always)]
    fn next_header(&self) -> u8 {
        match (self.gue_port, self.inner) {
            (Some(_), _) => PROTO_UDP,
            (None, L3::V4) => PROTO_IPIP,
            (None, L3::V6) => PROTO_IPV6,
        }
    }
}

/// Inserts `outer` between the L2 header and the packet at `l3` (14, or
/// 18 with a VLAN tag); the Ethernet header and tag are kept, the
/// EtherType follows the outer family; the inner packet is not touched.
/// `Err(DropEncap)` when the frame cannot grow.
#[inline(always)]
pub fn push(ctx: &XdpContext, l3: usize, outer: &Outer) -> Result<(), Outcome> {
    let total = outer.total_len().ok_or(Outcome::DropEncap)?;
    let (eth, vlan) = super::l2_headers(ctx, l3)?;
    let pushed = i32::from(outer.overhead());
    // SAFETY: ctx.ctx is the program's context; a negative delta grows the
    // headroom. Every packet pointer taken before this call is now invalid.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -pushed) } != 0 {
        return Err(Outcome::DropEncap);
    }
    super::write_l2_headers(ctx, eth, vlan)?;
    set_ether_type(ctx, l3, outer.family)?;

    let udp_at = match outer.family {
        L3::V4 => {
            let mut hdr = Ipv4Hdr {
                vihl: 0x45,
                tos: outer.tos,
                tot_len: total.to_be_bytes(),
                id: [0, 0],
                frags: IP_DF,
                ttl: OUTER_TTL,
                proto: outer.next_header(),
                check: [0, 0],
                src_addr: [outer.src[0], outer.src[1], outer.src[2], outer.src[3]],
                dst_addr: [outer.dst[0], outer.dst[1], outer.dst[2], outer.dst[3]],
            };
            hdr.check = csum::ipv4_header(&hdr);
            let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropEncap)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe { *ip = hdr };
            l3 + Ipv4Hdr::LEN
        }
        L3::V6 => {
            // Version 6, traffic class from the inner packet, flow label from
            // the flow hash (RFC 6437: stable per flow).
            let vcf = 6u32 << 28 | u32::from(outer.tos) << 20 | (outer.flow_hash & 0x000f_ffff);
            let hdr = Ipv6Hdr {
                vcf: vcf.to_be_bytes(),
                payload_len: (total - Ipv6Hdr::LEN as u16).to_be_bytes(),
                next_hdr: outer.next_header(),
                hop_limit: OUTER_TTL,
                src_addr: outer.src,
                dst_addr: outer.dst,
            };
            let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropEncap)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe { *ip = hdr };
            l3 + Ipv6Hdr::LEN
        }
    };
    if let Some(port) = outer.gue_port {
        let sport = lb_common::rules::gue_source_port(outer.flow_hash);
        let udp: *mut UdpHdr = ptr_at(ctx, udp_at).ok_or(Outcome::DropEncap)?;
        // SAFETY: bounds checked by ptr_at. Checksum 0: allowed over IPv4
        // (RFC 768) and, for tunnels, over IPv6 (RFC 6935, RFC 6936); the
        // inner packet carries its own checksums.
        unsafe {
            *udp = UdpHdr {
                src: sport.to_be_bytes(),
                dst: port.to_be_bytes(),
                len: (outer.inner_len + UdpHdr::LEN as u16).to_be_bytes(),
                check: [0, 0],
            };
        }
    }
    Ok(())
}
