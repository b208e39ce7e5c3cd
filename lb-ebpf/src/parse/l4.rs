//! TCP and UDP ports.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, PROTO_TCP, PROTO_UDP};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use super::ptr_at;

/// Source and destination ports, network byte order.
pub type Ports = ([u8; 2], [u8; 2]);

/// Source and destination ports (network byte order) of the TCP or UDP header
/// at `offset`. `Ok(None)` for other protocols; `Err(DropMalformed)` when the
/// header (20 bytes for TCP, 8 for UDP) is truncated.
#[inline(always)]
pub fn ports_at(ctx: &XdpContext, offset: usize, proto: u8) -> Result<Option<Ports>, Outcome> {
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        return Ok(Some(unsafe { ((*tcp).source, (*tcp).dest) }));
    }
    if proto == PROTO_UDP {
        let udp: *const UdpHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        return Ok(Some(unsafe { ((*udp).src, (*udp).dst) }));
    }
    Ok(None)
}
