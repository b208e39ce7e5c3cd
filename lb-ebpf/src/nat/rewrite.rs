//! A NAT rewrite in place: addresses and ports as a [`NatEntry`] says,
//! the IPv4 header checksum and the TCP or UDP checksum updated
//! incrementally with one delta (RFC 1624; the L4 checksum covers the
//! addresses through the pseudo-header, RFC 9293 3.1, RFC 768, RFC 8200
//! 8.1). Words are read and written in the machine's byte order
//! (`lb_common::csum::delta32`): 32-bit loads, not byte loads.

use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    NatEntry, Outcome, PROTO_TCP, PROTO_UDP,
    csum::{apply_ne, apply_udp4_ne, delta32},
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::parse::ptr_at;

/// Largest offset of the IP header: Ethernet with one 802.1Q tag.
const MAX_L3: usize = 18;
/// Largest offset of the TCP or UDP header: IPv6 with
/// `parse::ipv6::MAX_EXT_HEADERS` extension headers of 2048 bytes.
const MAX_L4: usize = MAX_L3 + 40 + crate::parse::ipv6::MAX_EXT_HEADERS * 2048;

/// `N` 32-bit words at `p`, in the machine's byte order.
#[inline(always)]
fn load<const N: usize>(p: *const u8) -> [u32; N] {
    // SAFETY: the caller's pointer covers 4N readable bytes (a header
    // field in the bounds-checked frame, or a map value).
    unsafe { read_unaligned(p.cast::<[u32; N]>()) }
}

/// Writes `words` at `p`.
#[inline(always)]
fn store<const N: usize>(p: *mut u8, words: [u32; N]) {
    // SAFETY: the caller's pointer covers 4N writable bytes of the frame.
    unsafe { write_unaligned(p.cast::<[u32; N]>(), words) }
}

/// Replaces the `N` 32-bit words at `at` (in the frame) with those of
/// `new` (a map value's address field, 4-byte aligned), one word at a
/// time, and returns the checksum delta ([`delta32`]). A subprogram of its
/// own: the BPF backend has no unaligned loads, so the frame's bytes are
/// loaded one by one, and the compiler hoists such loads of several
/// addresses together, past what the stack holds.
#[inline(never)]
fn replace<const N: usize>(at: *mut u8, new: &[u32; N]) -> u32 {
    let mut sum = 0u64;
    for (i, &n) in new.iter().enumerate() {
        // SAFETY: the caller's pointer covers 4N bytes of the frame.
        unsafe {
            let p = at.add(4 * i);
            let old = u32::from_ne_bytes([
                p.read_volatile(),
                p.add(1).read_volatile(),
                p.add(2).read_volatile(),
                p.add(3).read_volatile(),
            ]);
            sum += u64::from(!old) + u64::from(n);
            for (j, b) in n.to_ne_bytes().into_iter().enumerate() {
                p.add(j).write_volatile(b);
            }
        }
    }
    u32::from(lb_common::csum::fold64(sum))
}

/// An address field of a map entry as `N` words (IPv4: 1, IPv6: 4).
#[inline(always)]
fn words<const N: usize>(addr: &[u8; 16]) -> &[u32; N] {
    // SAFETY: the address fields of `NatEntry` start 4-byte aligned (the
    // entry is aligned to 8, the fields at offsets 0 and 16) and hold 16
    // bytes, at least 4N.
    unsafe { &*addr.as_ptr().cast::<[u32; N]>() }
}

/// Rewrites the frame's packet (IP header at `l3`, TCP or UDP header of
/// protocol `proto` at `l4`) as `e` says. The offsets, not the caller's
/// parsed frame: a reference would keep the whole frame on the caller's
/// stack.
// A subprogram of its own: its stack frame does not add to the caller's.
#[inline(never)]
pub(super) fn packet<const V6: bool>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    proto: u8,
    e: &NatEntry,
) -> Result<(), Outcome> {
    // Bounds the verifier can see in this subprogram (its arguments come
    // as plain scalars): L2 is at most 18 bytes, and IPv6 extension
    // headers at most MAX_EXT_HEADERS x 2048.
    if l3 > MAX_L3 || l4 > MAX_L4 {
        return Err(Outcome::DropMalformed);
    }
    let addrs = if V6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        let (src, dst) = unsafe { ((*ip).src_addr.as_mut_ptr(), (*ip).dst_addr.as_mut_ptr()) };
        replace::<4>(src, words(&e.src)) + replace::<4>(dst, words(&e.dst))
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let (src, dst) = ((*ip).src_addr.as_mut_ptr(), (*ip).dst_addr.as_mut_ptr());
            let (new_src, new_dst) = (load::<1>(e.src.as_ptr()), load::<1>(e.dst.as_ptr()));
            let d = delta32(&load::<1>(src), &new_src) + delta32(&load::<1>(dst), &new_dst);
            store(src, new_src);
            store(dst, new_dst);
            let check = u16::from_ne_bytes((*ip).check);
            (*ip).check = apply_ne(check, d).to_ne_bytes();
            d
        }
    };
    // The two ports are adjacent in the entry (sport, dport) and in both
    // headers: one word.
    let ports = load::<1>(e.sport.as_ptr());
    if proto == PROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let at = (*tcp).source.as_mut_ptr();
            let d = addrs + delta32(&load::<1>(at), &ports);
            store(at, ports);
            let check = u16::from_ne_bytes((*tcp).check);
            (*tcp).check = apply_ne(check, d).to_ne_bytes();
        }
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let at = (*udp).src.as_mut_ptr();
            let d = addrs + delta32(&load::<1>(at), &ports);
            store(at, ports);
            // A zero UDP checksum is "none" over IPv4 (RFC 768); over
            // IPv6 it is invalid (RFC 8200 8.1) and the receiver drops it
            // either way.
            let check = u16::from_ne_bytes((*udp).check);
            (*udp).check = apply_udp4_ne(check, d).to_ne_bytes();
        }
    }
    Ok(())
}

/// Rewrites an ICMP or ICMPv6 error about a translated flow (IP header at
/// `l3`, ICMP header at `l4`, the quoted packet after it) as entry `e`
/// says, for the other side: the outer destination becomes `e.dst`, and
/// the quoted packet, which went the other way, becomes `e.dst:e.dport ->
/// e.src:e.sport`. With the forward entry (an error from the client's
/// side quoting VIP:port -> client) the backend gets its own packet
/// quoted; with the reply entry (an error from the backend's side quoting
/// SNAT:port -> backend) the client gets its own. Checksums: the outer IPv4
/// header's, the quoted IPv4 header's, the quoted TCP or UDP checksum when
/// the quote holds it, and the ICMP checksum (ICMPv6: with its
/// pseudo-header); in ICMPv4 the quoted IPv4 header, checksum included,
/// sums to the same before and after, so only the ports and the quoted L4
/// checksum move the ICMP checksum. A quoted IPv6 packet must carry TCP or
/// UDP right after its header (`Err(DropIcmpTruncated)` otherwise).
// A subprogram of its own: its stack frame does not add to the caller's.
#[inline(never)]
pub(super) fn icmp_error<const V6: bool>(
    ctx: &XdpContext,
    l3: usize,
    l4: usize,
    e: &NatEntry,
) -> Result<(), Outcome> {
    if l3 > MAX_L3 || l4 > MAX_L4 {
        return Err(Outcome::DropMalformed);
    }
    // The ports of the quoted packet: e.dport then e.sport.
    let ports = u32::from_ne_bytes([e.dport[0], e.dport[1], e.sport[0], e.sport[1]]);
    let inner_l3 = l4 + ICMP_HDR;
    let (outer, inner_addrs, inner_l4, proto) = if V6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
        let inner: *mut Ipv6Hdr = ptr_at(ctx, inner_l3).ok_or(Outcome::DropIcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let proto = (*inner).next_hdr;
            let outer = replace::<4>((*ip).dst_addr.as_mut_ptr(), words(&e.dst));
            let d = replace::<4>((*inner).src_addr.as_mut_ptr(), words(&e.dst))
                + replace::<4>((*inner).dst_addr.as_mut_ptr(), words(&e.src));
            (outer, d, inner_l3 + Ipv6Hdr::LEN, proto)
        }
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
        let inner: *mut Ipv4Hdr = ptr_at(ctx, inner_l3).ok_or(Outcome::DropIcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let dst = (*ip).dst_addr.as_mut_ptr();
            let new_dst = load::<1>(e.dst.as_ptr());
            let outer = delta32(&load::<1>(dst), &new_dst);
            store(dst, new_dst);
            let check = u16::from_ne_bytes((*ip).check);
            (*ip).check = apply_ne(check, outer).to_ne_bytes();
            let inner_len = usize::from((*inner).vihl & 0x0f) * 4;
            let (src, dst) = (
                (*inner).src_addr.as_mut_ptr(),
                (*inner).dst_addr.as_mut_ptr(),
            );
            let (new_src, new_dst) = (load::<1>(e.dst.as_ptr()), load::<1>(e.src.as_ptr()));
            let d = delta32(&load::<1>(src), &new_src) + delta32(&load::<1>(dst), &new_dst);
            store(src, new_src);
            store(dst, new_dst);
            let check = u16::from_ne_bytes((*inner).check);
            (*inner).check = apply_ne(check, d).to_ne_bytes();
            // ICMPv4 has no pseudo-header: the outer change is not in its
            // sum, and the quoted IPv4 header sums to the same.
            (0, d, inner_l3 + inner_len, (*inner).proto)
        }
    };
    if inner_l4 > MAX_L4 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(Outcome::DropIcmpTruncated);
    }
    let at: *mut [u8; 4] = ptr_at(ctx, inner_l4).ok_or(Outcome::DropIcmpTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let d_ports = unsafe {
        let at = (*at).as_mut_ptr();
        let d = delta32(&load::<1>(at), &[ports]);
        store(at, [ports]);
        d
    };
    // The quoted L4 checksum, when the quote holds it: it covers the quoted
    // addresses (pseudo-header) and ports.
    let check_at = inner_l4 + if proto == PROTO_TCP { 16 } else { 6 };
    let mut d_check = 0;
    if let Some(check) = ptr_at::<[u8; 2]>(ctx, check_at) {
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let old = u16::from_ne_bytes(*check);
            let new = if proto == PROTO_UDP && !V6 {
                apply_udp4_ne(old, inner_addrs + d_ports)
            } else {
                apply_ne(old, inner_addrs + d_ports)
            };
            *check = new.to_ne_bytes();
            d_check = u32::from(!old) + u32::from(new);
        }
    }
    let icmp: *mut [u8; ICMP_HDR] = ptr_at(ctx, l4).ok_or(Outcome::DropIcmpTruncated)?;
    let d_icmp = if V6 {
        outer + inner_addrs + d_ports + d_check
    } else {
        d_ports + d_check
    };
    // SAFETY: bounds checked by ptr_at; the checksum is bytes 2 and 3.
    unsafe {
        let check = u16::from_ne_bytes([(*icmp)[2], (*icmp)[3]]);
        let new = apply_ne(check, d_icmp).to_ne_bytes();
        (*icmp)[2] = new[0];
        (*icmp)[3] = new[1];
    }
    Ok(())
}

/// Bytes of an ICMP or ICMPv6 error's header before the quoted packet.
const ICMP_HDR: usize = 8;
