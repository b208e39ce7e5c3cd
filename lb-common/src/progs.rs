//! The program array `xdp_lb` tail-calls ([`MAP_PROGS`]): its slots and
//! the programs in them, as the XDP programs and the agent's loader name
//! them.

/// The programs `xdp_lb` hands packets to by tail call: a program array
/// of [`PROG_SLOTS`] slots. [`PROG_LB_V6`] holds `xdp_lb_v6`, which takes
/// every IPv6 packet, so that each program is verified for one family
/// (the verifier's work on Debian 12's 6.1 stays within its budget).
/// Pinned with the other maps (a pin keeps a program array's entries after
/// the agent exits) and filled by the agent before it attaches or upgrades.
pub const MAP_PROGS: &str = "LB_PROGS";
/// The slot of [`MAP_PROGS`] that holds `xdp_lb_v6`.
pub const PROG_LB_V6: u32 = 0;
/// The slot of `xdp_nat_v4`: IPv4 packets of NAT VIPs' flows, toward
/// their backends ([`crate::MAP_NAT_HANDOFF`] says which).
pub const PROG_NAT_V4: u32 = 1;
/// The slot of `xdp_nat_v6`: likewise for IPv6.
pub const PROG_NAT_V6: u32 = 2;
/// The slot of `xdp_nat_reply_v4`: IPv4 packets `xdp_lb` would pass, looked
/// up as replies to NAT translations (with [`crate::GLOBAL_F_NAT`]).
pub const PROG_NAT_REPLY_V4: u32 = 3;
/// The slot of `xdp_nat_reply_v6`: likewise for IPv6.
pub const PROG_NAT_REPLY_V6: u32 = 4;
/// Slots of [`MAP_PROGS`].
pub const PROG_SLOTS: u32 = 5;
/// The program of IPv6 packets, in [`MAP_PROGS`] at [`PROG_LB_V6`].
pub const PROGRAM_LB_V6: &str = "xdp_lb_v6";
/// The programs `xdp_lb` and `xdp_lb_v6` tail-call, with their slots in
/// [`MAP_PROGS`].
pub const TAIL_PROGRAMS: [(&str, u32); 5] = [
    (PROGRAM_LB_V6, PROG_LB_V6),
    ("xdp_nat_v4", PROG_NAT_V4),
    ("xdp_nat_v6", PROG_NAT_V6),
    ("xdp_nat_reply_v4", PROG_NAT_REPLY_V4),
    ("xdp_nat_reply_v6", PROG_NAT_REPLY_V6),
];
