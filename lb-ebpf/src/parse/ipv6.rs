//! The IPv6 header (RFC 8200) and the extension headers before the
//! transport header.

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::ip::Ipv6Hdr;

use super::ptr_at;

/// Extension headers walked at most: hop-by-hop options, routing and
/// destination options (each `8 * (length + 1)` bytes); a fragment header
/// ends the walk.
pub const MAX_EXT_HEADERS: usize = 4;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;

/// An IPv6 packet found in the frame.
pub struct Ipv6 {
    /// Offset of the transport header (after the extension headers).
    pub l4: usize,
    /// The transport protocol (the last next-header value).
    pub proto: u8,
    /// Whether a fragment header was met.
    pub fragment: bool,
}

/// The IPv6 packet at `l3`: `Err(DropMalformed)` when truncated, not
/// version 6, or its payload length runs past the frame;
/// `Err(DropIpv6Ext)` when more than [`MAX_EXT_HEADERS`] extension headers
/// precede the transport header.
#[inline(always)]
pub fn ipv6_at(ctx: &XdpContext, l3: usize) -> Result<Ipv6, Outcome> {
    let hdr: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vcf, payload_len, mut next) = unsafe { ((*hdr).vcf, (*hdr).payload_len, (*hdr).next_hdr) };
    if vcf[0] >> 4 != 6 {
        return Err(Outcome::DropMalformed);
    }
    let end = l3 + Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(payload_len));
    if end > ctx.data_end() - ctx.data() {
        return Err(Outcome::DropMalformed);
    }
    let mut l4 = l3 + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let ext: *const [u8; 2] = ptr_at(ctx, l4).ok_or(Outcome::DropMalformed)?;
                // SAFETY: bounds checked by ptr_at.
                let ext = unsafe { *ext };
                next = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            FRAGMENT => {
                return Ok(Ipv6 {
                    l4,
                    proto: next,
                    fragment: true,
                });
            }
            _ => {
                return Ok(Ipv6 {
                    l4,
                    proto: next,
                    fragment: false,
                });
            }
        }
    }
    match next {
        HOP_BY_HOP | ROUTING | DEST_OPTS => Err(Outcome::DropIpv6Ext),
        _ => Ok(Ipv6 {
            l4,
            proto: next,
            fragment: next == FRAGMENT,
        }),
    }
}
