//! The load balancer's path for one packet (docs/datapath.md tells the
//! mechanisms at length):
//!
//! ```text
//!  client 10.0.0.10                load balancer 10.0.0.2                 backend 10.0.0.21
//!  ───────────────                 ──────────────────────                 ─────────────────
//!  SYN 10.0.0.10 -> VIP:80 ──────► xdp_lb on eth0:
//!                                   0 VIP-address filter (a bit per VIP address) ── clear? XDP_PASS
//!                                   1 source filter (LPM trie)  ── outside? XDP_DROP, counted
//!                                   2 VIP lookup (addr, port, proto; port 0 = any) ── no? XDP_PASS
//!                                   3 Maglev: flow hash % M -> backend (healthy only)
//!                                   4 push outer IPv4: 10.0.0.2 -> 10.0.0.21, proto 4, DF, TTL 64
//!                                   5 next hop cached by the agent (else bpf_fib_lookup); XDP_TX ─► xdp_decap on eth0:
//!                                                                                       outer dst is mine, inner dst
//!                                                                                       a served VIP: strip, XDP_PASS
//!                                                                                       kernel: socket on VIP (lo)
//!  SYN-ACK VIP:80 -> 10.0.0.10 ◄──────────────────────────────────────────────────────── (direct server return)
//! ```
//!
//! In code, up to three subprograms called one after the other from the
//! entry (so their stack frames never add up), each answering a [`Step`]
//! (its module states the convention):
//!
//! 1. parse, per family ([`v4`], [`v6`]): filters 0 and 1, ICMP to a VIP
//!    address, the flow; the IPv4 step ends with the [`shortcut`] of an
//!    established flow, which may answer for the next two steps;
//! 2. [`choose`]: 2 and 3 (the VIP, its own sources, the backend by
//!    connection table or Maglev);
//! 3. [`forward`]: 4 and 5 (encapsulation by the backend's family and the
//!    encapsulation kind, next hop);
//! 4. when the packet would not fit, the "too big" answer ([`too_big`]).
//!
//! Two programs run this path, one per family (`run::<V6>`): `xdp_lb`
//! takes IPv4 and hands IPv6 to `xdp_lb_v6` by tail call (`LB_PROGS`), so
//! the verifier walks each program for one family. [`run`] returns the
//! outcome; the entry point in main.rs counts it and turns it into its XDP
//! action (`Outcome::action`). Two more hand-overs leave this path by tail
//! call (`crate::nat`): a packet of a NAT VIP's flow, its backend chosen,
//! goes to `xdp_nat_v4`/`_v6` instead of [`forward`]; a packet the path
//! would pass goes, while a VIP is in a NAT mode, to
//! `xdp_nat_reply_v4`/`_v6`, which translates a backend's reply or passes
//! it. A packet to a VIP address that no VIP takes is dropped
//! (`DropNoVip`), not passed: the node would route it back out.
//!
//! Each subprogram costs its call and return (about 8 ns here: the kernel
//! returns through its return thunk, a mispredicted return on CPUs that need
//! the SRSO mitigation), so a packet of an established IPv4 flow whose
//! backend has a cached next hop is sent from the parse step itself, and
//! only the other packets pay for the next steps.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::generated::bpf_redirect, programs::XdpContext};
use lb_common::{
    AddrKey, Backend, ConnEvent, FAMILY_V6, FlowKey, GLOBAL_F_GUE, GLOBAL_F_NAT, GLOBAL_F_READY,
    Globals, NO_CONN_EVENT, Outcome, PROG_LB_V6, PROG_NAT_REPLY_V4, PROG_NAT_REPLY_V6, PROG_NAT_V4,
    PROG_NAT_V6, VIP_F_CONNS_MATCH_TABLE, VIP_F_NAT_MODES, VIP_F_OWN_ALLOW,
    VIP_F_PASS_ON_NO_BACKEND, VIP_LIVE, VIP_SHADOWED, VipValue, rules::vip_source_allowed,
    stat_index,
};

pub mod filter;
mod packet;
pub mod select;
mod step;
mod v4;
mod v6;

use select::{
    Limits, LookedUp, connection, established_flow, find_vip, flow_backend, forget_flow,
    lookup_backend, maglev_backend,
};

use self::{
    packet::{Choice, ConnLookup, Inner, Packet},
    step::Step,
};
use crate::{
    encap::{self, Outer},
    icmp,
    maps::{
        LB_BE_STATS, LB_GLOBALS, LB_NAT_HANDOFF, LB_PROGS, LB_VIP_DROPS, LB_VIP_FLAGS,
        LB_VIP_STATS, count, is_vip_address,
    },
    nexthop::{self, Route},
    parse::{L3, l3_offset},
};

/// Processes one frame: its outcome, and the entry of `LB_STATS` that
/// counts it (`lb_common::stat_index` of the outcome and the
/// connection-table event, if the packet reached one). `V6`: the program
/// of IPv6 packets (`xdp_lb_v6`); else `xdp_lb`, which takes IPv4 and hands
/// IPv6 to `xdp_lb_v6` by tail call, so that each program holds, and the
/// verifier walks, one family's path.
#[inline(always)]
pub fn run<const V6: bool>(ctx: &XdpContext) -> (Outcome, u32) {
    let mut conn_event = NO_CONN_EVENT;
    let outcome = match try_lb::<V6>(ctx, &mut conn_event) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    (outcome, stat_index(outcome as u32, conn_event))
}

/// [`run`]: `Ok` and `Err` both carry the outcome; `Err` is taken by `?` on
/// a parse or lookup failure. `conn_event` is set once a backend is chosen.
#[inline(always)]
fn try_lb<const V6: bool>(ctx: &XdpContext, conn_event: &mut u32) -> Result<Outcome, Outcome> {
    let Some(globals) = LB_GLOBALS.get(0) else {
        return Ok(Outcome::Passed);
    };
    if globals.flags & GLOBAL_F_READY == 0 {
        return Ok(Outcome::Passed);
    }
    let Some((l3, family)) = l3_offset(ctx)? else {
        return Ok(Outcome::Passed);
    };
    // Written whole by the parse step before Step::CHOOSE (the packet) or
    // an answer with the choice (the choice too), and by choose before
    // its answer with the choice: not zeroed
    // here, which would cost every packet (the non-VIP ones first) a
    // byte-by-byte memset.
    let mut p = MaybeUninit::<Packet>::uninit();
    let mut c = MaybeUninit::<Choice>::uninit();
    let mut step = match family {
        L3::V4 if !V6 => v4::parse(ctx, globals, l3, p.as_mut_ptr(), c.as_mut_ptr()),
        L3::V6 if V6 => v6::parse(ctx, globals, l3, p.as_mut_ptr()),
        L3::V6 => {
            // SAFETY: our own context and program array; on success the
            // call does not return.
            unsafe { LB_PROGS.tail_call(ctx, PROG_LB_V6) };
            // No xdp_lb_v6 in the array (the agent fills it before it
            // attaches xdp_lb): the packet goes to the kernel untouched.
            return Ok(Outcome::Passed);
        }
        // xdp_lb_v6 is only ever handed IPv6 packets.
        L3::V4 => return Ok(Outcome::Passed),
    };
    if step == Step::CHOOSE {
        // SAFETY: the parse step wrote the whole packet before CHOOSE.
        let packet = unsafe { p.assume_init_ref() };
        step = choose(
            globals.max_new_per_cpu,
            globals.conns_epoch,
            packet,
            c.as_mut_ptr(),
        );
        // No VIP took it: checked here, once, rather than on each of
        // choose's paths (which 6.1's verifier walks over and over).
        if step == Step::verdict(Outcome::Passed) {
            step = Step::verdict(no_vip(&packet.flow));
        }
    }
    if !step.has_choice() {
        let outcome = step.outcome();
        if outcome == Outcome::Passed && globals.flags & GLOBAL_F_NAT != 0 {
            // Maybe a backend's reply to a NAT translation: the reply
            // program translates it, or passes it untouched.
            let slot = if V6 {
                PROG_NAT_REPLY_V6
            } else {
                PROG_NAT_REPLY_V4
            };
            // SAFETY: our own context and program array; on success the
            // call does not return.
            unsafe { LB_PROGS.tail_call(ctx, slot) };
        }
        return Ok(outcome);
    }
    // SAFETY: the packet and the whole choice are written before an answer
    // with the choice.
    let (p, c) = unsafe { (p.assume_init_ref(), c.assume_init_mut()) };
    *conn_event = c.conn_event;
    let mut step = step.without_choice();
    if step == Step::FORWARD && c.nat != 0 {
        return Err(nat_handoff::<V6>(ctx, p, c));
    }
    if step == Step::FORWARD {
        step = forward(ctx, globals, p, c);
    }
    match step {
        Step::TOO_BIG => Ok(too_big::<V6>(
            ctx,
            &p.inner,
            c.mtu_left,
            globals.too_big_per_cpu,
        )),
        step => Ok(step.outcome()),
    }
}

/// Hands a packet of a NAT VIP's flow, its backend chosen, to the NAT
/// program of its family (`xdp_nat_v4`, `xdp_nat_v6`), which translates
/// and sends it and counts its outcome (an ICMP error about the flow too:
/// it is translated for the backend). Returns only when it cannot:
/// `DropNatUnavailable` (no program in the slot).
#[inline(always)]
fn nat_handoff<const V6: bool>(ctx: &XdpContext, p: &Packet, c: &Choice) -> Outcome {
    let Some(h) = LB_NAT_HANDOFF.get_ptr_mut(0) else {
        return Outcome::DropNatUnavailable;
    };
    // SAFETY: this CPU's entry, written field by field in place (a whole
    // struct would be built on the stack first); the NAT program reads it
    // on this CPU before any other packet runs here.
    unsafe {
        copy_flow(&raw mut (*h).flow, &p.flow);
        (*h).backend_id = c.backend_id;
        (*h).hash = c.hash;
        (*h).conn_event = c.conn_event;
        (*h).vip_flags = c.nat;
        (*h).icmp_error = u32::from(p.icmp_error);
    }
    let slot = if V6 { PROG_NAT_V6 } else { PROG_NAT_V4 };
    // SAFETY: our own context and program array; on success the call does
    // not return.
    unsafe { LB_PROGS.tail_call(ctx, slot) };
    Outcome::DropNatUnavailable
}

/// Copies a flow key as five 8-byte words (volatile stores: a plain copy
/// between the stack and a map value compiles to a call of the byte-by-byte
/// `memmove`).
#[inline(always)]
fn copy_flow(dst: *mut FlowKey, src: &FlowKey) {
    // SAFETY: a FlowKey is 40 bytes of plain data aligned to 8, and `dst`
    // is a writable one.
    unsafe {
        let words = *(src as *const FlowKey).cast::<[u64; 5]>();
        let dst = dst.cast::<u64>();
        for (i, w) in words.into_iter().enumerate() {
            dst.add(i).write_volatile(w);
        }
    }
}

/// The established-flow shortcut, the last part of the IPv4 parse step (in
/// its subprogram): a TCP or UDP packet that is not a SYN gets its choice
/// here when its flow is established ([`established_choice`]), and with the
/// backend's cached next hop it is encapsulated and sent here too, as
/// [`forward`] would. Returns [`Step::FORWARD`] (no cached next hop:
/// forward looks it up), [`Step::TOO_BIG`] or the verdict, marked with
/// the choice; a verdict (the VIP's own list refused the source); or
/// [`Step::CHOOSE`], the packet carrying what the connection table said
/// (`Packet::conn`).
#[inline(always)]
fn shortcut(ctx: &XdpContext, globals: &Globals, p: *mut Packet, c: *mut Choice) -> Step {
    // SAFETY: the caller's packet, written whole by the parse step.
    let p = unsafe { &mut *p };
    if p.syn || p.icmp_error {
        return Step::CHOOSE;
    }
    match established_choice(p, globals.conns_epoch, c) {
        // SAFETY: written whole by established_choice before FORWARD.
        Ok(Step::FORWARD) if unsafe { (*c).nat } != 0 => Step::FORWARD.with_choice(),
        Ok(Step::FORWARD) => {
            // SAFETY: written whole by established_choice before FORWARD.
            let c = unsafe { &mut *c };
            Step::or_verdict(try_forward::<false>(ctx, globals, p, c)).with_choice()
        }
        Ok(refused) => refused,
        Err((entry, hash)) => {
            p.hash = hash;
            p.conn = ConnLookup::of(entry);
            Step::CHOOSE
        }
    }
}

/// The choice for an established flow: its connection-table entry, read
/// through this CPU's flow cache ([`established_flow`]), while its backend
/// is usable; the VIP is reached through the backend's VIP id (one array
/// read, no VIP hash lookup) and must be live and take the packet's
/// source. `Ok(Step::FORWARD)` with the choice written and the VIP's
/// counter counted; `Ok` with a verdict when the VIP's own list refuses the
/// source; else `Err` with what the table said ([`LookedUp`]).
#[inline(always)]
fn established_choice(p: &Packet, epoch: u32, c: *mut Choice) -> Result<Step, LookedUp> {
    let (backend_id, backend, conn, event, hash) = established_flow(&p.flow, epoch)?;
    let vip_id = u32::from(backend.vip_id);
    let flags = LB_VIP_FLAGS.get(vip_id).map_or(0, |flags| *flags);
    if flags & (VIP_LIVE | VIP_SHADOWED) != VIP_LIVE {
        return Err((Some(conn), hash));
    }
    if !vip_allows(p, vip_id, flags) {
        return Ok(refused(vip_id, p.bytes));
    }
    count(&LB_VIP_STATS, vip_id, p.bytes);
    write_choice(c, backend_id, backend, hash, event as u32, flags);
    Ok(Step::FORWARD)
}

/// The backend choice of a packet the [`shortcut`] left (a new flow, a
/// flow whose entry's backend is no longer usable or whose VIP is not live,
/// a SYN, an ICMP error): its VIP looked up by address, port and protocol,
/// and the Maglev choice (recorded or not, see [`flow_backend`]). A TCP
/// SYN looks its flow up only when the VIP's recorded flows may disagree
/// with its Maglev table (`VIP_F_CONNS_MATCH_TABLE` clear); other packets
/// come with what the shortcut found in the connection table. Either way
/// the VIP's own source list applies (not to ICMP errors) and the VIP's
/// counter counts the packet. A SYN that looks its flow up drops this
/// CPU's cached copy of it ([`forget_flow`]). Returns [`Step::FORWARD`]
/// marked with the choice, or a verdict.
// A subprogram of its own: its stack frame does not add to the others'.
#[inline(never)]
fn choose(max_new_per_cpu: u32, conns_epoch: u32, p: &Packet, c: *mut Choice) -> Step {
    let limits = Limits {
        max_new_per_cpu,
        conns_epoch,
    };
    let key = &p.flow;
    // A SYN's VIP first: when its recorded flows agree with its table, the
    // SYN needs no connection-table lookup. A SYN never takes the
    // established-flow choice below: it has its VIP already.
    if p.syn {
        let Some(vip) = find_vip(key.family, &key.dst, key.dport, key.proto) else {
            return Step::verdict(Outcome::Passed);
        };
        let hash = key.hash();
        // With the flag set, every copy in a flow cache agrees with the
        // table too (the agent moved the epoch before setting it), so only
        // a SYN that looks its flow up drops this CPU's copy.
        let direct = vip.flags & VIP_F_CONNS_MATCH_TABLE != 0;
        let entry = if direct {
            None
        } else {
            forget_flow(key);
            connection(key)
        };
        return backend_of_vip(limits, p, &vip, key, entry, hash, direct, c);
    }
    let (entry, hash) = if p.icmp_error {
        (None, key.hash())
    } else if p.conn.done() {
        (p.conn.entry(), p.hash)
    } else {
        match established_choice(p, conns_epoch, c) {
            Ok(Step::FORWARD) => return Step::FORWARD.with_choice(),
            Ok(refused) => return refused,
            Err(looked_up) => looked_up,
        }
    };
    let Some(vip) = find_vip(key.family, &key.dst, key.dport, key.proto) else {
        return Step::verdict(if p.icmp_error {
            Outcome::DropIcmpNotFromVip
        } else {
            Outcome::Passed
        });
    };
    backend_of_vip(limits, p, &vip, key, entry, hash, false, c)
}

/// The rule for a TCP or UDP packet no VIP takes: dropped when its
/// destination is a VIP address (`DropNoVip`: the node's kernel would route
/// it back out toward the router that sent it, which sends it back, until
/// its TTL runs out), passed when the address only shares a VIP address's
/// filter bit. A subprogram of its own: its address key stays out of the
/// entry's stack frame, which 6.1's verifier adds (rounded up to 32 bytes)
/// to the "too big" answer's.
#[inline(never)]
fn no_vip(key: &FlowKey) -> Outcome {
    let dst = if key.family == FAMILY_V6 {
        AddrKey::v6(key.dst)
    } else {
        AddrKey::v4([key.dst[0], key.dst[1], key.dst[2], key.dst[3]])
    };
    if is_vip_address(&dst) {
        Outcome::DropNoVip
    } else {
        Outcome::Passed
    }
}

/// The rest of [`choose`] once the packet's VIP is known: the VIP's own
/// source list (not for ICMP errors), its counter, and the backend: the
/// flow's (`entry`, looked up by the caller) while usable, else the Maglev
/// choice, recorded or not ([`flow_backend`]); with `direct` (a SYN whose
/// VIP's recorded flows agree with its table) the Maglev choice alone.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one step of choose, inlined: its inputs as they stand"
)]
fn backend_of_vip(
    limits: Limits,
    p: &Packet,
    vip: &VipValue,
    key: &FlowKey,
    entry: Option<lb_common::ConnValue>,
    hash: u32,
    direct: bool,
    c: *mut Choice,
) -> Step {
    if !p.icmp_error && !vip_allows(p, vip.vip_id, vip.flags) {
        return refused(vip.vip_id, p.bytes);
    }
    count(&LB_VIP_STATS, vip.vip_id, p.bytes);
    let chosen = if p.icmp_error {
        lookup_backend(vip, key, hash).map(|(id, backend)| (id, backend, NO_CONN_EVENT))
    } else if direct {
        maglev_backend(vip, hash).map(|(id, backend)| (id, backend, ConnEvent::SynDirect as u32))
    } else {
        flow_backend(vip, key, entry, hash, p.syn, limits)
            .map(|(id, backend, event)| (id, backend, event as u32))
    };
    let Some((backend_id, backend, conn_event)) = chosen else {
        return Step::of(no_backend(vip));
    };
    write_choice(c, backend_id, backend, hash, conn_event, vip.flags);
    Step::FORWARD.with_choice()
}

/// Whether VIP `vip_id` (with `VIP_F_*` `flags`) takes the packet's source:
/// its own `allow` list, when it has one (`lb_common::rules::vip_source_allowed`).
#[inline(always)]
fn vip_allows(p: &Packet, vip_id: u32, flags: u32) -> bool {
    vip_source_allowed(flags & VIP_F_OWN_ALLOW != 0, || {
        if p.flow.family == FAMILY_V6 {
            filter::source_allowed_vip_v6(vip_id, p.source)
        } else {
            let s = p.source;
            filter::source_allowed_vip_v4(vip_id, [s[0], s[1], s[2], s[3]])
        }
    })
}

/// A packet VIP `vip_id`'s own list refuses: counted for the VIP.
#[inline(always)]
fn refused(vip_id: u32, bytes: u64) -> Step {
    count(&LB_VIP_DROPS, vip_id, bytes);
    Step::verdict(Outcome::DropVipSourceFilter)
}

/// Writes the whole choice of backend `id` of a VIP with flags
/// `vip_flags` for [`forward`] (or the NAT program).
#[inline(always)]
fn write_choice(
    c: *mut Choice,
    id: u32,
    backend: &Backend,
    hash: u32,
    conn_event: u32,
    vip_flags: u32,
) {
    // SAFETY: the caller's choice, written whole.
    unsafe {
        c.write(Choice {
            backend_id: id,
            hash,
            backend_addr: addr_words(&backend.addr),
            backend_family: backend.family,
            backend_generation: backend.generation,
            conn_event,
            mtu_left: 0,
            nat: vip_flags & VIP_F_NAT_MODES,
        });
    }
}

/// An address of a map entry as four words (four 4-byte loads).
#[inline(always)]
fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    // SAFETY: addresses in map entries start 4-byte aligned (Backend's
    // alignment is 4 and `addr` is its first field), 16 bytes long.
    let w = unsafe { &*addr.as_ptr().cast::<[u32; 4]>() };
    [w[0], w[1], w[2], w[3]]
}

/// Encapsulates the packet toward the chosen backend and picks the next
/// hop; [`Step::TOO_BIG`] (with `c.mtu_left`) when it would not fit.
#[inline(never)]
fn forward(ctx: &XdpContext, globals: &Globals, p: &Packet, c: &mut Choice) -> Step {
    Step::or_verdict(try_forward::<true>(ctx, globals, p, c))
}

/// [`forward`]'s work; without `FIB` (in the [`shortcut`]), a backend
/// without a valid cached next hop leaves the frame untouched and returns
/// [`Step::FORWARD`], so that `bpf_fib_lookup`'s 64 bytes of parameters stay out
/// of the parse step's stack frame.
#[inline(always)]
fn try_forward<const FIB: bool>(
    ctx: &XdpContext,
    globals: &Globals,
    p: &Packet,
    c: &mut Choice,
) -> Result<Step, Outcome> {
    let inner = &p.inner;
    let (family, src) = if c.backend_family == FAMILY_V6 {
        (L3::V6, globals.encap_src_v6)
    } else {
        (L3::V4, AddrKey::v4(globals.encap_src_v4).addr)
    };
    let outer = Outer {
        family,
        src,
        // SAFETY: four words are 16 bytes of plain data.
        dst: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(c.backend_addr) },
        inner: inner.family,
        inner_len: inner.len,
        tos: inner.tos,
        flow_hash: c.hash,
        gue_port: (globals.flags & GLOBAL_F_GUE != 0).then_some(globals.gue_port as u16),
    };
    let total = outer.total_len().ok_or(Outcome::DropEncap)?;
    // Route before touching the frame, so a packet we cannot send is left
    // intact; a packet that would not fit is answered, or dropped.
    let next_hop = match nexthop::cached(c.backend_id, c.backend_generation, total) {
        Some(next_hop) => next_hop,
        None if FIB => nexthop::lookup(ctx, family, &outer.src, &outer.dst, total),
        None => return Ok(Step::FORWARD),
    };
    let mtu = match next_hop.route {
        Route::NoRoute => return Err(Outcome::DropNoRoute),
        Route::FragNeeded => Some(next_hop.mtu),
        _ if globals.encap_mtu != 0 && u32::from(total) > globals.encap_mtu => {
            Some(globals.encap_mtu as u16)
        }
        Route::Resolved | Route::NoNeighbour => None,
    };
    if let Some(mtu) = mtu {
        // An ICMP error is never answered with an ICMP error (RFC 1122
        // 3.2.2): one that would not fit toward its backend is dropped.
        if p.icmp_error {
            return Err(Outcome::DropEncap);
        }
        c.mtu_left = mtu.saturating_sub(outer.overhead());
        return Ok(Step::TOO_BIG);
    }
    encap::push(ctx, inner.l3, &outer)?;
    count(&LB_BE_STATS, c.backend_id, p.bytes);
    let done = if next_hop.route == Route::NoNeighbour {
        // The frame still carries our own MAC as destination: the kernel
        // routes the encapsulated packet, resolving the neighbour as it does.
        Outcome::PassedNoNeighbour
    } else {
        encap::set_macs(ctx, next_hop.smac, next_hop.dmac)?;
        if next_hop.ifindex != ctx.ingress_ifindex() as u32 {
            // SAFETY: plain helper call; returns XDP_REDIRECT for flags 0.
            unsafe { bpf_redirect(next_hop.ifindex, 0) };
            Outcome::Redirected
        } else if p.icmp_error {
            Outcome::IcmpForwarded
        } else {
            Outcome::Forwarded
        }
    };
    Ok(Step::verdict(done))
}

/// The rule for a packet that would not fit once encapsulated (`mtu` bytes
/// left for it): IPv4 with DF (and no options to quote around) and IPv6 are
/// answered ("fragmentation needed", "packet too big"); IPv4 without DF is
/// dropped (XDP cannot fragment).
#[inline(always)]
fn too_big<const V6: bool>(ctx: &XdpContext, inner: &Inner, mtu: u16, per_second: u32) -> Outcome {
    // The family is the program's: each program holds one answer.
    if V6 {
        return icmp::too_big_v6::reply(ctx, inner.l3, u32::from(mtu), per_second);
    }
    if !inner.df {
        Outcome::DropTooBigNoDf
    } else if inner.options {
        Outcome::DropEncap
    } else {
        icmp::too_big_v4::reply(ctx, inner.l3, mtu, per_second)
    }
}

/// The rule for a VIP without a usable backend (`on_no_backend`).
#[inline(always)]
fn no_backend(vip: &VipValue) -> Result<Outcome, Outcome> {
    if vip.flags & VIP_F_PASS_ON_NO_BACKEND != 0 {
        Ok(Outcome::PassedNoBackend)
    } else {
        Err(Outcome::DropNoBackend)
    }
}
