//! Source filter: allowed source prefixes in an LPM trie.

use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::LB_SRC_ALLOW4;

/// Whether an IPv4 source address is inside an allowed prefix.
#[inline(always)]
pub fn source_allowed_v4(src: [u8; 4]) -> bool {
    LB_SRC_ALLOW4.get(Key::new(32, src)).is_some()
}
