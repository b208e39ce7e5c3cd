//! The flow hash and the Maglev index math: written once, used by the XDP
//! program (per packet) and by the agent (Maglev tables, `lb explain`, tests),
//! so both sides pick the same backend for the same flow.
//!
//! The mixing function is MurmurHash3's 32-bit body and finaliser (Austin
//! Appleby, public domain) over 32-bit words read big-endian, so the result
//! does not depend on the host's byte order and every load balancer node with
//! the same configuration computes the same value.

/// Fixed seed of the flow hash: nodes must agree, so it is not random.
const FLOW_SEED: u32 = 0x4c42_0001;
/// Seeds of the two Maglev permutation hashes (offset and skip).
const OFFSET_SEED: u32 = 0x4d47_0001;
const SKIP_SEED: u32 = 0x4d47_0002;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's 32-bit finaliser (fmix32) of `h` after `len_bytes` bytes:
/// every input bit reaches every output bit. Also spreads VIP addresses
/// over the VIP-address filter ([`crate::rules::vip_bloom_bit`]).
#[inline(always)]
pub(crate) const fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of an IPv4 flow's 5-tuple. Addresses and ports are in network byte
/// order as they stand in the packet; `proto` is the IANA protocol number.
/// Returns a 32-bit value; [`maglev_slot`] turns it into a table index.
#[inline(always)]
pub const fn flow_hash_v4(
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> u32 {
    let ports = u32::from_be_bytes([sport[0], sport[1], dport[0], dport[1]]);
    let mut h = FLOW_SEED;
    h = mix(h, u32::from_be_bytes(src));
    h = mix(h, u32::from_be_bytes(dst));
    h = mix(h, ports);
    h = mix(h, proto as u32);
    finish(h, 16)
}

/// Flow hash of an IPv6 flow: the same MurmurHash3 mixing as
/// [`flow_hash_v4`] over both 16-byte addresses (big-endian words), the
/// ports and the protocol. Used by `xdp_lb` and by userspace alike.
#[inline(always)]
pub const fn flow_hash_v6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> u32 {
    let ports = u32::from_be_bytes([sport[0], sport[1], dport[0], dport[1]]);
    let mut h = FLOW_SEED;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_be_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]),
        );
        i += 4;
    }
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_be_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]),
        );
        i += 4;
    }
    h = mix(h, ports);
    h = mix(h, proto as u32);
    finish(h, 40)
}

/// Flow hash of a flow of either family, addresses as stored in map keys
/// (IPv4 in the first 4 bytes): [`flow_hash_v4`] or [`flow_hash_v6`].
#[inline(always)]
pub const fn flow_hash(
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> u32 {
    if family == crate::FAMILY_V6 {
        flow_hash_v6(*src, *dst, sport, dport, proto)
    } else {
        flow_hash_v4(
            [src[0], src[1], src[2], src[3]],
            [dst[0], dst[1], dst[2], dst[3]],
            sport,
            dport,
            proto,
        )
    }
}

/// Index into a VIP's Maglev table of `table_size` entries for a flow hash.
/// `table_size` must be non-zero (the agent only writes primes).
#[inline(always)]
pub const fn maglev_slot(flow_hash: u32, table_size: u32) -> u32 {
    flow_hash % table_size
}

/// MurmurHash3_x86_32 of a byte string (little-endian words, as the
/// reference implementation, so its published test vectors apply).
const fn hash_bytes(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i + 4 <= bytes.len() {
        h = mix(
            h,
            u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]),
        );
        i += 4;
    }
    let mut tail = 0u32;
    let mut shift = 0;
    while i < bytes.len() {
        tail |= (bytes[i] as u32) << shift;
        shift += 8;
        i += 1;
    }
    if shift != 0 {
        h ^= tail
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    }
    finish(h, bytes.len() as u32)
}

/// A backend's Maglev permutation `(offset, skip)` in a table of `table_size`
/// entries (`table_size` prime, at least 2): its `j`-th preferred slot is
/// `(offset + j * skip) % table_size`. `name` identifies the backend the same
/// way on every node (its address bytes). From Eisenbud et al., "Maglev: A
/// Fast and Reliable Software Network Load Balancer", NSDI 2016, section 3.4.
pub const fn maglev_permutation(name: &[u8], table_size: u32) -> (u32, u32) {
    let offset = hash_bytes(OFFSET_SEED, name) % table_size;
    let skip = hash_bytes(SKIP_SEED, name) % (table_size - 1) + 1;
    (offset, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0x30, 0x39], [0, 80], 6);
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 2], [10, 0, 0, 100], [0x30, 0x39], [0, 80], 6)
        );
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 101], [0x30, 0x39], [0, 80], 6)
        );
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0x30, 0x3a], [0, 80], 6)
        );
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0x30, 0x39], [0, 81], 6)
        );
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0x30, 0x39], [0, 80], 17)
        );
        // Swapping the ports is a different flow.
        assert_ne!(
            base,
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0, 80], [0x30, 0x39], 6)
        );
    }

    #[test]
    fn v6_flow_hash_depends_on_every_field_and_keeps_its_values() {
        let a = [0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let vip = [0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0];
        let base = flow_hash_v6(a, vip, [0x30, 0x39], [0, 80], 6);
        // Kept as a vector: a change of the hash moves every IPv6 flow.
        assert_eq!(base, 0xa6a0_0587, "{base:#010x}");
        for i in 0..16 {
            let mut other = a;
            other[i] ^= 1;
            assert_ne!(
                base,
                flow_hash_v6(other, vip, [0x30, 0x39], [0, 80], 6),
                "src byte {i}"
            );
            let mut other = vip;
            other[i] ^= 1;
            assert_ne!(
                base,
                flow_hash_v6(a, other, [0x30, 0x39], [0, 80], 6),
                "dst byte {i}"
            );
        }
        assert_ne!(base, flow_hash_v6(a, vip, [0x30, 0x3a], [0, 80], 6));
        assert_ne!(base, flow_hash_v6(a, vip, [0x30, 0x39], [0, 81], 6));
        assert_ne!(base, flow_hash_v6(a, vip, [0x30, 0x39], [0, 80], 17));
        // IPv4 keeps its own hash through the dispatcher.
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[10, 0, 0, 100]);
        assert_eq!(
            flow_hash(crate::FAMILY_V4, &s, &d, [0, 1], [0, 80], 6),
            flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 100], [0, 1], [0, 80], 6)
        );
    }

    /// Counts 65 536 hashes over 16 buckets and checks each bucket is
    /// within 5% of the mean (4096).
    fn assert_even(what: &str, hash: impl Fn(u16) -> u32) {
        let mut buckets = [0u32; 16];
        for i in 0..=u16::MAX {
            buckets[(hash(i) % 16) as usize] += 1;
        }
        for count in buckets {
            assert!(
                (3891..=4301).contains(&count),
                "{what}: bucket count {count}"
            );
        }
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        assert_even("IPv4 source ports", |port| {
            flow_hash_v4(
                [10, 1, 2, 3],
                [10, 0, 0, 100],
                port.to_be_bytes(),
                [0, 80],
                6,
            )
        });
        let client: [u8; 16] = "fd00:21::7"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let vip: [u8; 16] = "fd00:30::100"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_even("IPv6 source ports", |port| {
            flow_hash_v6(client, vip, port.to_be_bytes(), [0, 80], 6)
        });
    }

    /// Flow-cache slots (`FlowKey::cache_slot`) of 65536 flows that differ
    /// in their source port, or in the last two bytes of their source: every
    /// slot in range, and spread at least as well as random slots would be
    /// (8 flows a slot on average; random slots would leave about 3 in
    /// 10,000 empty and put up to about 20 in one).
    #[test]
    fn cache_slots_spread_ports_and_addresses() {
        use crate::{FLOW_CACHE_SLOTS, FlowKey};
        let spread = |what: &str, key: &dyn Fn(u16) -> FlowKey, min_used: usize, max: u32| {
            let mut slots = [0u32; FLOW_CACHE_SLOTS as usize];
            for i in 0..=u16::MAX {
                let slot = key(i).cache_slot();
                assert!(slot < FLOW_CACHE_SLOTS, "{what}: slot {slot}");
                slots[slot as usize] += 1;
            }
            let used = slots.iter().filter(|n| **n > 0).count();
            let most = slots.iter().max().copied().unwrap_or(0);
            assert!(
                used >= min_used && most <= max,
                "{what}: {used} slots used, at most {most} flows in one"
            );
        };
        let (client, vip) = ([10, 1, 2, 3], [10, 0, 0, 100]);
        spread(
            "IPv4 source ports",
            &|port| FlowKey::v4(client, vip, port.to_be_bytes(), [0, 80], 6),
            8192,
            12,
        );
        spread(
            "IPv4 sources",
            &|a| {
                let [hi, lo] = a.to_be_bytes();
                FlowKey::v4([10, 1, hi, lo], vip, [0x9c, 0x40], [0, 80], 6)
            },
            6553,
            16,
        );
        let vip6: [u8; 16] = "fd00:30::100"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets();
        spread(
            "IPv6 sources",
            &|a| {
                let mut src: [u8; 16] =
                    "fd00:21::".parse::<core::net::Ipv6Addr>().unwrap().octets();
                src[14..].copy_from_slice(&a.to_be_bytes());
                FlowKey::new(crate::FAMILY_V6, src, vip6, [0x9c, 0x40], [0, 80], 6)
            },
            8192,
            12,
        );
    }

    #[test]
    fn flow_hash_spreads_source_addresses_evenly() {
        let vip: [u8; 16] = "fd00:30::100"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets();
        // Clients differing only in the last 16 bits (one /112), and only in
        // the interface identifier's upper half (SLAAC-like neighbours).
        assert_even("IPv6 clients in one /112", |i| {
            let mut client = vip;
            client[14..].copy_from_slice(&i.to_be_bytes());
            flow_hash_v6(client, vip, [0xc0, 0x00], [0, 80], 6)
        });
        assert_even("IPv6 clients by interface identifier", |i| {
            let mut client = vip;
            client[8..10].copy_from_slice(&i.to_be_bytes());
            flow_hash_v6(client, vip, [0xc0, 0x00], [0, 80], 6)
        });
        assert_even("IPv4 clients in one /16", |i| {
            let [a, b] = i.to_be_bytes();
            flow_hash_v4([10, 21, a, b], [10, 0, 0, 100], [0xc0, 0x00], [0, 80], 6)
        });
    }

    #[test]
    fn murmur3_matches_reference_vector() {
        // Published MurmurHash3_x86_32 vectors with seed 0.
        assert_eq!(hash_bytes(0, b""), 0);
        assert_eq!(hash_bytes(0, b"test"), 0xba6b_d213);
        assert_eq!(
            hash_bytes(0, b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    #[test]
    fn permutation_is_in_range() {
        for m in [7u32, 251, 65537] {
            for i in 0u8..50 {
                let (offset, skip) = maglev_permutation(&[10, 0, 0, i], m);
                assert!(offset < m);
                assert!((1..m).contains(&skip));
            }
        }
    }
}
