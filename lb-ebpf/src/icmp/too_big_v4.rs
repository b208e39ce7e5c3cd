//! ICMP "fragmentation needed" (RFC 792 type 3 code 4, RFC 1191) to a
//! client whose packet, once encapsulated, would not fit toward its
//! backend: sent from the VIP address, rate-limited per CPU.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, PROTO_ICMP};
use network_types::ip::Ipv4Hdr;

use super::{IcmpHdr, TTL};
use crate::{encap::csum, parse::ptr_at};

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
    super::too_big_token(per_second)?;
    let orig: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at; copied before the frame moves.
    let orig = unsafe { *orig };
    super::reply_room(ctx, l3, PUSHED, QUOTE_LEN)?;
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
