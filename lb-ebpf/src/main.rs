//! XDP entry points only: dispatch to the logic of each concern, count the
//! outcome, turn it into an XDP action.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "the #[xdp] macro does not carry doc comments to the functions it generates"
)]

mod decap;
mod encap;
mod icmp;
mod lb;
mod maps;
mod nat;
mod nexthop;
mod parse;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{NO_CONN_EVENT, stat_index};

use crate::maps::{LB_STATS, count};

/// The load balancer, attached to the LB's NIC by `lb run`.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, counter) = lb::run::<false>(&ctx);
    count(&LB_STATS, counter, bytes);
    outcome.action()
}

/// The load balancer's IPv6 packets: `xdp_lb` hands them over by tail call
/// (`LB_PROGS`), so that each program is verified for one family.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_lb_v6(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, counter) = lb::run::<true>(&ctx);
    count(&LB_STATS, counter, bytes);
    outcome.action()
}

/// IPv4 packets of NAT VIPs' flows toward their backends: `xdp_lb` hands
/// them over by tail call (`LB_PROGS`, `LB_NAT_HANDOFF`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_nat_v4(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, event) = nat::forward::<false>(&ctx);
    count(&LB_STATS, stat_index(outcome as u32, event), bytes);
    outcome.action()
}

/// IPv6 packets of NAT VIPs' flows toward their backends.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_nat_v6(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, event) = nat::forward::<true>(&ctx);
    count(&LB_STATS, stat_index(outcome as u32, event), bytes);
    outcome.action()
}

/// IPv4 packets `xdp_lb` would pass while a VIP is in a NAT mode: replies
/// of backends to translations are translated back, the rest passed.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_nat_reply_v4(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let outcome = nat::reply::<false>(&ctx);
    count(&LB_STATS, stat_index(outcome as u32, NO_CONN_EVENT), bytes);
    outcome.action()
}

/// IPv6 packets `xdp_lb_v6` would pass while a VIP is in a NAT mode.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_nat_reply_v6(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let outcome = nat::reply::<true>(&ctx);
    count(&LB_STATS, stat_index(outcome as u32, NO_CONN_EVENT), bytes);
    outcome.action()
}

/// The backend side, attached to a backend's NIC by `lb decap`.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[xdp] entry points take the context by value"
)]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let outcome = decap::try_decap(&ctx);
    count(&LB_STATS, stat_index(outcome as u32, NO_CONN_EVENT), bytes);
    outcome.action()
}

/// The kernel requires a GPL-compatible licence for `bpf_fib_lookup`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
