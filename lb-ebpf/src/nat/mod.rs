//! The NAT modes' data path (docs/datapath.md, "NAT modes"; the table, the SNAT port rule and
//! the expiry rule are `lb_common::nat`'s):
//!
//! ```text
//!  xdp_lb ── packet of a NAT VIP's flow, backend chosen ──► xdp_nat_v4/_v6 (forward):
//!             (the choice in LB_NAT_HANDOFF)                 translation found, or allocated
//!                                                            (nat: a SNAT port by BPF_NOEXIST
//!                                                            insert of the reply entry), next
//!                                                            hop, rewrite, XDP_TX / REDIRECT
//!  xdp_lb ── a packet it would pass (GLOBAL_F_NAT) ───────► xdp_nat_reply_v4/_v6 (reply):
//!                                                            reply entry found: rewrite to
//!                                                            VIP:port -> client, send;
//!                                                            none: XDP_PASS untouched
//! ```
//!
//! Each is a program of its own, tail-called by `xdp_lb` or `xdp_lb_v6`
//! (`LB_PROGS`), so the DSR path's verification never walks them. Both
//! parse the frame again ([`frame`]): offsets handed over in a map value
//! would be unbounded for the verifier, and the parse is a few loads.

mod errors;
mod rewrite;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    AddrKey, Backend, FlowKey, GLOBAL_F_DNAT, MAX_NAT_SOURCES, NAT_F_ANSWERED, NAT_F_CLOSING,
    NAT_F_DNAT, NAT_F_REPLY, NatEntry, NatEvent, NatHandoff, Outcome, PROTO_TCP, PROTO_UDP,
    SNAT_PORT_TRIES, VIP_F_DNAT, nat_clock, snat_port, snat_source,
};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    encap, icmp,
    maps::{
        LB_BACKENDS, LB_BE_PORTS, LB_BE_REPLY_STATS, LB_BE_STATS, LB_GLOBALS, LB_NAT,
        LB_NAT_HANDOFF, LB_NAT_SOURCES, LB_NAT_STATS, LB_VIP_REPLY_STATS, count,
    },
    nexthop::{self, NextHop, Route},
    parse::{L3, ipv4_at, ipv6_at, is_fragment, l3_offset, ptr_at},
};

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only a new key.
const BPF_NOEXIST: u64 = 1;
/// `BPF_ANY`: insert or replace.
const BPF_ANY: u64 = 0;
/// TCP FIN and RST bits of the flags byte (RFC 9293 section 3.1).
const TCP_FIN_RST: u8 = 0x01 | 0x04;
/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// IPv4 "don't fragment" flag, as the frags field reads (RFC 791).
const IP_DF: u16 = 0x4000;

/// A TCP or UDP packet of the program's family, as found in the frame.
pub(crate) struct Frame {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP or UDP header.
    l4: usize,
    /// Its 5-tuple as it arrived.
    key: FlowKey,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
    /// IPv4 total length, or IPv6 header plus payload.
    len: u16,
    /// IPv4: DF set and no options (the "too big" answer can quote it).
    /// IPv6: always.
    can_answer_too_big: bool,
}

/// The frame's TCP or UDP packet of family `V6`; `Ok(None)` for anything
/// else (other protocols, fragments, the other family): not a NAT flow's.
#[inline(always)]
fn frame<const V6: bool>(ctx: &XdpContext) -> Result<Option<Frame>, Outcome> {
    let Some((l3, family)) = l3_offset(ctx)? else {
        return Ok(None);
    };
    let (l4, proto, src, dst, len, can_answer_too_big) = match family {
        L3::V4 if !V6 => {
            let ip = ipv4_at(ctx, l3)?;
            // SAFETY: bounds checked by ipv4_at; fields copied out.
            let hdr: &Ipv4Hdr = unsafe { &*ip.hdr };
            if is_fragment(hdr) {
                return Ok(None);
            }
            let df = u16::from_be_bytes(hdr.frags) & IP_DF != 0;
            (
                l3 + ip.len,
                hdr.proto,
                AddrKey::v4(hdr.src_addr).addr,
                AddrKey::v4(hdr.dst_addr).addr,
                u16::from_be_bytes(hdr.tot_len),
                df && ip.len == Ipv4Hdr::LEN,
            )
        }
        L3::V6 if V6 => {
            let ip = ipv6_at(ctx, l3)?;
            if ip.fragment {
                return Ok(None);
            }
            let hdr: *const network_types::ip::Ipv6Hdr =
                ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
            // SAFETY: bounds checked by ptr_at; fields copied out.
            let (src, dst) = unsafe { ((*hdr).src_addr, (*hdr).dst_addr) };
            (ip.l4, ip.proto, src, dst, ipv6_len(ctx, l3)?, true)
        }
        _ => return Ok(None),
    };
    let (sport, dport, tcp_flags) = if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at for the whole 20-byte header.
        unsafe {
            (
                (*tcp).source,
                (*tcp).dest,
                *tcp.cast::<u8>().add(TCP_FLAGS_OFFSET),
            )
        }
    } else if proto == PROTO_UDP {
        let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(Outcome::DropMalformed)?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { ((*udp).src, (*udp).dst, 0) }
    } else {
        return Ok(None);
    };
    let family = if V6 {
        lb_common::FAMILY_V6
    } else {
        lb_common::FAMILY_V4
    };
    Ok(Some(Frame {
        l3,
        l4,
        key: FlowKey::new(family, src, dst, sport, dport, proto),
        tcp_flags,
        len,
        can_answer_too_big,
    }))
}

/// The length of the IPv6 packet at `l3`: header and payload, bytes.
/// `Err(DropMalformed)` when the header is cut short or the sum overflows.
#[inline(always)]
pub(crate) fn ipv6_len(ctx: &XdpContext, l3: usize) -> Result<u16, Outcome> {
    let hdr: *const network_types::ip::Ipv6Hdr = ptr_at(ctx, l3).ok_or(Outcome::DropMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let payload = u16::from_be_bytes(unsafe { (*hdr).payload_len });
    payload.checked_add(40).ok_or(Outcome::DropMalformed)
}

/// Counts NAT event `event`.
#[inline(always)]
fn nat_event(event: NatEvent) {
    count(&LB_NAT_STATS, event as u32, 0);
}

/// Notes a packet of entry `e`'s direction at clock `now`: its time when
/// the clock's unit changed (an entry is shared by every CPU: written
/// about once a second, not per packet), a FIN or RST (`tcp_flags`),
/// and in a reply entry that the backend answered.
#[inline(always)]
fn touch(e: &mut NatEntry, now: u32, tcp_flags: u8) {
    let answered = e.flags & NAT_F_REPLY;
    if e.last_seen != now || e.flags & NAT_F_ANSWERED == 0 && answered != 0 {
        e.last_seen = now;
        if answered != 0 {
            e.flags |= NAT_F_ANSWERED;
        }
    }
    if tcp_flags & TCP_FIN_RST != 0 && e.flags & NAT_F_CLOSING == 0 {
        e.flags |= NAT_F_CLOSING;
        nat_event(NatEvent::Closing);
    }
}

/// `xdp_nat_v4` and `xdp_nat_v6`: the packet `xdp_lb` handed over, with
/// its connection-table event (counted with the outcome).
#[inline(always)]
pub fn forward<const V6: bool>(ctx: &XdpContext) -> (Outcome, u32) {
    let Some(h) = LB_NAT_HANDOFF.get(0) else {
        return (Outcome::DropNatUnavailable, lb_common::NO_CONN_EVENT);
    };
    let outcome = match try_forward::<V6>(ctx, h) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    (outcome, h.conn_event)
}

#[inline(always)]
fn try_forward<const V6: bool>(ctx: &XdpContext, h: &NatHandoff) -> Result<Outcome, Outcome> {
    if h.icmp_error != 0 {
        return errors::forward_error::<V6>(ctx, h);
    }
    let globals = LB_GLOBALS.get(0).ok_or(Outcome::Passed)?;
    let f = frame::<V6>(ctx)?.ok_or(Outcome::DropNatUnavailable)?;
    let backend = LB_BACKENDS
        .get(h.backend_id)
        .ok_or(Outcome::DropNoBackend)?;
    let generation = backend.generation;
    // SAFETY: plain helper call.
    let now = nat_clock(unsafe { bpf_ktime_get_ns() });
    let e = translation::<V6>(f.tcp_flags, h, backend, now)?;
    // SAFETY: a map value, live while the program runs.
    let e = unsafe { &*e };
    // Routed before the frame changes, so a packet we cannot send is left
    // intact, and one too big is answered quoting the client's own packet.
    let family = if V6 { L3::V6 } else { L3::V4 };
    let next_hop = match nexthop::cached(h.backend_id, generation, f.len) {
        Some(next_hop) => next_hop,
        None => nexthop::lookup(ctx, family, &e.src, &e.dst, f.len),
    };
    match next_hop.route {
        Route::NoRoute => return Err(Outcome::DropNoRoute),
        Route::FragNeeded => {
            return Ok(if !f.can_answer_too_big {
                Outcome::DropTooBigNoDf
            } else if V6 {
                icmp::too_big_v6::reply(ctx, f.l3, u32::from(next_hop.mtu), globals.too_big_per_cpu)
            } else {
                icmp::too_big_v4::reply(ctx, f.l3, next_hop.mtu, globals.too_big_per_cpu)
            });
        }
        Route::Resolved | Route::NoNeighbour => {}
    }
    rewrite::packet::<V6>(ctx, f.l3, f.l4, f.key.proto, e)?;
    count(
        &LB_BE_STATS,
        h.backend_id,
        (ctx.data_end() - ctx.data()) as u64,
    );
    send(ctx, &next_hop, Outcome::NatForwarded)
}

/// The forward translation of the handed-over flow toward `backend`:
/// its entry while it names that backend (same id and generation); else a
/// new one ([`new_translation`]), the old reply entry removed when the flow
/// moved to another backend.
#[inline(always)]
fn translation<const V6: bool>(
    tcp_flags: u8,
    h: &NatHandoff,
    backend: &Backend,
    now: u32,
) -> Result<*const NatEntry, Outcome> {
    let key = &h.flow;
    if let Some(e) = LB_NAT.get_ptr_mut(key) {
        // SAFETY: a map value, live while the program runs.
        let e = unsafe { &mut *e };
        if e.backend_id == h.backend_id && e.generation == backend.generation {
            touch(e, now, tcp_flags);
            nat_event(NatEvent::Hit);
            return Ok(e);
        }
        // The flow's backend changed (its old one is no longer usable):
        // the old translation's reply entry goes, a new one is made.
        let _ = LB_NAT.remove(e.peer_key(key));
        nat_event(NatEvent::Moved);
    } else {
        nat_event(NatEvent::Allocated);
    }
    let done = new_translation::<V6>(h, backend, u32::from(tcp_flags), now);
    if let Some(outcome) = Outcome::from_index(done) {
        return Err(outcome);
    }
    // Read back: the entries were built in the subprogram's frame.
    LB_NAT.get_ptr(key).ok_or(Outcome::DropNatNoPort)
}

/// Makes the translation of the handed-over flow toward `backend` (at
/// clock `now`, the packet's TCP flags `tcp_flags`): the reply entry
/// first (in `nat`, the SNAT port it claims), then the forward entry.
/// Returns [`TRANSLATED`], or the index of the outcome that stops the
/// packet (a subprogram returns one scalar).
// A subprogram of its own: its two entries and key stay out of the
// packet path's stack frame.
#[inline(never)]
fn new_translation<const V6: bool>(
    h: &NatHandoff,
    backend: &Backend,
    tcp_flags: u32,
    now: u32,
) -> u32 {
    let key = &h.flow;
    let port = LB_BE_PORTS.get(h.backend_id).map_or(0, |p| *p);
    let backend_port = if port == 0 {
        key.dport
    } else {
        (port as u16).to_be_bytes()
    };
    let dnat = h.vip_flags & VIP_F_DNAT != 0;
    let mode = if dnat { NAT_F_DNAT } else { 0 };
    let closing = if tcp_flags & u32::from(TCP_FIN_RST) != 0 {
        NAT_F_CLOSING
    } else {
        0
    };
    let mut fwd = NatEntry {
        src: key.src,
        dst: backend.addr,
        sport: key.sport,
        dport: backend_port,
        flags: mode | closing,
        _pad: 0,
        vip_id: backend.vip_id,
        backend_id: h.backend_id,
        generation: backend.generation,
        last_seen: now,
        _reserved: 0,
    };
    let reply = NatEntry {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
        flags: mode | NAT_F_REPLY,
        _pad: 0,
        vip_id: backend.vip_id,
        backend_id: h.backend_id,
        generation: backend.generation,
        last_seen: now,
        _reserved: 0,
    };
    let made = if dnat {
        insert_dnat_reply(key, &fwd, &reply)
    } else {
        allocate_snat::<V6>(key, h.hash, &mut fwd, &reply)
    };
    if let Err(outcome) = made {
        return outcome as u32;
    }
    match LB_NAT.insert(key, fwd, BPF_ANY) {
        Ok(()) => TRANSLATED,
        Err(_) => Outcome::DropNatNoPort as u32,
    }
}

/// [`new_translation`]'s answer when the translation is made: no outcome's
/// index.
const TRANSLATED: u32 = u32::MAX;

/// `nat`: a SNAT address (by the flow's hash) and the first of
/// [`SNAT_PORT_TRIES`] ports whose reply 5-tuple is free, claimed by
/// inserting the reply entry with `BPF_NOEXIST` (so two CPUs never take
/// the same one); `fwd` gets them. `Err(DropNatNoPort)` when none is free.
#[inline(always)]
fn allocate_snat<const V6: bool>(
    key: &FlowKey,
    hash: u32,
    fwd: &mut NatEntry,
    reply: &NatEntry,
) -> Result<(), Outcome> {
    let sources = LB_NAT_SOURCES.get(0).ok_or(Outcome::DropNatNoPort)?;
    let addrs = if V6 {
        sources.v6_count
    } else {
        sources.v4_count
    };
    if addrs == 0 || sources.port_count == 0 {
        return Err(Outcome::DropNatNoPort);
    }
    let i = snat_source(hash, addrs) & (MAX_NAT_SOURCES - 1);
    fwd.src = if V6 {
        sources.v6[i]
    } else {
        AddrKey::v4(sources.v4[i]).addr
    };
    for attempt in 0..SNAT_PORT_TRIES {
        fwd.sport = snat_port(sources.port_first, sources.port_count, hash, attempt).to_be_bytes();
        if LB_NAT.insert(fwd.peer_key(key), reply, BPF_NOEXIST).is_ok() {
            return Ok(());
        }
    }
    Err(Outcome::DropNatNoPort)
}

/// `dnat`: the reply entry, keyed backend:port -> client:port. Taken by
/// another translation (the same client port toward the same backend
/// port through another VIP): `Err(DropNatNoPort)`; left by this same flow
/// (its forward entry evicted): replaced.
#[inline(always)]
fn insert_dnat_reply(key: &FlowKey, fwd: &NatEntry, reply: &NatEntry) -> Result<(), Outcome> {
    let reply_key = fwd.peer_key(key);
    if LB_NAT.insert(reply_key, reply, BPF_NOEXIST).is_ok() {
        return Ok(());
    }
    // SAFETY: a map value, read while the program runs.
    let same_flow = LB_NAT
        .get_ptr(reply_key)
        .is_some_and(|old| unsafe { (*old).src == key.dst && (*old).sport == key.dport });
    if !same_flow {
        return Err(Outcome::DropNatNoPort);
    }
    LB_NAT
        .insert(reply_key, reply, BPF_ANY)
        .map_err(|_| Outcome::DropNatNoPort)
}

/// `xdp_nat_reply_v4` and `xdp_nat_reply_v6`: a packet `xdp_lb` would
/// pass, looked up as a backend's reply. Without `dnat` VIPs only
/// packets to a SNAT port are looked up (the host's own connections use
/// other ports); a packet with no translation is passed untouched.
#[inline(always)]
pub fn reply<const V6: bool>(ctx: &XdpContext) -> Outcome {
    match try_reply::<V6>(ctx) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn try_reply<const V6: bool>(ctx: &XdpContext) -> Result<Outcome, Outcome> {
    let globals = LB_GLOBALS.get(0).ok_or(Outcome::Passed)?;
    let dnat = globals.flags & GLOBAL_F_DNAT != 0;
    let Some(f) = frame::<V6>(ctx)? else {
        return match errors::quoted_reply::<V6>(ctx)? {
            Some(q) => errors::reply_error::<V6>(ctx, &q, dnat),
            None => Ok(Outcome::Passed),
        };
    };
    if !dnat {
        let sources = LB_NAT_SOURCES.get(0).ok_or(Outcome::Passed)?;
        let port = u32::from(u16::from_be_bytes(f.key.dport));
        if port.wrapping_sub(sources.port_first) >= sources.port_count {
            return Ok(Outcome::Passed);
        }
    }
    let Some(e) = LB_NAT.get_ptr_mut(f.key) else {
        nat_event(NatEvent::ReplyMiss);
        return Ok(Outcome::Passed);
    };
    // SAFETY: a map value, live while the program runs.
    let e = unsafe { &mut *e };
    if e.flags & NAT_F_REPLY == 0 {
        // A client's packet to a VIP that is gone: the kernel's.
        return Ok(Outcome::Passed);
    }
    // SAFETY: plain helper call.
    touch(e, nat_clock(unsafe { bpf_ktime_get_ns() }), f.tcp_flags);
    nat_event(NatEvent::ReplyHit);
    let family = if V6 { L3::V6 } else { L3::V4 };
    let next_hop = nexthop::lookup(ctx, family, &e.src, &e.dst, f.len);
    match next_hop.route {
        Route::NoRoute => return Err(Outcome::DropNoRoute),
        // The client's path is narrower than the backend's packet (the
        // backend's own path MTU discovery sees our ICMP only once the
        // translation of errors lands): dropped, counted.
        Route::FragNeeded => return Err(Outcome::DropEncap),
        Route::Resolved | Route::NoNeighbour => {}
    }
    rewrite::packet::<V6>(ctx, f.l3, f.l4, f.key.proto, e)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count(&LB_VIP_REPLY_STATS, u32::from(e.vip_id), bytes);
    count(&LB_BE_REPLY_STATS, e.backend_id, bytes);
    send(ctx, &next_hop, Outcome::NatReplied)
}

/// Sends the rewritten frame to `next_hop`: `done` (XDP_TX) out of the
/// ingress interface, `Redirected` to another, or `PassedNoNeighbour` to
/// the kernel, which resolves the neighbour and forwards it.
#[inline(always)]
fn send(ctx: &XdpContext, next_hop: &NextHop, done: Outcome) -> Result<Outcome, Outcome> {
    if next_hop.route == Route::NoNeighbour {
        return Ok(Outcome::PassedNoNeighbour);
    }
    encap::set_macs(ctx, next_hop.smac, next_hop.dmac)?;
    if next_hop.ifindex != ctx.ingress_ifindex() as u32 {
        // SAFETY: plain helper call; returns XDP_REDIRECT for flags 0.
        unsafe { bpf_redirect(next_hop.ifindex, 0) };
        return Ok(Outcome::Redirected);
    }
    Ok(done)
}
