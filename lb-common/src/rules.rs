//! Decisions the kernel and userspace must make the same way, as pure
//! functions: `xdp_lb` calls them on every packet, `lb explain` and the
//! agent call them to say what the kernel does. Written once here, they
//! cannot drift apart.

use crate::{BACKEND_F_ACTIVE, BACKEND_F_HEALTHY, TokenBucket};

/// What the source filter makes of a packet (SPEC 4, `source_filter`).
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
    let cost = BUCKET_CAPACITY_NS / per_second as u64;
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
}
