//! Source filters: the global verdict ([`screen`]), the allowed source
//! prefixes, and each VIP's own list, in LPM tries.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    AddrKey, GLOBAL_F_SCOPE_ALL, Globals, Outcome, VipSourceKey, VipSourceKey6,
    rules::{FilterVerdict, allow16_slot, allow16_verdict, filter_verdict},
};

use super::step::Step;
use crate::maps::{
    LB_SRC_ALLOW_VIP4, LB_SRC_ALLOW_VIP6, LB_SRC_ALLOW4, LB_SRC_ALLOW4_16, LB_SRC_ALLOW6,
    LB_SRC_ALLOW6_16, is_vip_address, may_be_vip_address,
};

/// The global source filter for a packet to `dst` (either family) whose
/// source `allowed` checks (`source_allowed_v4`, `source_allowed_v6`),
/// by `lb_common::rules::filter_verdict`: `None` when the packet goes on
/// as traffic to a VIP address; else the parse step's result, `Err`
/// (`DropSourceFilter`) or `Ok(Passed)`. A set VIP-address bit is confirmed
/// in `LB_VIP_ADDRS` before a drop (with `scope = "vips"`), so an address
/// that only shares a VIP's bit is passed.
#[inline(always)]
pub(super) fn screen(
    globals: &Globals,
    dst: &AddrKey,
    allowed: impl FnOnce() -> bool,
) -> Option<Result<Step, Outcome>> {
    let scope_all = globals.flags & GLOBAL_F_SCOPE_ALL != 0;
    match filter_verdict(scope_all, may_be_vip_address(dst), allowed) {
        FilterVerdict::Drop if scope_all || is_vip_address(dst) => {
            Some(Err(Outcome::DropSourceFilter))
        }
        FilterVerdict::Drop | FilterVerdict::Pass => Some(Ok(Step::verdict(Outcome::Passed))),
        FilterVerdict::ToVipAddress => None,
    }
}

/// Whether an IPv4 source address is inside an allowed prefix: its /16's
/// two bits in `LB_SRC_ALLOW4_16` (an inlined array read), and the trie
/// only for a /16 that holds longer prefixes.
#[inline(always)]
pub fn source_allowed_v4(src: [u8; 4]) -> bool {
    let (word, shift) = allow16_slot([src[0], src[1]]);
    let bits = LB_SRC_ALLOW4_16.get(word).map_or(0, |w| (*w >> shift) & 3);
    allow16_verdict(bits, || LB_SRC_ALLOW4.get(Key::new(32, src)).is_some())
}

/// Whether an IPv4 source address is inside one of VIP `vip_id`'s own
/// `allow` prefixes (stored as `32 + length` bits of VIP id then address).
#[inline(always)]
pub fn source_allowed_vip_v4(vip_id: u32, src: [u8; 4]) -> bool {
    LB_SRC_ALLOW_VIP4
        .get(Key::new(64, VipSourceKey::v4(vip_id, src)))
        .is_some()
}

/// Whether an IPv6 source address is inside an allowed prefix.
#[inline(always)]
pub fn source_allowed_v6(src: [u8; 16]) -> bool {
    let (word, shift) = allow16_slot([src[0], src[1]]);
    let bits = LB_SRC_ALLOW6_16.get(word).map_or(0, |w| (*w >> shift) & 3);
    allow16_verdict(bits, || LB_SRC_ALLOW6.get(Key::new(128, src)).is_some())
}

/// Whether an IPv6 source address is inside one of VIP `vip_id`'s own
/// `allow` prefixes (stored as `32 + length` bits).
#[inline(always)]
pub fn source_allowed_vip_v6(vip_id: u32, src: [u8; 16]) -> bool {
    LB_SRC_ALLOW_VIP6
        .get(Key::new(160, VipSourceKey6::new(vip_id, src)))
        .is_some()
}
