//! The benchmark's own object (`cargo xtask bench`), apart from the
//! production one: two baselines, the lookup-and-encapsulate reference,
//! and the wrapper that restores the input
//! frame before each `BPF_PROG_TEST_RUN` repetition and tail-calls the
//! program under test (`xdp_lb` of the production object, put in
//! `BENCH_PROGS` by the bench), and the live-frames traffic generator of
//! the veth rows (`bench_tx`). Never loaded by the agent.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "the #[xdp] macro does not carry doc comments to the functions it generates"
)]

// The production parser, so the parse-then-drop baseline parses as xdp_lb does.
#[path = "../parse/mod.rs"]
#[allow(
    dead_code,
    unused_imports,
    reason = "the bench uses part of the parser"
)]
mod parse;

// The production checksum, so the reference encapsulates as xdp_lb does.
#[path = "../encap/csum.rs"]
#[allow(
    dead_code,
    unused_imports,
    reason = "the bench uses part of the checksums"
)]
mod csum;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    BENCH_F_VARY_FLOW, BENCH_FRAME_LEN, BENCH_PROGS_LEN, BENCH_SPORT_OFFSET, BENCH_SRC_ADDR_OFFSET,
    BENCH_VIPS_LEN, BenchBackend, BenchTemplate, BenchVipKey, PROTO_IPIP, PROTO_TCP,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::parse::{ipv4_at, l3_offset, l4::ports_at, ptr_at};

/// Benchmark: the frame `bench_restore` puts back before each repetition.
#[map]
pub static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Benchmark: the program `bench_restore` tail-calls (slot 0).
#[map]
pub static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(BENCH_PROGS_LEN, 0);

/// Benchmark: repetition counter of `bench_restore`, numbering new flows.
#[map]
pub static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Reference: the VIPs of `bench_lookup_encap`.
#[map]
pub static BENCH_VIPS: HashMap<BenchVipKey, BenchBackend> =
    HashMap::with_max_entries(BENCH_VIPS_LEN, 0);

/// Baseline: drops every frame, doing nothing else.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// Generator: restores the template frame where it was changed, XDP_TX (a
/// redirect out of the ingress interface in live-frames mode).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    tx(&ctx)
}

/// Baseline: parses Ethernet, IPv4 and TCP, then drops.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn bench_parse_drop(ctx: XdpContext) -> u32 {
    parse_drop(&ctx)
}

/// Reference: parse, one VIP lookup, IPv4-in-IPv4, XDP_TX.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn bench_lookup_encap(ctx: XdpContext) -> u32 {
    lookup_encap(&ctx)
}

/// The wrapper: restores the frame, then tail-calls the program under test.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    restore(&ctx)
}

/// Parse-then-drop baseline: Ethernet, IPv4 and TCP through the balancer's
/// own parser, then XDP_DROP. The ports decide the action so the compiler
/// cannot drop the reads: XDP_PASS for a non-TCP or non-IPv4 frame and for
/// the (never sent) port pair 0 -> 0, XDP_ABORTED for a malformed one.
#[inline(always)]
pub fn parse_drop(ctx: &XdpContext) -> u32 {
    let Ok(Some((l3, parse::L3::V4))) = l3_offset(ctx) else {
        return XDP_PASS;
    };
    let Ok(ip) = ipv4_at(ctx, l3) else {
        return XDP_ABORTED;
    };
    // SAFETY: bounds checked by ipv4_at.
    let proto = unsafe { (*ip.hdr).proto };
    if proto != PROTO_TCP {
        return XDP_PASS;
    }
    match ports_at(ctx, l3 + ip.len, proto) {
        Ok(Some((sport, dport))) if sport != [0, 0] || dport != [0, 0] => XDP_DROP,
        Ok(_) => XDP_PASS,
        Err(_) => XDP_ABORTED,
    }
}

/// The lookup-and-encapsulate reference: Ethernet, IPv4, TCP or UDP through
/// the balancer's parser; one lookup of (address, port, protocol); 20 bytes
/// pushed for the outer IPv4 header (DF, TTL 64, checksum) and Ethernet
/// rewritten with the entry's MACs; XDP_TX. XDP_PASS for what is not a
/// VIP's, XDP_ABORTED for a malformed frame or a failed head move.
#[inline(always)]
pub fn lookup_encap(ctx: &XdpContext) -> u32 {
    let Ok(Some((l3, parse::L3::V4))) = l3_offset(ctx) else {
        return XDP_PASS;
    };
    let Ok(ip) = ipv4_at(ctx, l3) else {
        return XDP_ABORTED;
    };
    // SAFETY: bounds checked by ipv4_at; fields copied out before the head
    // moves.
    let (proto, dst, tos, tot_len) = unsafe {
        let h = &*ip.hdr;
        (h.proto, h.dst_addr, h.tos, u16::from_be_bytes(h.tot_len))
    };
    let Ok(Some((_, dport))) = ports_at(ctx, l3 + ip.len, proto) else {
        return XDP_PASS;
    };
    let key = BenchVipKey {
        addr: dst,
        port: dport,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is read at once, while the program runs.
    let Some(backend) = (unsafe { BENCH_VIPS.get(key) }).copied() else {
        return XDP_PASS;
    };
    // SAFETY: plain helper call; packet pointers are taken again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(Ipv4Hdr::LEN as i32)) } != 0 {
        return XDP_ABORTED;
    }
    let (Some(eth), Some(outer)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return XDP_ABORTED;
    };
    let mut hdr = Ipv4Hdr {
        vihl: 0x45,
        tos,
        tot_len: (tot_len.wrapping_add(Ipv4Hdr::LEN as u16)).to_be_bytes(),
        id: [0, 0],
        frags: [0x40, 0],
        ttl: 64,
        proto: PROTO_IPIP,
        check: [0, 0],
        src_addr: backend.src,
        dst_addr: backend.dst,
    };
    hdr.check = csum::ipv4_header(&hdr);
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        *eth = EthHdr {
            dst_addr: backend.dmac,
            src_addr: backend.smac,
            ether_type: EtherType::Ipv4.into(),
        };
        *outer = hdr;
    }
    XDP_TX
}

/// The wrapper: puts the frame back to the template (undoing a length change
/// of the previous repetition with `bpf_xdp_adjust_head`, then copying the
/// fixed-size template), numbers the flow when asked, and tail-calls the
/// program under test. XDP_ABORTED when any step fails, so the caller sees it.
#[inline(always)]
pub fn restore(ctx: &XdpContext) -> u32 {
    let Some(template) = BENCH_TEMPLATE.get(0) else {
        return XDP_ABORTED;
    };
    // The previous repetition may have pushed (encapsulation: -20) or pulled
    // the head; move it back so the frame is BENCH_FRAME_LEN bytes again.
    let delta = (ctx.data_end() - ctx.data()) as i32 - BENCH_FRAME_LEN as i32;
    // SAFETY: plain helper call on our context; packet pointers are taken
    // again below.
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return XDP_ABORTED;
    }
    let Some(frame) = ptr_at::<[u64; BENCH_FRAME_LEN / 8]>(ctx, 0) else {
        return XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at. The frame of BPF_PROG_TEST_RUN
    // starts XDP_PACKET_HEADROOM (256) bytes into its buffer, so it is
    // 8-aligned after the head is moved back; the verifier forbids testing a
    // packet pointer's bits, and x86-64 BPF allows unaligned packet stores.
    // Word by word: an array assignment compiles to a call of a byte-wise
    // memmove, which would make the floor every row subtracts noisy.
    let dst = frame.cast::<u64>();
    for (i, &word) in template.frame.iter().enumerate() {
        // SAFETY: i < BENCH_FRAME_LEN / 8, inside the checked frame.
        unsafe { core::ptr::write_volatile(dst.add(i), word) };
    }

    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU value, no other writer on this CPU while we run.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    if template.flags & BENCH_F_VARY_FLOW != 0 {
        let (Some(addr), Some(port)) = (
            ptr_at::<[u8; 2]>(ctx, BENCH_SRC_ADDR_OFFSET + 2),
            ptr_at::<[u8; 2]>(ctx, BENCH_SPORT_OFFSET),
        ) else {
            return XDP_ABORTED;
        };
        let bytes = n.to_be_bytes();
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            *addr = [bytes[0], bytes[1]];
            *port = [bytes[2], bytes[3]];
        }
    }
    // SAFETY: tail call to slot 0; returns only when the slot is empty.
    unsafe { BENCH_PROGS.tail_call(ctx, 0) };
    XDP_ABORTED
}

/// The live-frames generator (`lb_common::PROG_BENCH_TX`): puts back the
/// words of the frame that differ from the template (the receiver of the
/// previous round may have rewritten them in place: an encapsulating program
/// overwrites the Ethernet header) and returns XDP_TX. Words that match are
/// only read, so a frame nobody changed is not written (no cache line taken
/// from the receiver's CPU). XDP_ABORTED when the frame is shorter than
/// `BENCH_FRAME_LEN` bytes or the map is missing, so the caller sees it.
#[inline(always)]
pub fn tx(ctx: &XdpContext) -> u32 {
    let (Some(template), Some(frame)) = (
        BENCH_TEMPLATE.get(0),
        ptr_at::<[u64; BENCH_FRAME_LEN / 8]>(ctx, 0),
    ) else {
        return XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at (see `restore` on alignment).
    // Volatile word accesses: a plain array assignment compiles to a
    // byte-loop `memmove` here, which the verifier refuses on packet memory.
    unsafe {
        let words = frame.cast::<u64>();
        for (i, w) in template.frame.iter().enumerate() {
            let word = words.add(i);
            if core::ptr::read_volatile(word) != *w {
                core::ptr::write_volatile(word, *w);
            }
        }
    }
    XDP_TX
}

/// Tail calls into a GPL program need a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
