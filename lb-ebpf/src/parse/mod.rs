//! L2 to L4 parsing: Ethernet with at most one 802.1Q tag ([`l2`]), IPv4
//! with options skipped by IHL ([`ipv4`]), IPv6 with its extension headers
//! walked ([`ipv6`]), TCP and UDP ports ([`l4`]); all through one
//! bounds-check helper, [`ptr_at`].

use aya_ebpf::programs::XdpContext;

pub mod ipv4;
pub mod ipv6;
pub mod l2;
pub mod l4;

pub use ipv4::{ipv4_at, is_fragment};
pub use ipv6::ipv6_at;
pub use l2::{L3, l3_offset, set_ether_type};
pub use l4::flow_ports_at;

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

/// [`ptr_at`] whose bounds check the compiler cannot drop: `data_end` is
/// read afresh (volatile), so a check the compiler could prove from an
/// earlier one (a header before one already checked) stays in the code, as
/// the verifier needs a check on each packet pointer it tracks.
#[inline(always)]
pub fn ptr_at_fresh<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    // SAFETY: ctx.ctx points at the program's xdp_md.
    let end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
