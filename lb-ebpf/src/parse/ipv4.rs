//! The IPv4 header (RFC 791).

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::ip::Ipv4Hdr;

use super::ptr_at;

/// IPv4 "more fragments" flag and fragment offset bits (RFC 791).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// An IPv4 header found in the frame, with its length.
pub struct Ipv4 {
    /// The header in the frame.
    pub hdr: *mut Ipv4Hdr,
    /// Header length from IHL, 20 to 60 bytes.
    pub len: usize,
}

/// The IPv4 header at `offset`; `Err(DropMalformed)` when truncated, when the
/// version is not 4 or IHL is below 5.
#[inline(always)]
pub fn ipv4_at(ctx: &XdpContext, offset: usize) -> Result<Ipv4, Outcome> {
    let hdr: *mut Ipv4Hdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let vihl = unsafe { (*hdr).vihl };
    let len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || len < Ipv4Hdr::LEN {
        return Err(Outcome::DropMalformed);
    }
    Ok(Ipv4 { hdr, len })
}

/// Whether the packet is a fragment (first or later): MF set or offset non-zero.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0
}
