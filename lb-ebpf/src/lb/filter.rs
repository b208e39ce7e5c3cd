//! Source filters: the allowed source prefixes, and each VIP's own list,
//! in LPM tries.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{VipSourceKey, VipSourceKey6};

use crate::maps::{LB_SRC_ALLOW_VIP4, LB_SRC_ALLOW_VIP6, LB_SRC_ALLOW4, LB_SRC_ALLOW6};

/// Whether an IPv4 source address is inside an allowed prefix.
#[inline(always)]
pub fn source_allowed_v4(src: [u8; 4]) -> bool {
    LB_SRC_ALLOW4.get(Key::new(32, src)).is_some()
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
    LB_SRC_ALLOW6.get(Key::new(128, src)).is_some()
}

/// Whether an IPv6 source address is inside one of VIP `vip_id`'s own
/// `allow` prefixes (stored as `32 + length` bits).
#[inline(always)]
pub fn source_allowed_vip_v6(vip_id: u32, src: [u8; 16]) -> bool {
    LB_SRC_ALLOW_VIP6
        .get(Key::new(160, VipSourceKey6::new(vip_id, src)))
        .is_some()
}
