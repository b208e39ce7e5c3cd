//! The per-packet rows: the baselines and the reference, then each
//! `xdp_lb` row on its frame, with the counters that prove its path.

use super::*;

/// Every per-packet row, measured in order on one data plane (GUE and the
/// SYN flood on their own).
pub(super) fn run_cases(prefix: &str, plan: Plan) -> anyhow::Result<Vec<Row>> {
    // Every "new flow" repetition inserts one flow: room for all of them
    // (and the warm-up), so none evicts another.
    let new_flows = u64::from(plan.repeat) * plan.runs as u64 + 1024;
    let conntrack = u32::try_from(new_flows.next_power_of_two()).unwrap_or(u32::MAX);
    let mut b = Bench::new(prefix, conntrack, false)?;
    let f = Frames::new();
    let mut rows = Vec::new();
    let base = baselines(&mut b, plan, &f, &mut rows)?;
    for case in xdp_lb_cases(&f) {
        rows.push(measure_case(&mut b, plan, &base, case)?);
    }
    rows.extend(super::nat::rows(&mut b, plan, &base)?);
    rows.push(syn_after_table_change(&mut b, plan, &f, &base)?);
    rows.push(next_hop_by_fib(&mut b, plan, &f, &base)?);
    std::mem::drop(b);
    rows.push(gue(prefix, conntrack, plan, &f, &base)?);
    rows.push(syn_flood(prefix)?);
    Ok(rows)
}

/// The frames of the per-packet rows, each [`BENCH_FRAME_LEN`] bytes.
struct Frames {
    /// A SYN client -> VIP:80.
    syn: [u8; BENCH_FRAME_LEN],
    /// An ACK client -> VIP:80 (an established flow once recorded).
    ack: [u8; BENCH_FRAME_LEN],
    /// A UDP datagram client -> VIP:53.
    dgram: [u8; BENCH_FRAME_LEN],
    /// A SYN from outside the allowed sources.
    outside: [u8; BENCH_FRAME_LEN],
    /// A SYN to a host that is no VIP.
    non_vip: [u8; BENCH_FRAME_LEN],
    /// An IPv6 ACK to the IPv6 VIP.
    ack6: [u8; BENCH_FRAME_LEN],
}

impl Frames {
    fn new() -> Self {
        Frames {
            syn: tcp(CLIENT, VIP, 40000, 80, true),
            ack: tcp(CLIENT, VIP, 40001, 80, false),
            dgram: udp(CLIENT, VIP, 5353, 53),
            outside: tcp(OUTSIDE, VIP, 40000, 80, true),
            non_vip: tcp(CLIENT, OTHER_HOST, 40000, 22, true),
            ack6: tcp6(40002),
        }
    }
}

/// What the baselines measured, subtracted from or compared with the
/// `xdp_lb` rows (ns per packet).
pub(super) struct Baselines {
    /// The wrapper (restore the frame, tail call), without flow numbering.
    pub(super) wrap_fixed: f64,
    /// The wrapper with flow numbering (a new flow each repetition).
    pub(super) wrap_vary: f64,
}

impl Baselines {
    /// The wrapper's cost for a row run with `flags`.
    fn wrapper(&self, flags: u32) -> f64 {
        if flags & BENCH_F_VARY_FLOW != 0 {
            self.wrap_vary
        } else {
            self.wrap_fixed
        }
    }
}

/// An expectation of a row whose program answers `action` and leaves the
/// frame as it is.
fn plain(action: u32) -> Expect {
    Expect {
        action,
        outcome: None,
        conn: None,
        out_len: BENCH_FRAME_LEN,
    }
}

/// An `xdp_lb` row forwarded with connection-table event `conn`, its
/// output `out_len` bytes.
fn forwarded(conn: ConnEvent, out_len: usize) -> Expect {
    Expect {
        action: XDP_TX,
        outcome: Some(Outcome::Forwarded),
        conn: Some(conn),
        out_len,
    }
}

/// Bytes of an IPv4-in-IPv4 frame of a bench frame.
const ENCAP_LEN: usize = BENCH_FRAME_LEN + 20;

/// The baseline and reference rows (bare drop, parse and drop, the
/// wrapper, lookup + encapsulation), added to `rows`.
fn baselines(
    b: &mut Bench,
    plan: Plan,
    f: &Frames,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Baselines> {
    let syn = &f.syn;
    let drop = b.measure("bench_drop", PROG_BENCH_DROP, syn, plan, plain(XDP_DROP))?;
    let parse = b.measure(
        "bench_parse_drop",
        PROG_BENCH_PARSE_DROP,
        syn,
        plan,
        plain(XDP_DROP),
    )?;
    rows.push(Row::new(
        "baseline: bare XDP_DROP",
        drop,
        "bench_drop",
        Versus::Parse,
    ));
    rows.push(Row::new(
        "baseline: parse Eth/IPv4/TCP, drop",
        parse,
        "bench_parse_drop",
        Versus::Parse,
    ));

    // The wrapper's own cost, with and without flow numbering.
    b.wrap(PROG_BENCH_DROP, syn, 0)?;
    let wrap_fixed = b.measure("wrapper", PROG_BENCH_RESTORE, syn, plan, plain(XDP_DROP))? - drop;
    b.wrap(PROG_BENCH_DROP, syn, BENCH_F_VARY_FLOW)?;
    let wrap_vary = b.measure(
        "wrapper (vary)",
        PROG_BENCH_RESTORE,
        syn,
        plan,
        plain(XDP_DROP),
    )? - drop;
    rows.push(Row::new(
        "wrapper overhead (restore + tail call)",
        wrap_fixed,
        format!("subtracted below; {wrap_vary:.1} ns with flow numbering"),
        Versus::Parse,
    ));

    // The reference: parse, one lookup, IPv4-in-IPv4, XDP_TX.
    b.wrap(PROG_BENCH_LOOKUP_ENCAP, &f.ack, 0)?;
    let reference = b.measure(
        "bench_lookup_encap",
        PROG_BENCH_RESTORE,
        &f.ack,
        plan,
        Expect {
            action: XDP_TX,
            outcome: None,
            conn: None,
            out_len: ENCAP_LEN,
        },
    )? - wrap_fixed;
    rows.push(Row::new(
        "reference: lookup + IPv4-in-IPv4 + XDP_TX",
        reference,
        "bench_lookup_encap: one hash lookup of (VIP, port, protocol), fixed MACs; output length checked",
        Versus::Reference,
    ));
    Ok(Baselines {
        wrap_fixed,
        wrap_vary,
    })
}

/// One `xdp_lb` row: its name, frame, the wrapper's flags, what the
/// counters must show, and the note.
type Case<'a> = (
    &'static str,
    &'a [u8; BENCH_FRAME_LEN],
    u32,
    Expect,
    &'static str,
);

/// The `xdp_lb` rows measured on the same data plane, one after the other.
fn xdp_lb_cases(f: &Frames) -> [Case<'_>; 7] {
    let (syn, ack, dgram, outside, non_vip, ack6) =
        (&f.syn, &f.ack, &f.dgram, &f.outside, &f.non_vip, &f.ack6);
    let encap = ENCAP_LEN;
    [
        (
            "xdp_lb: SYN of a new TCP flow (Maglev, no lookup, not recorded)",
            syn,
            BENCH_F_VARY_FLOW,
            Expect {
                action: XDP_TX,
                outcome: Some(Outcome::Forwarded),
                conn: Some(ConnEvent::SynDirect),
                out_len: encap,
            },
            "every repetition a new flow; the VIP's recorded flows agree with its table: forwarded_tx and conntrack_syn_direct = repetitions",
        ),
        (
            "xdp_lb: new TCP flow recorded (its first ACK: Maglev + insert)",
            ack,
            BENCH_F_VARY_FLOW,
            Expect {
                action: XDP_TX,
                outcome: Some(Outcome::Forwarded),
                conn: Some(ConnEvent::Miss),
                out_len: encap,
            },
            "every repetition a new flow: forwarded_tx and conntrack_miss = repetitions",
        ),
        (
            "xdp_lb: established TCP flow (flow cache, conntrack hit)",
            ack,
            0,
            Expect {
                action: XDP_TX,
                outcome: Some(Outcome::Forwarded),
                conn: Some(ConnEvent::HitCached),
                out_len: encap,
            },
            "forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions (the flow cache, one in 33 from the connection table)",
        ),
        (
            "xdp_lb: UDP datagram to a VIP",
            dgram,
            0,
            Expect {
                action: XDP_TX,
                outcome: Some(Outcome::Forwarded),
                conn: Some(ConnEvent::HitCached),
                out_len: encap,
            },
            "one flow: forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions (the flow cache, one in 33 from the connection table)",
        ),
        (
            "xdp_lb: dropped by the source filter",
            outside,
            0,
            Expect {
                action: XDP_DROP,
                outcome: Some(Outcome::DropSourceFilter),
                conn: None,
                out_len: BENCH_FRAME_LEN,
            },
            "drop_source_filter = repetitions",
        ),
        (
            "xdp_lb: non-VIP packet passed",
            non_vip,
            0,
            Expect {
                action: XDP_PASS,
                outcome: Some(Outcome::Passed),
                conn: None,
                out_len: BENCH_FRAME_LEN,
            },
            "passed = repetitions",
        ),
        (
            "xdp_lb: established IPv6 TCP flow (IPv6-in-IPv6)",
            ack6,
            0,
            Expect {
                action: XDP_TX,
                outcome: Some(Outcome::Forwarded),
                conn: Some(ConnEvent::HitCached),
                out_len: BENCH_FRAME_LEN + 40,
            },
            "forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions (the flow cache, one in 33 from the connection table)",
        ),
    ]
}

/// Measures one `xdp_lb` row, after a warm-up run (the established and
/// UDP flows get their entry there, so every measured repetition hits it).
fn measure_case(
    b: &mut Bench,
    plan: Plan,
    base: &Baselines,
    case: Case<'_>,
) -> anyhow::Result<Row> {
    let (name, frame, flags, expect, note) = case;
    b.wrap("xdp_lb", frame, flags)?;
    let _ = b.run(PROG_BENCH_RESTORE, frame, 1)?;
    let total = b.measure(name, PROG_BENCH_RESTORE, frame, plan, expect)?;
    let versus = if expect.action == XDP_TX {
        Versus::Reference
    } else {
        Versus::Parse
    };
    Ok(Row::new(name, total - base.wrapper(flags), note, versus))
}

/// A SYN after a change of the VIP's table (a weight): it looks its flow
/// up until a walk of the connection table finds no disagreeing entry.
fn syn_after_table_change(
    b: &mut Bench,
    plan: Plan,
    f: &Frames,
    base: &Baselines,
) -> anyhow::Result<Row> {
    ensure!(
        b.balancer.set_weight(0, 0, 2)?,
        "the weight of the VIP's first backend changed"
    );
    b.wrap("xdp_lb", &f.syn, BENCH_F_VARY_FLOW)?;
    let total = b.measure(
        "SYN after a table change",
        PROG_BENCH_RESTORE,
        &f.syn,
        plan,
        forwarded(ConnEvent::Syn, ENCAP_LEN),
    )?;
    Ok(Row::new(
        "xdp_lb: SYN of a new TCP flow after a table change (connection-table lookup)",
        total - base.wrap_vary,
        "every repetition a new flow; a weight changed, no walk since: forwarded_tx and conntrack_syn = repetitions",
        Versus::Reference,
    ))
}

/// The established flow with its next hop looked up per packet (the cache
/// emptied, as while no agent keeps it).
fn next_hop_by_fib(b: &mut Bench, plan: Plan, f: &Frames, base: &Baselines) -> anyhow::Result<Row> {
    let emptied = b.next_hops.clear();
    ensure!(
        emptied.emptied == b.balancer.next_hop_targets().len(),
        "the next-hop cache emptied: {emptied:?}"
    );
    b.wrap("xdp_lb", &f.ack, 0)?;
    let total = b.measure(
        "established, FIB",
        PROG_BENCH_RESTORE,
        &f.ack,
        plan,
        forwarded(ConnEvent::HitCached, ENCAP_LEN),
    )?;
    Ok(Row::new(
        "xdp_lb: established TCP flow, next hop by bpf_fib_lookup (no cache)",
        total - base.wrap_fixed,
        "forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions; LB_NEXTHOPS emptied",
        Versus::Reference,
    ))
}

/// The same established flow with GUE (outer IPv4 and UDP), in a data
/// plane of its own.
fn gue(
    prefix: &str,
    conntrack: u32,
    plan: Plan,
    f: &Frames,
    base: &Baselines,
) -> anyhow::Result<Row> {
    let mut g = Bench::new(prefix, conntrack, true)?;
    g.wrap("xdp_lb", &f.ack, 0)?;
    let _ = g.run(PROG_BENCH_RESTORE, &f.ack, 1)?;
    let total = g.measure(
        "gue",
        PROG_BENCH_RESTORE,
        &f.ack,
        plan,
        forwarded(ConnEvent::HitCached, BENCH_FRAME_LEN + 28),
    )?;
    Ok(Row::new(
        "xdp_lb: established TCP flow, GUE over IPv4",
        total - base.wrap_fixed,
        "forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions; 28 bytes of outer headers",
        Versus::Reference,
    ))
}

/// Distinct SYNs in the flood row.
const FLOOD_SYNS: u32 = 1_000_000;

/// A flood of [`FLOOD_SYNS`] distinct SYNs (one `BPF_PROG_TEST_RUN`, every
/// repetition a new flow) into a data plane of its own with a connection
/// table of 2^20 flows: its cost per SYN and what it does to the table
/// (entries before and after, in the note).
fn syn_flood(prefix: &str) -> anyhow::Result<Row> {
    let mut f = Bench::new(prefix, 1 << 20, false)?;
    let syn = tcp(CLIENT, VIP, 40000, 80, true);
    f.wrap("xdp_lb", &syn, BENCH_F_VARY_FLOW)?;
    let before = f.conntrack_entries()?;
    let forwarded = f.stats.outcome(Outcome::Forwarded).packets;
    let (action, _, ns) = f.run(PROG_BENCH_RESTORE, &syn, FLOOD_SYNS)?;
    ensure!(action == XDP_TX, "SYN flood: return code {action}");
    let sent = f.stats.outcome(Outcome::Forwarded).packets - forwarded;
    ensure!(
        sent == u64::from(FLOOD_SYNS),
        "SYN flood: forwarded_tx counted {sent} of {FLOOD_SYNS}"
    );
    let syns = f.stats.conn(ConnEvent::SynDirect).packets;
    ensure!(
        syns == u64::from(FLOOD_SYNS),
        "SYN flood: conntrack_syn_direct counted {syns} of {FLOOD_SYNS}"
    );
    let after = f.conntrack_entries()?;
    // The wrapper with flow numbering, measured in this data plane.
    f.wrap(PROG_BENCH_DROP, &syn, BENCH_F_VARY_FLOW)?;
    let (_, _, wrapper) = f.run(PROG_BENCH_RESTORE, &syn, 200_000)?;
    let (_, _, drop) = f.run(PROG_BENCH_DROP, &syn, 200_000)?;
    Ok(Row::new(
        "xdp_lb: flood of 10^6 distinct SYNs",
        ns - (wrapper - drop),
        format!(
            "one run of {FLOOD_SYNS}; forwarded_tx = conntrack_syn_direct = {sent}; connection table (2^20 flows) {before} entries before, {after} after"
        ),
        Versus::Reference,
    ))
}
