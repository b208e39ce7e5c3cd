//! ICMPv6 "packet too big" (RFC 4443 section 3.2, RFC 8201) to a client
//! whose packet, once encapsulated, would not fit toward its backend: sent
//! from the VIP address, quoting as much of the packet as fits in the
//! minimum IPv6 MTU, rate-limited per CPU like the IPv4 message.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use lb_common::{Outcome, PROTO_ICMPV6};
use network_types::ip::Ipv6Hdr;

use super::{IcmpHdr, TTL};
use crate::{encap::csum, parse::ptr_at};

/// The minimum IPv6 MTU (RFC 8200 section 5): the smallest MTU announced.
pub const IPV6_MIN_MTU: u32 = 1280;
/// What the frame grows by in front: the new IPv6 header and the ICMPv6
/// header. The offending packet then sits where the quote goes.
const PUSHED: usize = Ipv6Hdr::LEN + 8;
/// Bytes of the offending packet quoted: the message is then exactly the
/// minimum MTU (RFC 4443 section 2.4 (c)).
const QUOTE_LEN: usize = IPV6_MIN_MTU as usize - PUSHED;
/// The quote's checksum is taken in chunks `bpf_csum_diff` accepts (its
/// scratch buffer holds 512 bytes, net/core/filter.c).
const CHUNK: usize = 512;
const LAST: usize = QUOTE_LEN - 2 * CHUNK;
/// ICMPv6 type "packet too big".
const PACKET_TOO_BIG: u8 = 2;

/// Sum of one chunk of the quote at `at`, as `bpf_csum_diff` gives it (a
/// 32-bit partial sum of native-order words).
#[inline(always)]
fn chunk_sum<const N: usize>(ctx: &XdpContext, at: usize) -> Result<u64, Outcome> {
    let chunk: *mut [u8; N] = ptr_at(ctx, at).ok_or(Outcome::DropEncap)?;
    // SAFETY: a packet pointer with N bytes checked; the helper only reads.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, chunk.cast(), N as u32, 0) };
    if sum < 0 {
        return Err(Outcome::DropEncap);
    }
    Ok(sum as u64)
}

/// Answers the IPv6 packet at `l3` with "packet too big", MTU `mtu`
/// (raised to 1280), in place, for XDP_TX; `per_second` is
/// `icmp.too_big_per_cpu`. The packet must be longer than the quote (it
/// is: it did not fit a link of at least 1280 bytes).
// A subprogram of its own: its stack frame does not add to the caller's.
#[inline(never)]
pub fn reply(ctx: &XdpContext, l3: usize, mtu: u32, per_second: u32) -> Outcome {
    match try_reply(ctx, l3, mtu, per_second) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn try_reply(ctx: &XdpContext, l3: usize, mtu: u32, per_second: u32) -> Result<Outcome, Outcome> {
    super::too_big_token(per_second)?;
    let orig: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked; copied before the frame moves.
    let (src, dst) = unsafe { ((*orig).src_addr, (*orig).dst_addr) };
    super::reply_room(ctx, l3, PUSHED, QUOTE_LEN)?;
    let payload_len = (8 + QUOTE_LEN) as u16;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at. From the VIP, to the client.
    unsafe {
        *ip = Ipv6Hdr {
            vcf: (6u32 << 28).to_be_bytes(),
            payload_len: payload_len.to_be_bytes(),
            next_hdr: PROTO_ICMPV6,
            hop_limit: TTL,
            src_addr: dst,
            dst_addr: src,
        };
    }
    let mtu = mtu.max(IPV6_MIN_MTU).to_be_bytes();
    // The checksum covers the pseudo-header (RFC 8200 section 8.1), the
    // ICMPv6 header and the quote.
    let words = |a: [u8; 16]| -> [[u8; 2]; 8] {
        let mut w = [[0u8; 2]; 8];
        let mut i = 0;
        while i < 8 {
            w[i] = [a[2 * i], a[2 * i + 1]];
            i += 1;
        }
        w
    };
    let header = [
        [0, 0],
        payload_len.to_be_bytes(),
        [0, 0],
        [0, PROTO_ICMPV6],
        [PACKET_TOO_BIG, 0],
        [mtu[0], mtu[1]],
        [mtu[2], mtu[3]],
    ];
    let mut sum = csum::add_words(
        csum::add_words(csum::add_words(0, &words(dst)), &words(src)),
        &header,
    );
    let quote = l3 + PUSHED;
    let partial = chunk_sum::<CHUNK>(ctx, quote)?
        + chunk_sum::<CHUNK>(ctx, quote + CHUNK)?
        + chunk_sum::<LAST>(ctx, quote + 2 * CHUNK)?;
    // bpf_csum_diff sums native (little-endian) words: its folded sum is
    // the big-endian one with its bytes swapped.
    let folded = csum::fold64(partial);
    sum += u32::from(folded.swap_bytes());
    let icmp: *mut IcmpHdr = ptr_at(ctx, l3 + Ipv6Hdr::LEN).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        *icmp = IcmpHdr {
            kind: PACKET_TOO_BIG,
            code: 0,
            check: csum::fold(sum),
            rest_hi: [mtu[0], mtu[1]],
            rest_lo: [mtu[2], mtu[3]],
        };
    }
    Ok(Outcome::TooBigSent)
}
