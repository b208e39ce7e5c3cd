//! Source filters: the allowed source prefixes, and each VIP's own list,
//! in LPM tries.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    VipSourceKey, VipSourceKey6,
    rules::{allow16_slot, allow16_verdict},
};

use crate::maps::{
    LB_SRC_ALLOW_VIP4, LB_SRC_ALLOW_VIP6, LB_SRC_ALLOW4, LB_SRC_ALLOW4_16, LB_SRC_ALLOW6,
    LB_SRC_ALLOW6_16,
};

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
