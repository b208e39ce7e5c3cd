//! The backend side: strip the outer headers of packets tunnelled to this
//! host for a VIP it serves: IPv4 or IPv6 outer header, then the inner
//! packet directly (IP-in-IP: protocol 4 or 41) or after a UDP header to
//! the GUE port (GUE variant 1, the inner IP version read from its first
//! nibble). Only tunnels from the load balancers' addresses are taken
//! (`DECAP_SOURCES4`, `DECAP_SOURCES6`): one for a served VIP from any
//! other outer source is dropped and counted. An outer "congestion
//! experienced" mark is copied to an ECN-capable inner packet (RFC 6040).
//! Everything else passes untouched.

use aya_ebpf::{
    helpers::generated::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext,
};
use lb_common::{AddrKey, Outcome, PROTO_IPIP, PROTO_IPV6, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    maps::{DECAP_CONFIG, DECAP_LOCAL, DECAP_SOURCES4, DECAP_SOURCES6, DECAP_VIPS},
    parse::{L3, ipv4_at, is_fragment, l3_offset, ptr_at, ptr_at_fresh, set_ether_type},
};

/// Decapsulates the frame when it is tunnelled to a local address from a
/// load balancer and carries a packet for a served VIP: `Decapsulated`.
/// Such a tunnel from any other outer source: `DropDecapSource`.
/// Otherwise `Passed`, with the frame unchanged.
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Outcome {
    match decap(ctx) {
        Some(true) => Outcome::Decapsulated,
        Some(false) => Outcome::DropDecapSource,
        None => Outcome::Passed,
    }
}

/// What follows the outer IP header: the offset and family of the inner
/// packet, for IP-in-IP or GUE to `gue_port`.
#[inline(always)]
fn inner_of(ctx: &XdpContext, at: usize, proto: u8) -> Option<(usize, L3)> {
    match proto {
        PROTO_IPIP => Some((at, L3::V4)),
        PROTO_IPV6 => Some((at, L3::V6)),
        PROTO_UDP => {
            let port = *DECAP_CONFIG.get(0)?;
            let udp: *const UdpHdr = ptr_at(ctx, at)?;
            // SAFETY: bounds checked by ptr_at.
            if port == 0 || u32::from(u16::from_be_bytes(unsafe { (*udp).dst })) != port {
                return None;
            }
            let inner = at + UdpHdr::LEN;
            // At least an IPv4 header's worth (a 1-byte check compiles to a
            // comparison the verifier does not take as a bound).
            let start: *const [u8; Ipv4Hdr::LEN] = ptr_at(ctx, inner)?;
            // SAFETY: bounds checked by ptr_at.
            match unsafe { (*start)[0] } >> 4 {
                4 => Some((inner, L3::V4)),
                6 => Some((inner, L3::V6)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The ECN field's bits (RFC 3168): the two low bits of the IPv4 TOS byte
/// and of the IPv6 traffic class.
const ECN_MASK: u8 = 3;
/// ECN "congestion experienced".
const ECN_CE: u8 = 3;

/// RFC 6040 section 4.2 (normal mode), for an outer header marked CE: an
/// inner packet that is ECN-capable (ECT(0) or ECT(1)) is marked CE too,
/// so the congestion a router signalled on the tunnel reaches the
/// endpoints (the IPv4 header checksum updated, RFC 1624); an inner
/// packet that is not ECN-capable is left as it is (RFC 6040 would drop
/// it; a load balancer's tunnel only carries what it forwards). `None`
/// when the inner header cannot be read.
#[inline(always)]
fn congestion_experienced(ctx: &XdpContext, inner_at: usize, family: L3) -> Option<()> {
    match family {
        L3::V4 => {
            let inner: *mut Ipv4Hdr = ptr_at(ctx, inner_at)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                let tos = (*inner).tos;
                if tos & ECN_MASK != 0 && tos & ECN_MASK != ECN_CE {
                    let old = u16::from_be_bytes([(*inner).vihl, tos]);
                    let new = u16::from_be_bytes([(*inner).vihl, tos | ECN_CE]);
                    (*inner).tos = tos | ECN_CE;
                    (*inner).check = lb_common::csum::replace_u16((*inner).check, old, new);
                }
            }
        }
        L3::V6 => {
            let inner: *mut Ipv6Hdr = ptr_at(ctx, inner_at)?;
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                let ecn = ((*inner).vcf[1] >> 4) & ECN_MASK;
                if ecn != 0 && ecn != ECN_CE {
                    (*inner).vcf[1] |= ECN_CE << 4;
                }
            }
        }
    }
    Some(())
}

/// [`try_decap`]: `None` when the frame is not a tunnel to this host for a
/// served VIP; `Some(false)` when it is, from an outer source that is no
/// load balancer's; `Some(true)` once decapsulated.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<bool> {
    let (l3, outer_family) = l3_offset(ctx).ok()??;
    // The outer source, looked up only for a packet this host would
    // decapsulate (after the VIP check below).
    let (inner_at, inner_family, outer_src, outer_ecn) = match outer_family {
        L3::V4 => {
            let outer = ipv4_at(ctx, l3).ok()?;
            // SAFETY: bounds checked by ipv4_at.
            let hdr = unsafe { &*outer.hdr };
            if is_fragment(hdr) {
                return None;
            }
            DECAP_LOCAL.get_ptr(AddrKey::v4(hdr.dst_addr))?;
            let (at, family) = inner_of(ctx, l3 + outer.len, hdr.proto)?;
            (
                at,
                family,
                AddrKey::v4(hdr.src_addr).addr,
                hdr.tos & ECN_MASK,
            )
        }
        L3::V6 => {
            let hdr: *const Ipv6Hdr = ptr_at(ctx, l3)?;
            // SAFETY: bounds checked by ptr_at.
            let (next, src, dst, vcf) = unsafe {
                (
                    (*hdr).next_hdr,
                    (*hdr).src_addr,
                    (*hdr).dst_addr,
                    (*hdr).vcf,
                )
            };
            DECAP_LOCAL.get_ptr(AddrKey::v6(dst))?;
            let (at, family) = inner_of(ctx, l3 + Ipv6Hdr::LEN, next)?;
            // The traffic class's two low bits: bits 4 and 5 of byte 1.
            (at, family, src, (vcf[1] >> 4) & ECN_MASK)
        }
    };
    let vip = match inner_family {
        L3::V4 => {
            let inner: *const Ipv4Hdr = ptr_at(ctx, inner_at)?;
            // SAFETY: bounds checked by ptr_at.
            AddrKey::v4(unsafe { (*inner).dst_addr })
        }
        L3::V6 => {
            let inner: *const Ipv6Hdr = ptr_at(ctx, inner_at)?;
            // SAFETY: bounds checked by ptr_at.
            AddrKey::v6(unsafe { (*inner).dst_addr })
        }
    };
    DECAP_VIPS.get_ptr(vip)?;
    let s = outer_src;
    let from_lb = match outer_family {
        L3::V4 => DECAP_SOURCES4.get(Key::new(32, [s[0], s[1], s[2], s[3]])),
        L3::V6 => DECAP_SOURCES6.get(Key::new(128, s)),
    };
    if from_lb.is_none() {
        return Some(false);
    }

    if outer_ecn == ECN_CE {
        congestion_experienced(ctx, inner_at, inner_family)?;
    }
    let eth: *const EthHdr = ptr_at_fresh(ctx, 0)?;
    // SAFETY: bounds checked; copied before the frame moves.
    let eth = unsafe { *eth };
    let vlan = if l3 > EthHdr::LEN {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: bounds checked by ptr_at.
        Some(unsafe { *vlan })
    } else {
        None
    };
    // SAFETY: a positive delta shrinks the frame from the front by the
    // outer headers' length; old packet pointers become invalid.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (inner_at - l3) as i32) } != 0 {
        return None;
    }
    let new_eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *new_eth = eth };
    if let Some(vlan) = vlan {
        let new_vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *new_vlan = vlan };
    }
    set_ether_type(ctx, l3, inner_family).ok()?;
    Some(true)
}
