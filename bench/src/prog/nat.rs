//! The NAT rows: a packet of an established `mode = "nat"` flow toward its
//! backend, a backend's reply translated back to the client, and a new
//! flow (a SYN that gets a SNAT port), each proven from the counters.

use aya::maps::HashMap;
use lb_common::{ConnEvent, FlowKey, NatEntry, Outcome, PROTO_TCP};

use super::{
    BENCH_FRAME_LEN, Bench, CLIENT, Expect, LB_MAC, NAT_BACKEND_PORT, NAT_VIP_PORT,
    PROG_BENCH_RESTORE, Plan, Row, VIP, Versus, XDP_TX, cases::Baselines, median, tcp,
};
use lb_common::BENCH_F_VARY_FLOW;
use lb_tests::frames::Frame;

/// New flows per run of the new-flow row: the NAT table is emptied
/// between runs, so the SNAT ports stay nearly all free (1.3 % taken at
/// the end of a run of 10,000 over 4 addresses x 64,512 ports x 3
/// backends) and no repetition runs out of tries.
const NEW_FLOWS_PER_RUN: u32 = 10_000;

/// A packet of the NAT VIP's translated flow, an output of the same length.
fn nat_forwarded(conn: Option<ConnEvent>) -> Expect {
    Expect {
        action: XDP_TX,
        outcome: Some(Outcome::NatForwarded),
        conn,
        out_len: BENCH_FRAME_LEN,
    }
}

/// Removes every entry of the NAT table.
fn empty_nat_table(b: &mut Bench) -> anyhow::Result<()> {
    let mut nat: HashMap<_, FlowKey, NatEntry> = HashMap::try_from(
        b.ebpf
            .map_mut(lb_common::MAP_NAT)
            .ok_or_else(|| anyhow::anyhow!("{} in the object", lb_common::MAP_NAT))?,
    )?;
    let keys: Vec<FlowKey> = nat.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = nat.remove(&key);
    }
    Ok(())
}

/// The three NAT rows.
pub(super) fn rows(b: &mut Bench, plan: Plan, base: &Baselines) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    // 1. Established: the warm-up run translates the flow and records it.
    let ack = tcp(CLIENT, VIP, 40100, NAT_VIP_PORT, false);
    b.wrap("xdp_lb", &ack, 0)?;
    let _ = b.run(PROG_BENCH_RESTORE, &ack, 1)?;
    let ns = b.measure(
        "NAT forward",
        PROG_BENCH_RESTORE,
        &ack,
        plan,
        nat_forwarded(Some(ConnEvent::HitCached)),
    )?;
    rows.push(Row::new(
        "xdp_lb NAT: established flow toward its backend (tail call, translation hit, rewrite)",
        ns - base.wrap_fixed,
        "nat_forwarded_tx = repetitions, conntrack_hit_cached + conntrack_hit = repetitions; addresses, ports and both checksums rewritten",
        Versus::Reference,
    ));

    // 2. The backend's reply to that translation.
    let key = FlowKey::v4(
        CLIENT,
        VIP,
        40100u16.to_be_bytes(),
        NAT_VIP_PORT.to_be_bytes(),
        PROTO_TCP,
    );
    let nat: HashMap<_, FlowKey, NatEntry> = HashMap::try_from(
        b.ebpf
            .map(lb_common::MAP_NAT)
            .ok_or_else(|| anyhow::anyhow!("{} in the object", lb_common::MAP_NAT))?,
    )?;
    let e = nat.get(&key, 0)?;
    let backend = [e.dst[0], e.dst[1], e.dst[2], e.dst[3]];
    let snat = [e.src[0], e.src[1], e.src[2], e.src[3]];
    let reply: [u8; BENCH_FRAME_LEN] = Frame::eth([0x02, 0x40, 0, 0, 0, backend[3]], LB_MAC)
        .ipv4(backend, snat)
        .tcp_ack(NAT_BACKEND_PORT, u16::from_be_bytes(e.sport))
        .padded_to(BENCH_FRAME_LEN)
        .build()
        .try_into()
        .map_err(|_| anyhow::anyhow!("a reply frame of {BENCH_FRAME_LEN} bytes"))?;
    b.wrap("xdp_lb", &reply, 0)?;
    let ns = b.measure(
        "NAT reply",
        PROG_BENCH_RESTORE,
        &reply,
        plan,
        Expect {
            action: XDP_TX,
            outcome: Some(Outcome::NatReplied),
            conn: None,
            out_len: BENCH_FRAME_LEN,
        },
    )?;
    rows.push(Row::new(
        "xdp_lb NAT: a backend's reply back to the client (not a VIP: tail call, reply lookup, rewrite, FIB)",
        ns - base.wrap_fixed,
        "nat_replied_tx = repetitions; the next hop toward the client by bpf_fib_lookup",
        Versus::Reference,
    ));

    // 3. New flows: every repetition a SYN of another flow, a SNAT port
    // claimed (two NAT table inserts).
    let syn = tcp(CLIENT, VIP, 40200, NAT_VIP_PORT, true);
    b.wrap("xdp_lb", &syn, BENCH_F_VARY_FLOW)?;
    let one = Plan {
        repeat: NEW_FLOWS_PER_RUN.min(plan.repeat),
        runs: 1,
    };
    let mut samples = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        empty_nat_table(b)?;
        samples.push(b.measure(
            "NAT new flow",
            PROG_BENCH_RESTORE,
            &syn,
            one,
            nat_forwarded(Some(ConnEvent::SynDirect)),
        )?);
    }
    empty_nat_table(b)?;
    rows.push(Row::new(
        "xdp_lb NAT: SYN of a new flow (Maglev, SNAT port allocated: 2 NAT table inserts)",
        median(&mut samples) - base.wrap_vary,
        format!(
            "every repetition a new flow ({} per run, the NAT table emptied between runs): nat_forwarded_tx and conntrack_syn_direct = repetitions",
            one.repeat
        ),
        Versus::Reference,
    ));
    Ok(rows)
}
