//! ICMP "fragmentation needed" (RFC 792 type 3 code 4, RFC 1191) to a
//! client whose packet, once encapsulated, would not fit toward its
//! backend: sent from the VIP address, rate-limited per CPU.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    },
    programs::XdpContext,
};
use lb_common::{Outcome, PROTO_ICMP, rules::take_token};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};

use super::csum;
use crate::{
    lb::icmp::{IcmpHdr, TTL},
    maps::LB_ICMP_BUCKET,
    parse::{ptr_at, ptr_at_fresh},
};

/// Bytes of the offending packet quoted: its IPv4 header (20, without
/// options) and the first 8 bytes of its payload (RFC 792).
const QUOTE_LEN: usize = Ipv4Hdr::LEN + 8;
/// What the frame grows by in front: the new IPv4 header and the ICMP
/// header. The offending packet then sits exactly where the quote goes.
const PUSHED: usize = Ipv4Hdr::LEN + size_of::<IcmpHdr>();

/// Answers the packet at `l3` (IPv4, no options: the caller checked) with
/// "fragmentation needed", next-hop MTU `next_hop_mtu`, in place: the frame
/// becomes L2 + IPv4 (VIP -> client) + ICMP + the quote, MACs swapped, for
/// XDP_TX. `per_second` is `icmp.too_big_per_cpu`; over it,
/// `Err(TooBigSuppressed)` and the frame is dropped.
// A subprogram of its own: its stack frame does not add to the caller's.
#[inline(never)]
pub fn reply(ctx: &XdpContext, l3: usize, next_hop_mtu: u16, per_second: u32) -> Outcome {
    match try_reply(ctx, l3, next_hop_mtu, per_second) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn try_reply(
    ctx: &XdpContext,
    l3: usize,
    next_hop_mtu: u16,
    per_second: u32,
) -> Result<Outcome, Outcome> {
    let bucket = LB_ICMP_BUCKET
        .get_ptr_mut(0)
        .ok_or(Outcome::TooBigSuppressed)?;
    // SAFETY: a helper without arguments; the per-CPU value has no other
    // writer on this CPU while we run.
    if !take_token(
        unsafe { &mut *bucket },
        unsafe { bpf_ktime_get_ns() },
        per_second,
    ) {
        return Err(Outcome::TooBigSuppressed);
    }
    let eth: *const EthHdr = ptr_at_fresh(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let orig: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at; copied before the frame moves.
    let (eth, orig) = unsafe { (*eth, *orig) };
    let vlan = if l3 > EthHdr::LEN {
        let vlan: *const VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        Some(unsafe { *vlan })
    } else {
        None
    };
    // SAFETY: plain helper calls on our context; every packet pointer is
    // taken again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(PUSHED as i32)) } != 0 {
        return Err(Outcome::DropEncap);
    }
    let len = ctx.data_end() - ctx.data();
    let want = l3 + PUSHED + QUOTE_LEN;
    if len < want || unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(Outcome::DropEncap);
    }

    let new_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        *new_eth = EthHdr {
            dst_addr: eth.src_addr,
            src_addr: eth.dst_addr,
            ether_type: eth.ether_type,
        };
    }
    if let Some(vlan) = vlan {
        let new_vlan: *mut VlanHdr = ptr_at(ctx, EthHdr::LEN).ok_or(Outcome::DropEncap)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *new_vlan = vlan };
    }
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: ((PUSHED + QUOTE_LEN) as u16).to_be_bytes(),
        id: [0, 0],
        // DF: the message is 56 bytes and never needs fragments.
        frags: [0x40, 0],
        ttl: TTL,
        proto: PROTO_ICMP,
        check: [0, 0],
        // From the VIP, so filters that allow the VIP allow it.
        src_addr: orig.dst_addr,
        dst_addr: orig.src_addr,
    };
    ip.check = csum::ipv4_header(&ip);
    let new_ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropEncap)?;
    let quote: *const [[u8; 2]; QUOTE_LEN / 2] =
        ptr_at(ctx, l3 + PUSHED).ok_or(Outcome::DropEncap)?;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l3 + Ipv4Hdr::LEN).ok_or(Outcome::DropEncap)?;
    let mtu = next_hop_mtu.to_be_bytes();
    // Type 3, code 4; the checksum covers the ICMP header and the quote.
    let header = [[3u8, 4], [0, 0], [0, 0], mtu];
    // SAFETY: bounds checked by ptr_at; the quote is read before the ICMP
    // header (which does not overlap it) is written.
    unsafe {
        *new_ip = ip;
        let sum = csum::add_words(csum::add_words(0, &header), &*quote);
        *icmp = IcmpHdr {
            kind: 3,
            code: 4,
            check: csum::fold(sum),
            rest_hi: [0, 0],
            rest_lo: mtu,
        };
    }
    Ok(Outcome::TooBigSent)
}
