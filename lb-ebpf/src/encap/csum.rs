//! Internet checksums (RFC 1071).

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

/// A checksum (network byte order) after one 16-bit word it covers changed
/// from `old` to `new`: RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn replace_u16(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(check)) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Adds the 16-bit big-endian words of `words` (a fixed-size array: the
/// loop has a constant bound and unrolls) to a running sum.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, words: &[[u8; 2]; N]) -> u32 {
    let mut i = 0;
    while i < N {
        sum += u32::from(u16::from_be_bytes(words[i]));
        i += 1;
    }
    sum
}

/// The checksum (network byte order) of a running sum of 16-bit words.
#[inline(always)]
pub fn fold(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Folds a 64-bit sum of 16-bit words into 16 bits (not complemented).
#[inline(always)]
pub fn fold64(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
