//! Source filters: the allowed source prefixes, and each VIP's own list,
//! in LPM tries.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::VipSourceKey;

use crate::maps::{LB_SRC_ALLOW_VIP4, LB_SRC_ALLOW4};

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
