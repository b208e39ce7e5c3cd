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

/// SYN and ACK bits of the TCP flags byte (offset 13 of the header,
/// RFC 9293 section 3.1).
const TCP_SYN: u8 = 0x02;
/// See [`TCP_SYN`].
const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// As [`ports_at`], with whether the segment opens a TCP connection (SYN
/// set, ACK clear; `false` for UDP). The flags are read through the same
/// bounds check as the ports: a second check of a shorter range would be
/// folded away by the compiler and then refused by the verifier.
#[inline(always)]
pub fn flow_ports_at(
    ctx: &XdpContext,
    offset: usize,
    proto: u8,
) -> Result<Option<(Ports, bool)>, Outcome> {
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, offset).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at for the whole 20-byte header.
        let (ports, flags) = unsafe {
            let flags = *tcp.cast::<u8>().add(TCP_FLAGS_OFFSET);
            (((*tcp).source, (*tcp).dest), flags)
        };
        return Ok(Some((ports, flags & (TCP_SYN | TCP_ACK) == TCP_SYN)));
    }
    Ok(ports_at(ctx, offset, proto)?.map(|ports| (ports, false)))
}
