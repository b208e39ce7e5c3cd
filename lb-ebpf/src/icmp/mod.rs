//! ICMP and ICMPv6 in `xdp_lb`, for both families: what a VIP address
//! answers and follows ([`v4`] RFC 792, [`v6`] RFC 4443: echo requests
//! answered, errors about a VIP flow traced back to it), and the answer to
//! a packet that would not fit once encapsulated ([`too_big_v4`]
//! "fragmentation needed", [`too_big_v6`] "packet too big"), rate-limited
//! per CPU. Used by the packet's path (the `lb` module); builds on the frame
//! helpers of `crate::encap`.

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    },
    programs::XdpContext,
};
use lb_common::{Outcome, rules::take_token};
use network_types::eth::EthHdr;

use crate::{
    encap::{l2_headers, write_l2_headers},
    maps::LB_ICMP_BUCKET,
};

pub mod too_big_v4;
pub mod too_big_v6;
pub mod v4;
pub mod v6;

/// TTL of packets the load balancer sends itself.
pub const TTL: u8 = 64;

/// An ICMP header: type, code, checksum, then 4 bytes that depend on the
/// type (echo: identifier and sequence; "fragmentation needed": unused and
/// next-hop MTU). 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    /// Type.
    pub kind: u8,
    /// Code.
    pub code: u8,
    /// Checksum over the ICMP message.
    pub check: [u8; 2],
    /// Type-specific: for "fragmentation needed", 2 unused bytes.
    pub rest_hi: [u8; 2],
    /// Type-specific: for "fragmentation needed", the next-hop MTU.
    pub rest_lo: [u8; 2],
}

/// What an ICMP message to a VIP address is.
pub enum Icmp {
    /// An echo request: answer it.
    EchoRequest,
    /// An error about a flow: forward it to the flow's backend.
    Error,
    /// Anything else: passed to the kernel as before.
    Other,
}

/// Takes a token from this CPU's bucket of "too big" answers (`per_second`
/// is `icmp.too_big_per_cpu`, [`take_token`]); `Err(TooBigSuppressed)`
/// when it is empty.
#[inline(always)]
pub fn too_big_token(per_second: u32) -> Result<(), Outcome> {
    let bucket = LB_ICMP_BUCKET
        .get_ptr_mut(0)
        .ok_or(Outcome::TooBigSuppressed)?;
    // SAFETY: the per-CPU value has no other writer on this CPU while we run.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if take_token(bucket, now, per_second) {
        Ok(())
    } else {
        Err(Outcome::TooBigSuppressed)
    }
}

/// Makes the frame room for an answer to its sender, in place: `pushed`
/// bytes in front of the IP header at `l3` (so the offending packet starts
/// at `l3 + pushed`, where the quote goes), the frame cut to
/// `l3 + pushed + quote_len` bytes, and the Ethernet header (and 802.1Q
/// tag) written back in front with the MACs swapped. `Err(DropMalformed)`
/// when the L2 headers cannot be read, `Err(DropEncap)` when the frame
/// cannot grow or is shorter than the quote. Every packet pointer taken
/// before is invalid after: copy what the answer needs first.
#[inline(always)]
pub fn reply_room(
    ctx: &XdpContext,
    l3: usize,
    pushed: usize,
    quote_len: usize,
) -> Result<(), Outcome> {
    let (eth, vlan) = l2_headers(ctx, l3)?;
    // SAFETY: plain helper calls on our context; every packet pointer is
    // taken again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(pushed as i32)) } != 0 {
        return Err(Outcome::DropEncap);
    }
    let len = ctx.data_end() - ctx.data();
    let want = l3 + pushed + quote_len;
    // SAFETY: the context's own frame; the helper checks the new length.
    if len < want || unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(Outcome::DropEncap);
    }
    let swapped = EthHdr {
        dst_addr: eth.src_addr,
        src_addr: eth.dst_addr,
        ether_type: eth.ether_type,
    };
    write_l2_headers(ctx, swapped, vlan)
}
