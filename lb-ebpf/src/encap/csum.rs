//! Internet checksums (RFC 1071): the IPv4 header's, and the arithmetic
//! of `lb_common::csum`.

use network_types::ip::Ipv4Hdr;

/// Checksum of an IPv4 header without options whose `check` field is zero,
/// in network byte order, ready to store.
#[inline(always)]
pub fn ipv4_header(hdr: &Ipv4Hdr) -> [u8; 2] {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data with alignment 1.
    let bytes: &[u8; Ipv4Hdr::LEN] = unsafe { &*(hdr as *const Ipv4Hdr).cast() };
    let mut sum = 0u32;
    let mut i = 0;
    while i < Ipv4Hdr::LEN {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

// The checksum arithmetic itself, written once and tested on the host.
pub use lb_common::csum::{add_words, fold, fold64, replace_u16};
