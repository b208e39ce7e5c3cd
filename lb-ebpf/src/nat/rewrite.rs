//! A NAT rewrite in place: addresses and ports as a [`NatEntry`] says,
//! the IPv4 header checksum and the TCP or UDP checksum updated
//! incrementally with one delta (RFC 1624; the L4 checksum covers the
//! addresses through the pseudo-header, RFC 9293 3.1, RFC 768, RFC 8200
//! 8.1). Words are read and written in the machine's byte order
//! (`lb_common::csum::delta32`): 32-bit loads, not byte loads.

use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    NatEntry, Outcome, PROTO_TCP,
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
        let (new_src, new_dst) = (load::<4>(e.src.as_ptr()), load::<4>(e.dst.as_ptr()));
        let d = delta32(&load::<4>(src), &new_src) + delta32(&load::<4>(dst), &new_dst);
        store(src, new_src);
        store(dst, new_dst);
        d
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
