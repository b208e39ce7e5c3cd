//! Outer headers toward a backend: IP-in-IP and GUE over IPv4 or IPv6
//! ([`outer`]), their checksums ([`csum`]), the answers when a packet would
//! not fit (ICMP [`too_big`], ICMPv6 [`ptb`]), and the Ethernet addresses
//! of the frame sent.

use aya_ebpf::programs::XdpContext;
use lb_common::Outcome;
use network_types::eth::EthHdr;

use crate::parse::ptr_at;

pub mod csum;
pub mod outer;
pub mod ptb;
pub mod too_big;

pub use outer::{Outer, push};

/// Sets the Ethernet addresses of the frame.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: [u8; 6], dst: [u8; 6]) -> Result<(), Outcome> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::DropEncap)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).src_addr = src;
        (*eth).dst_addr = dst;
    }
    Ok(())
}
