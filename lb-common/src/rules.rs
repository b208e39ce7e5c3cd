//! Decisions the kernel and userspace must make the same way, as pure
//! functions: `xdp_lb` calls them on every packet, `lb explain` and the
//! agent call them to say what the kernel does. Written once here, they
//! cannot drift apart.

use crate::{BACKEND_F_ACTIVE, BACKEND_F_HEALTHY};

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
    fn usable_needs_active_and_healthy() {
        assert!(backend_usable(BACKEND_F_ACTIVE | BACKEND_F_HEALTHY));
        assert!(!backend_usable(BACKEND_F_ACTIVE));
        assert!(!backend_usable(BACKEND_F_HEALTHY));
        assert!(maglev_member(true, 1));
        assert!(!maglev_member(true, 0));
        assert!(!maglev_member(false, 5));
    }
}
