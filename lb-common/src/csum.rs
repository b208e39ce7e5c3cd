//! Internet checksums (RFC 1071) and their incremental updates (RFC 1624),
//! written once for the XDP programs (encapsulation, ICMP answers, and the
//! NAT modes' rewrites of addresses and ports) and tested here on the host.
//!
//! Checksums are carried as stored in the packet: two bytes in network
//! byte order. Words are 16-bit values as read big-endian from the packet.

/// Adds the 16-bit big-endian words of `words` (a fixed-size array: the
/// loop has a constant bound and unrolls) to a running sum.
#[inline(always)]
pub const fn add_words<const N: usize>(mut sum: u32, words: &[[u8; 2]; N]) -> u32 {
    let mut i = 0;
    while i < N {
        sum += u16::from_be_bytes(words[i]) as u32;
        i += 1;
    }
    sum
}

/// The checksum (network byte order) of a running sum of 16-bit words:
/// folded to 16 bits and complemented.
#[inline(always)]
pub const fn fold(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Folds a 64-bit sum of 16-bit words into 16 bits (not complemented).
#[inline(always)]
pub const fn fold64(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A checksum (network byte order) after one 16-bit word it covers changed
/// from `old` to `new`: RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub const fn replace_u16(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = (!u16::from_be_bytes(check)) as u32 + (!old) as u32 + new as u32;
    fold(sum)
}

/// A checksum (network byte order) after the words `old` it covers became
/// `new` (an address: 2 words for IPv4, 8 for IPv6; an address and a port
/// together), by RFC 1624 equation 3 applied to every word at once.
#[inline(always)]
pub const fn replace_words<const N: usize>(
    check: [u8; 2],
    old: &[[u8; 2]; N],
    new: &[[u8; 2]; N],
) -> [u8; 2] {
    let mut sum = (!u16::from_be_bytes(check)) as u32;
    let mut i = 0;
    while i < N {
        sum += (!u16::from_be_bytes(old[i])) as u32 + u16::from_be_bytes(new[i]) as u32;
        // Folded as it goes: eight IPv6 words never overflow 32 bits, but
        // a long run could.
        sum = (sum & 0xffff) + (sum >> 16);
        i += 1;
    }
    fold(sum)
}

/// [`replace_words`] for a UDP checksum over IPv4, where 0 means "no
/// checksum" (RFC 768): it stays 0, and a result of 0 is sent as 0xffff.
#[inline(always)]
pub const fn replace_words_udp4<const N: usize>(
    check: [u8; 2],
    old: &[[u8; 2]; N],
    new: &[[u8; 2]; N],
) -> [u8; 2] {
    if u16::from_be_bytes(check) == 0 {
        return check;
    }
    let out = replace_words(check, old, new);
    if u16::from_be_bytes(out) == 0 {
        [0xff, 0xff]
    } else {
        out
    }
}

/// The change of a checksum when the words `old` it covers become `new`:
/// the sum of `~old + new` per word (RFC 1624 equation 3's `~m + m'`), to
/// add to several checksums with [`apply`] (a NAT rewrite changes the
/// same addresses under the IP and the TCP or UDP checksum).
#[inline(always)]
pub const fn delta<const N: usize>(old: &[[u8; 2]; N], new: &[[u8; 2]; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum += (!u16::from_be_bytes(old[i])) as u32 + u16::from_be_bytes(new[i]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        i += 1;
    }
    sum
}

/// [`delta`] of an address (or any run of `B` bytes, `B` even) read in
/// place: no word arrays built, which matters on a 512-byte BPF stack.
#[inline(always)]
pub const fn delta_bytes<const B: usize>(old: &[u8; B], new: &[u8; B]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < B {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += (!o) as u32 + n as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum
}

/// [`delta`] over 32-bit words read in the machine's byte order (an
/// address as 1 or 4 words, two ports as 1): the one's complement sum
/// does not depend on byte order (RFC 1071 section 2(B)), so the result,
/// folded to 16 bits, is the machine-order form of [`delta`]'s, for
/// [`apply_ne`]. Four word loads instead of sixteen byte loads: the
/// NAT rewrite of an IPv6 packet keeps its registers.
#[inline(always)]
pub const fn delta32<const N: usize>(old: &[u32; N], new: &[u32; N]) -> u32 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    fold64(sum) as u32
}

/// [`apply`] in the machine's byte order: `check` as read from the packet
/// with a native 16-bit load, `delta` a sum of [`delta32`]s; the result is
/// stored back with a native store.
#[inline(always)]
pub const fn apply_ne(check: u16, delta: u32) -> u16 {
    let mut sum = (!check) as u32 + (delta & 0xffff) + (delta >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`apply_ne`] for a UDP checksum over IPv4: 0 ("none", RFC 768) stays 0,
/// and a result of 0 is sent as 0xffff.
#[inline(always)]
pub const fn apply_udp4_ne(check: u16, delta: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    let out = apply_ne(check, delta);
    if out == 0 { 0xffff } else { out }
}

/// A checksum (network byte order) with a [`delta`] (or the sum of
/// several) applied: `HC' = ~(~HC + delta)`.
#[inline(always)]
pub const fn apply(check: [u8; 2], delta: u32) -> [u8; 2] {
    let sum = (!u16::from_be_bytes(check)) as u32 + (delta & 0xffff) + (delta >> 16);
    fold(sum)
}

/// [`apply`] for a UDP checksum over IPv4, where 0 means "no checksum"
/// (RFC 768): it stays 0, and a result of 0 is sent as 0xffff.
#[inline(always)]
pub const fn apply_udp4(check: [u8; 2], delta: u32) -> [u8; 2] {
    if u16::from_be_bytes(check) == 0 {
        return check;
    }
    let out = apply(check, delta);
    if u16::from_be_bytes(out) == 0 {
        [0xff, 0xff]
    } else {
        out
    }
}

/// An address as its 16-bit words: IPv4 (`N` = 2) or IPv6 (`N` = 8).
#[inline(always)]
pub const fn words<const B: usize, const N: usize>(addr: &[u8; B]) -> [[u8; 2]; N] {
    let mut out = [[0u8; 2]; N];
    let mut i = 0;
    while i < N {
        out[i] = [addr[2 * i], addr[2 * i + 1]];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{apply, delta, fold, replace_u16, replace_words, replace_words_udp4, words};

    /// The checksum of `bytes` (an even number of them) from scratch.
    fn full(bytes: &[u8]) -> [u8; 2] {
        let mut sum = 0u32;
        for w in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        fold(sum)
    }

    /// A small deterministic generator (xorshift), so the cases are many
    /// and the same on every run.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn an_incremental_update_equals_the_checksum_computed_again() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            // A 40-byte "header" whose words 2..10 (an IPv6 address) and
            // word 12 (a port) change.
            let mut data = [0u8; 40];
            for b in &mut data {
                *b = rng(&mut seed) as u8;
            }
            let check = full(&data);
            let old_addr: [u8; 16] = data[4..20].try_into().expect("16 bytes");
            let mut new_addr = [0u8; 16];
            for b in &mut new_addr {
                *b = rng(&mut seed) as u8;
            }
            let old_port = u16::from_be_bytes([data[24], data[25]]);
            let new_port = rng(&mut seed) as u16;
            data[4..20].copy_from_slice(&new_addr);
            data[24..26].copy_from_slice(&new_port.to_be_bytes());
            let by_words = replace_words::<8>(check, &words(&old_addr), &words(&new_addr));
            let incremental = replace_u16(by_words, old_port, new_port);
            // One's-complement arithmetic has two zeros: compare the values
            // a receiver checks, the sum with the checksum folded in.
            let mut with_check = data.to_vec();
            with_check.extend_from_slice(&incremental);
            assert_eq!(
                full(&with_check),
                [0, 0],
                "the updated checksum verifies: {data:?} {incremental:?}"
            );
        }
    }

    #[test]
    fn one_delta_applied_to_two_checksums_equals_both_computed_again() {
        let mut seed = 0x1234_5678_9abc_def1;
        for _ in 0..20_000 {
            // An "IP header" of 20 bytes whose words 6..10 (two IPv4
            // addresses) change, and an "L4 segment" of 20 bytes covering
            // the same addresses (the pseudo-header) and two ports.
            let mut ip = [0u8; 20];
            let mut l4 = [0u8; 20];
            for b in ip.iter_mut().chain(l4.iter_mut()) {
                *b = rng(&mut seed) as u8;
            }
            let (ip_check, l4_check) = (full(&ip), full(&[&ip[12..20], &l4[..]].concat()));
            let mut new = [0u8; 12];
            for b in &mut new {
                *b = rng(&mut seed) as u8;
            }
            let old_addrs: [[u8; 2]; 4] = words::<8, 4>(ip[12..20].try_into().expect("8"));
            let new_addrs: [[u8; 2]; 4] = words::<8, 4>(new[..8].try_into().expect("8"));
            let old_ports: [[u8; 2]; 2] = words::<4, 2>(l4[..4].try_into().expect("4"));
            let new_ports: [[u8; 2]; 2] = words::<4, 2>(new[8..].try_into().expect("4"));
            let addrs = delta(&old_addrs, &new_addrs);
            assert_eq!(
                addrs,
                super::delta_bytes::<8>(
                    ip[12..20].try_into().expect("8"),
                    new[..8].try_into().expect("8")
                )
            );
            let ip_new = apply(ip_check, addrs);
            let l4_new = apply(l4_check, addrs + delta(&old_ports, &new_ports));
            ip[12..20].copy_from_slice(&new[..8]);
            l4[..4].copy_from_slice(&new[8..]);
            assert_eq!(full(&[&ip[..], &ip_new].concat()), [0, 0]);
            // The same in the machine's byte order, by 32-bit words.
            let ne = |b: &[u8]| u32::from_ne_bytes(b.try_into().expect("4"));
            let old_ip: [u8; 20] = {
                let mut o = ip;
                o[12..20].copy_from_slice(&old_addrs.concat());
                o
            };
            let d32 = super::delta32(
                &[ne(&old_ip[12..16]), ne(&old_ip[16..20])],
                &[ne(&new[..4]), ne(&new[4..8])],
            );
            let ip_ne = super::apply_ne(u16::from_ne_bytes(ip_check), d32);
            assert_eq!(
                ip_ne.to_ne_bytes(),
                ip_new,
                "machine order gives the same checksum"
            );
            assert_eq!(full(&[&ip[12..20], &l4[..], &l4_new].concat()), [0, 0]);
        }
    }

    #[test]
    fn a_udp4_checksum_of_zero_stays_zero_and_zero_results_are_sent_as_all_ones() {
        let old = words::<4, 2>(&[10, 0, 0, 1]);
        let new = words::<4, 2>(&[10, 0, 0, 2]);
        assert_eq!(replace_words_udp4([0, 0], &old, &new), [0, 0]);
        // A checksum that the change brings to 0x0000 is sent as 0xffff.
        let check = replace_words([0, 0], &new, &old);
        assert_eq!(
            replace_words(check, &old, &new),
            [0, 0],
            "the case is the one meant"
        );
        assert_eq!(replace_words_udp4(check, &old, &new), [0xff, 0xff]);
    }
}
