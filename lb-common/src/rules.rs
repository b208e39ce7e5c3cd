//! Decisions the kernel and userspace must make the same way, as pure
//! functions: `xdp_lb` calls them on every packet, `lb explain` and the
//! agent call them to say what the kernel does. Written once here, they
//! cannot drift apart.

use crate::{
    ALLOW16_PART, ALLOW16_WHOLE, AddrKey, BACKEND_F_ACTIVE, BACKEND_F_HEALTHY, TokenBucket,
    VIP_BLOOM_BITS_LOG2,
};

/// What the source filter makes of a packet (`source_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterVerdict {
    /// Dropped: the filter applies and the source is outside every allowed
    /// prefix (`drop_source_filter`).
    Drop,
    /// Not addressed to a VIP address: passed to the kernel untouched.
    Pass,
    /// Addressed to a VIP address from an allowed source: look the VIP up.
    ToVipAddress,
}

/// The source-filter rule. With scope `all` (`scope_all`) every packet is
/// filtered; with scope `vip` only packets to a VIP address. A packet the
/// filter lets through that is not for a VIP address passes.
/// `source_allowed` is only called when the filter applies (it is the LPM
/// lookup in the kernel).
#[inline(always)]
pub fn filter_verdict(
    scope_all: bool,
    to_vip_address: bool,
    source_allowed: impl FnOnce() -> bool,
) -> FilterVerdict {
    if (scope_all || to_vip_address) && !source_allowed() {
        FilterVerdict::Drop
    } else if to_vip_address {
        FilterVerdict::ToVipAddress
    } else {
        FilterVerdict::Pass
    }
}

/// The bit of [`crate::MAP_VIP_BLOOM`] that VIP address `key` sets, as
/// (word index below [`crate::VIP_BLOOM_WORDS`], mask). The address's four
/// words folded by rotation, with its family, then MurmurHash3's 32-bit
/// finaliser; the top [`VIP_BLOOM_BITS_LOG2`] bits. A few instructions and no loop, so `xdp_lb` can
/// test every packet's destination before any hash-map lookup.
#[inline(always)]
pub const fn vip_bloom_bit(key: &AddrKey) -> (u32, u64) {
    let a = &key.addr;
    let w0 = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    let w1 = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
    let w2 = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
    let w3 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    let folded =
        w0 ^ w1.rotate_left(8) ^ w2.rotate_left(16) ^ w3.rotate_left(24) ^ key.family as u32;
    // The flow hash's finaliser: addresses that differ only in their last
    // octets spread over the whole filter.
    let bit = crate::hash::finish(folded, 0) >> (32 - VIP_BLOOM_BITS_LOG2);
    (bit >> 6, 1 << (bit & 63))
}

/// Where a source whose first two bytes are `first` sits in
/// [`crate::MAP_SRC_ALLOW4_16`] (IPv4) or [`crate::MAP_SRC_ALLOW6_16`]
/// (IPv6): (word index, bit shift of its two bits).
#[inline(always)]
pub const fn allow16_slot(first: [u8; 2]) -> (u32, u32) {
    let n = ((first[0] as u32) << 8) | first[1] as u32;
    (n >> 5, (n & 31) * 2)
}

/// Whether a source is allowed, from its /16's two bits (`bits`,
/// already shifted down) and, for a /16 that holds only longer prefixes,
/// the trie (`in_trie`, called only then).
#[inline(always)]
pub fn allow16_verdict(bits: u64, in_trie: impl FnOnce() -> bool) -> bool {
    if bits & ALLOW16_WHOLE != 0 {
        true
    } else if bits & ALLOW16_PART != 0 {
        in_trie()
    } else {
        false
    }
}

/// Marks an allowed prefix of either family, whose first two bytes are
/// `addr` and length `len`, in the words of [`crate::MAP_SRC_ALLOW4_16`] or
/// [`crate::MAP_SRC_ALLOW6_16`] (`words`: [`crate::ALLOW16_WORDS`] long):
/// every /16 it covers as [`ALLOW16_WHOLE`] when `len` is 16 or less, else
/// its /16 as [`ALLOW16_PART`]. The prefix has its host bits clear.
pub fn allow16_mark(words: &mut [u64], addr: [u8; 2], len: u8) {
    let first = (u32::from(addr[0]) << 8) | u32::from(addr[1]);
    let (count, bits) = if len <= 16 {
        (1u32 << (16 - len), ALLOW16_WHOLE)
    } else {
        (1, ALLOW16_PART)
    };
    let mut n = first;
    while n < first + count {
        let (word, shift) = allow16_slot([(n >> 8) as u8, n as u8]);
        if let Some(w) = words.get_mut(word as usize) {
            *w |= bits << shift;
        }
        n += 1;
    }
}

/// The VIP match: the VIP of the exact destination port, else the port-0
/// (every port) VIP of that address and protocol. `lookup(port)` finds the
/// VIP of a port (network byte order) of the packet's address and protocol.
#[inline(always)]
pub fn match_vip<T>(port: [u8; 2], mut lookup: impl FnMut([u8; 2]) -> Option<T>) -> Option<T> {
    lookup(port).or_else(|| lookup([0, 0]))
}

/// Whether a backend entry with `flags` may take packets: in its VIP's set
/// (`BACKEND_F_ACTIVE`) and healthy (`BACKEND_F_HEALTHY`). A connection-table
/// entry is honoured only while its backend is usable.
#[inline(always)]
pub const fn backend_usable(flags: u8) -> bool {
    let usable = BACKEND_F_ACTIVE | BACKEND_F_HEALTHY;
    flags & usable == usable
}

/// Whether a backend is in its VIP's Maglev input list: healthy and with a
/// weight above 0 (weight 0 drains: no new flow, its flows stay).
#[inline(always)]
pub const fn maglev_member(healthy: bool, weight: u32) -> bool {
    healthy && weight > 0
}

/// The per-VIP source rule: a VIP with its own `allow` list (`has_own`)
/// takes only sources in it (`in_own`, the LPM lookup in the kernel); the
/// global filter has already passed them. A VIP's list narrows, never
/// widens.
#[inline(always)]
pub fn vip_source_allowed(has_own: bool, in_own: impl FnOnce() -> bool) -> bool {
    !has_own || in_own()
}

/// Nanoseconds of credit a token bucket holds at most: one second, so the
/// burst is one second's rate.
pub const BUCKET_CAPACITY_NS: u64 = 1_000_000_000;

/// Takes one token from `bucket` at time `now_ns` for a rate of
/// `per_second` tokens per second; whether there was one. The bucket keeps
/// nanoseconds of credit: time adds credit up to [`BUCKET_CAPACITY_NS`],
/// a token costs `1e9 / per_second`. A fresh bucket (zeroed) starts full.
/// Rate 0 never gives a token.
#[inline(always)]
pub fn take_token(bucket: &mut TokenBucket, now_ns: u64, per_second: u32) -> bool {
    if per_second == 0 {
        return false;
    }
    let cost = BUCKET_CAPACITY_NS / u64::from(per_second);
    let elapsed = now_ns.saturating_sub(bucket.last_ns);
    let credit = bucket.credit_ns.saturating_add(elapsed);
    let credit = if credit > BUCKET_CAPACITY_NS {
        BUCKET_CAPACITY_NS
    } else {
        credit
    };
    bucket.last_ns = now_ns;
    if credit >= cost {
        bucket.credit_ns = credit - cost;
        true
    } else {
        bucket.credit_ns = credit;
        false
    }
}

/// First GUE outer UDP source port; see [`gue_source_port`].
pub const GUE_SPORT_BASE: u16 = 32768;
/// Number of GUE outer UDP source ports; see [`gue_source_port`].
pub const GUE_SPORT_SPAN: u32 = 28232;

/// The outer UDP source port of a GUE packet of the flow with hash
/// `flow_hash`: `GUE_SPORT_BASE + flow_hash % GUE_SPORT_SPAN`, within the
/// ephemeral range 32768-60999 (Linux's default `ip_local_port_range`), so
/// a backend's NIC spreads flows over its queues (RSS over the UDP ports)
/// while one flow keeps one port, as Katran does.
#[inline(always)]
pub const fn gue_source_port(flow_hash: u32) -> u16 {
    GUE_SPORT_BASE + (flow_hash % GUE_SPORT_SPAN) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_decides_which_packets_are_filtered() {
        use FilterVerdict::*;
        // (scope all, to a VIP address, source allowed) -> verdict
        let cases = [
            (false, true, false, Drop),
            (false, true, true, ToVipAddress),
            (false, false, false, Pass),
            (false, false, true, Pass),
            (true, true, false, Drop),
            (true, true, true, ToVipAddress),
            (true, false, false, Drop),
            (true, false, true, Pass),
        ];
        for (all, vip, allowed, verdict) in cases {
            assert_eq!(
                filter_verdict(all, vip, || allowed),
                verdict,
                "{all} {vip} {allowed}"
            );
        }
    }

    #[test]
    fn exact_port_first_then_wildcard() {
        let vips = [([0, 80], "web"), ([0, 0], "any")];
        let lookup = |p: [u8; 2]| vips.iter().find(|(port, _)| *port == p).map(|v| v.1);
        assert_eq!(match_vip([0, 80], lookup), Some("web"));
        assert_eq!(match_vip([0, 81], lookup), Some("any"));
        let only_web = |p: [u8; 2]| (p == [0, 80]).then_some("web");
        assert_eq!(match_vip([0, 81], only_web), None);
    }

    #[test]
    fn a_vip_list_narrows_never_widens() {
        assert!(vip_source_allowed(false, || false));
        assert!(vip_source_allowed(true, || true));
        assert!(!vip_source_allowed(true, || false));
    }

    #[test]
    fn the_bucket_gives_a_second_s_burst_then_the_rate() {
        let mut b = TokenBucket::default();
        let start = 5_000_000_000;
        let given = (0..1500)
            .filter(|_| take_token(&mut b, start, 1000))
            .count();
        assert_eq!(given, 1000, "a full bucket gives one second's worth");
        assert!(!take_token(&mut b, start, 1000));
        // 10 ms later: 10 more.
        let given = (0..50)
            .filter(|_| take_token(&mut b, start + 10_000_000, 1000))
            .count();
        assert_eq!(given, 10);
        assert!(
            !take_token(&mut TokenBucket::default(), start, 0),
            "rate 0: never"
        );
    }

    #[test]
    fn usable_needs_active_and_healthy() {
        assert!(backend_usable(BACKEND_F_ACTIVE | BACKEND_F_HEALTHY));
        assert!(!backend_usable(BACKEND_F_ACTIVE));
        assert!(!backend_usable(BACKEND_F_HEALTHY));
        assert!(maglev_member(true, 1));
        assert!(!maglev_member(true, 0));
        assert!(!maglev_member(false, 5));
    }

    #[test]
    fn gue_source_ports_stay_in_the_ephemeral_range() {
        for hash in [0, 1, 28231, 28232, u32::MAX, 0x8000_0000] {
            let port = gue_source_port(hash);
            assert!((32768..61000).contains(&port), "{hash:#x}: {port}");
        }
        assert_eq!(gue_source_port(28231), 60999);
        assert_eq!(gue_source_port(28232), 32768);
    }

    /// 1024 VIP addresses (the most `MAX_VIPS` allows) of one /22, and of
    /// one IPv6 /118, spread over the filter: few share a bit, and under
    /// 1 % of 100,000 other addresses find their bit set.
    #[test]
    fn vip_bloom_bits_spread() {
        const WORDS: usize = crate::VIP_BLOOM_WORDS as usize;
        for v6 in [false, true] {
            let key = |i: u32| {
                if v6 {
                    let mut a = [0u8; 16];
                    a[0] = 0xfd;
                    a[12..].copy_from_slice(&i.to_be_bytes());
                    AddrKey::v6(a)
                } else {
                    AddrKey::v4((0x0a0a_0000 + i).to_be_bytes())
                }
            };
            let mut filter = [0u64; WORDS];
            for i in 0..crate::MAX_VIPS {
                let (word, mask) = vip_bloom_bit(&key(i));
                assert_eq!(mask.count_ones(), 1);
                filter[word as usize] |= mask;
            }
            let distinct: u32 = filter.iter().map(|w| w.count_ones()).sum();
            assert!(distinct > 1000, "v6 {v6}: {distinct} distinct bits");
            let false_positives = (0x10_0000..0x10_0000 + 100_000)
                .filter(|&i| {
                    let (word, mask) = vip_bloom_bit(&key(i));
                    filter[word as usize] & mask != 0
                })
                .count();
            assert!(false_positives < 1000, "v6 {v6}: {false_positives}");
        }
        assert_ne!(
            vip_bloom_bit(&AddrKey::v4([10, 0, 0, 1])),
            vip_bloom_bit(&AddrKey::v6([
                10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]))
        );
    }

    /// The /16 filter and the trie say the same as a plain prefix match for
    /// 200,000 pseudo-random sources and prefixes of every kind: /8, /12,
    /// /16, /24, /32, and a /24 inside an allowed /16.
    #[test]
    fn the_slash16_filter_agrees_with_a_prefix_match() {
        const WORDS: usize = crate::ALLOW16_WORDS as usize;
        let prefixes: [([u8; 4], u8); 6] = [
            ([10, 0, 0, 0], 8),
            ([172, 16, 0, 0], 12),
            ([192, 168, 0, 0], 16),
            ([198, 51, 100, 0], 24),
            ([203, 0, 113, 7], 32),
            ([192, 168, 7, 0], 24),
        ];
        let covers = |(p, len): ([u8; 4], u8), a: [u8; 4]| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from_be_bytes(p) & mask == u32::from_be_bytes(a) & mask
        };
        let mut words = [0u64; WORDS];
        for (p, len) in prefixes {
            allow16_mark(&mut words, [p[0], p[1]], len);
        }
        let mut x: u32 = 0x1234_5678;
        for i in 0..200_000u32 {
            // Half the sources near the prefixes, half anywhere.
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let a = if i % 2 == 0 {
                let (p, _) = prefixes[(i / 2) as usize % prefixes.len()];
                let near = u32::from_be_bytes(p) ^ (x >> 12);
                near.to_be_bytes()
            } else {
                x.to_be_bytes()
            };
            let (word, shift) = allow16_slot([a[0], a[1]]);
            let bits = (words[word as usize] >> shift) & 3;
            let expected = prefixes.iter().any(|&p| covers(p, a));
            let in_trie = || prefixes.iter().any(|&p| covers(p, a));
            assert_eq!(allow16_verdict(bits, in_trie), expected, "{a:?}");
            // The bits themselves: "whole" under a prefix of /16 or
            // shorter, nothing where the /16 holds no prefix, "ask the
            // trie" only where a longer prefix lies in the /16.
            let whole = prefixes
                .iter()
                .any(|&(p, len)| len <= 16 && covers((p, len), a));
            let part = prefixes
                .iter()
                .any(|&(p, len)| len > 16 && p[0] == a[0] && p[1] == a[1]);
            assert_eq!(bits & ALLOW16_WHOLE != 0, whole, "{a:?}");
            if !whole {
                assert_eq!(bits, if part { ALLOW16_PART } else { 0 }, "{a:?}");
            }
        }
    }
}
