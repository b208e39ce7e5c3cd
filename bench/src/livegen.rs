//! The veth rows' traffic generator: `BPF_PROG_TEST_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18+), as xdp-trafficgen does, so
//! the sender is not what limits the rate (the AF_PACKET sender it replaces
//! offered about 0.3 Mpps).
//!
//! ```text
//!  CPU GEN_CPU: generator thread, in PREFIX-sw     CPU RX_CPU: threaded NAPI of
//!  bench_tx run with ingress_ifindex = p;          the LB's veth ("napi/lbbN-ID")
//!  XDP_TX = redirect out of p ──── veth ring ────> program under test (native XDP)
//!                                                  xdp_lb's XDP_TX back to p: p has
//!                                                  no XDP program, so veth drops it
//! ```
//!
//! Each repetition of a test run turns the run's frame (UDP from the
//! client's address to the VIP; one of [`BENCH_TX_FLOWS`] source ports per
//! run, round robin) into a redirect out of `p`, the bridge-side peer of the
//! LB's interface; veth puts it in the LB interface's ring, whose NAPI runs
//! the program under test on the other CPU. What the ring cannot take is
//! dropped there and counted by veth (`ethtool -S p`:
//! `tx_queue_0_xdp_xmit_errors`).
//!
//! What it takes to measure this on a shared 2-vCPU VM:
//! - each test run is one window, rated over the kernel's own generating
//!   time: between runs the kernel tears the page pool down and waits for an
//!   RCU grace period (milliseconds), which halved wall-clock rates;
//! - the generator thread and the NAPI kthread run SCHED_FIFO, or other work
//!   on the machine takes half of each CPU;
//! - `bench_tx` puts back what the receiver rewrote: live frames are
//!   recycled with their bytes as the receiver left them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use lb_common::{
    BENCH_FRAME_LEN, BENCH_SPORT_OFFSET, BENCH_TX_FLOWS, BenchTemplate, MAP_BENCH_TEMPLATE,
    Outcome, PROG_BENCH_DROP, PROG_BENCH_TX,
};
use lb_tests::frames::Frame;
use lb_tests::{netns::Netns, xdp::xdp_md};
use lb_userspace::dataplane::{object, stats::StatsReader};

use crate::{
    host::{delta, ethtool_stats, pin_napi, schedstat, set_affinity, set_fifo, thread_cpu},
    lab::{CLIENT_ADDR, CLIENT_MAC, LB_MAC, Lab, UDP_PORT, VIP},
    report::Report,
};

/// The CPU the generator thread is pinned to.
pub const GEN_CPU: usize = 0;
/// The CPU the receiving veth's NAPI kthread is pinned to.
pub const RX_CPU: usize = 1;
const _: () = assert!(GEN_CPU < RX_CPU);
/// Frames the kernel runs per batch before it flushes the redirects (the
/// kernel's maximum, `TEST_XDP_MAX_BATCH`).
const BATCH: u32 = 256;
/// Repetitions of one test run (one measured window): tens of milliseconds
/// at a few Mpps.
pub const REPEAT: u32 = 1 << 18;
/// Source port of the first flow; flow `i` uses FIRST_SPORT + i.
const FIRST_SPORT: u16 = 20_000;

/// How long a measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Generating, not measured (page pool, connection table, caches).
    pub warmup: Duration,
    /// Measured: test runs follow one another until this much wall time
    /// has passed (at least [`MIN_RUNS`]); each run is one window.
    pub measure: Duration,
}

/// Fewest measured test runs of a row.
pub const MIN_RUNS: usize = 5;

/// The generator: `bench_tx` of the bench object, loaded, its template map
/// and one frame per flow.
pub struct Generator {
    ebpf: Ebpf,
    templates: Array<MapData, BenchTemplate>,
    frames: Vec<[u8; BENCH_FRAME_LEN]>,
}

/// One measured test run: how long the kernel generated, how many frames,
/// and what the receiver's counters said right after it returned.
#[derive(Clone, Debug)]
pub struct Point<S> {
    /// Time the kernel spent generating (its per-repetition `duration`
    /// times the repetitions): the run's set-up and tear-down, which can
    /// sleep (the page pool's teardown waits for an RCU grace period), are
    /// left out, so a rate is the rate while frames flowed.
    pub active: Duration,
    /// Frames pushed by the run.
    pub pushed: u64,
    /// The receiver's counters after the run.
    pub seen: S,
}

/// The frame of flow `flow`: Ethernet (client MAC to the LB's), IPv4 from
/// the client's address to the VIP, UDP from [`FIRST_SPORT`] + `flow` to the
/// VIP's UDP port with checksum 0 (none, RFC 768), padded to
/// [`BENCH_FRAME_LEN`] bytes.
///
/// # Panics
/// Never: the lab's addresses are constants that parse.
pub fn template(flow: u16) -> [u8; BENCH_FRAME_LEN] {
    let v4 = |a: &str| {
        a.parse::<std::net::Ipv4Addr>()
            .expect("lab address")
            .octets()
    };
    let f = Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT_ADDR), v4(VIP))
        .udp(FIRST_SPORT + flow, UDP_PORT)
        .padded_to(BENCH_FRAME_LEN)
        .build();
    let mut frame = [0u8; BENCH_FRAME_LEN];
    frame.copy_from_slice(&f);
    // UDP checksum: 6 bytes after the source and destination ports.
    frame[BENCH_SPORT_OFFSET + 6..BENCH_SPORT_OFFSET + 8].fill(0);
    frame
}

impl Generator {
    /// Loads `bench_tx` from the bench object and writes its template.
    ///
    /// # Errors
    /// The object, the map or the verifier fails.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(object::bench_object())
            .context("loading the bench object")?;
        let templates = Array::try_from(
            ebpf.take_map(MAP_BENCH_TEMPLATE)
                .context(MAP_BENCH_TEMPLATE)?,
        )?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_BENCH_TX)
            .context(PROG_BENCH_TX)?
            .try_into()?;
        prog.load().context("loading bench_tx")?;
        Ok(Self {
            ebpf,
            templates,
            frames: (0..BENCH_TX_FLOWS).map(template).collect(),
        })
    }

    /// Generates from interface `iface` of namespace `ns` on a scratch
    /// thread pinned to [`GEN_CPU`] at real-time priority (the caller's
    /// namespace and affinity stay): test runs of [`REPEAT`] frames, one
    /// flow each, round robin, for `plan.warmup`, then measured ones for
    /// `plan.measure`. Reads `sample` after the warm-up and after every
    /// measured run. Returns the reading after the warm-up and one point per
    /// measured run.
    ///
    /// # Errors
    /// Entering the namespace, pinning, a test run (the kernel refuses live
    /// frames) or `sample` fails.
    pub fn run<S: Send>(
        &mut self,
        ns: &Netns,
        iface: &str,
        plan: Plan,
        sample: impl Fn() -> anyhow::Result<S> + Sync,
    ) -> anyhow::Result<(S, Vec<Point<S>>)> {
        let prog: &Xdp = self
            .ebpf
            .program(PROG_BENCH_TX)
            .context(PROG_BENCH_TX)?
            .try_into()?;
        let (frames, templates) = (&self.frames, &mut self.templates);
        let sample = &sample;
        std::thread::scope(|s| {
            s.spawn(move || -> anyhow::Result<(S, Vec<Point<S>>)> {
                set_affinity(0, GEN_CPU)?;
                set_fifo(0)?;
                let _entered = ns.enter()?;
                let ifindex = lb_userspace::netif::ifindex(iface)
                    .with_context(|| format!("no interface {iface} in {}", ns.name))?;
                let ctx = xdp_md(BENCH_FRAME_LEN, ifindex);
                let mut runs = 0usize;
                // One flow per test run, round robin; bench_tx restores
                // what the receiver changed from the run's template.
                let mut step = || -> anyhow::Result<Duration> {
                    let frame = &frames[runs % frames.len()];
                    runs += 1;
                    templates.set(0, BenchTemplate::new(frame, 0), 0)?;
                    let mut opts = TestRunOptions::new();
                    opts.data_in = Some(frame);
                    opts.ctx_in = Some(&ctx);
                    opts.repeat = REPEAT;
                    opts.attrs = opts.attrs.xdp_live_frames(BATCH);
                    let result = prog
                        .test_run(opts)
                        .context("BPF_PROG_TEST_RUN with live frames (needs Linux 5.18+)")?;
                    // `duration` is the mean time per repetition, in ns.
                    Ok(result.duration * REPEAT)
                };
                let start = Instant::now();
                while start.elapsed() < plan.warmup {
                    step()?;
                }
                let first = sample()?;
                let start = Instant::now();
                let mut points = Vec::new();
                while points.len() < MIN_RUNS || start.elapsed() < plan.measure {
                    let active = step()?;
                    points.push(Point {
                        active,
                        pushed: u64::from(REPEAT),
                        seen: sample()?,
                    });
                }
                Ok((first, points))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
        })
    }
}

/// Rates of one measurement, from its points.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    /// Median over the runs of frames pushed per second of generation, Mpps.
    pub offered: f64,
    /// Median over the runs of `received` per second of generation, Mpps.
    pub received: f64,
    /// Lowest and highest run of `received`, Mpps.
    pub received_range: (f64, f64),
}

/// Per-run rates; `received` reads the receiver's count from a reading.
pub fn rates<S>(first: &S, points: &[Point<S>], received: impl Fn(&S) -> u64) -> Rates {
    let mut offered = Vec::new();
    let mut got = Vec::new();
    let mut before = received(first);
    for p in points {
        let secs = p.active.as_secs_f64();
        let now = received(&p.seen);
        offered.push(p.pushed as f64 / secs / 1e6);
        got.push(now.saturating_sub(before) as f64 / secs / 1e6);
        before = now;
    }
    let range = got.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    Rates {
        offered: median(offered),
        received: median(got),
        received_range: range,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What the receiver's counters said at one point.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// Runs of the program under test (BPF stats `run_cnt`).
    pub runs: u64,
    /// Its BPF run time.
    pub run_time: Duration,
    /// `xdp_lb` only: its forwarded (XDP_TX) counter, from the pinned stats.
    pub forwarded: u64,
    /// `xdp_lb` only: the sum of all its outcome counters.
    pub outcomes: u64,
    /// CPU time of the receiving NAPI kthreads (filled in by the measurement).
    pub napi_cpu: Duration,
}

/// One measured program on the LB's veth.
struct Measured {
    rates: Rates,
    /// Median over the runs of the receiving kthread's CPU time over the
    /// generating time: near 1 when the receiver is what limits the rate.
    busy: f64,
    /// Over the whole run (warm-up, windows, settling), from a reading
    /// before the generator started to one after the ring drained.
    total: Seen,
    /// Frames the generator pushed in the measured runs, their number and
    /// their generating time.
    pushed: u64,
    runs: usize,
    active: Duration,
    /// `ethtool -S` changes over that span: p (generator side), LB's veth.
    eth_p: HashMap<String, u64>,
    eth_lb: HashMap<String, u64>,
    napi: Vec<i32>,
    /// CPU time of the NAPI kthreads over that span.
    napi_cpu: Duration,
    /// Time the NAPI kthreads were runnable but waited for their CPU.
    napi_waited: Duration,
}

fn diff(a: &HashMap<String, u64>, b: &HashMap<String, u64>) -> HashMap<String, u64> {
    b.keys().map(|k| (k.clone(), delta(a, b, k))).collect()
}

/// The generator side of the lab: the bridge-side peer of the LB's veth.
const GEN_NS: &str = "sw";
const GEN_IFACE: &str = "p";

/// Runs the generator into the LB's veth (`read`: the receiver's counters;
/// `count`: the counter a rate is taken from).
fn measure(
    lab: &Lab,
    generator: &mut Generator,
    plan: Plan,
    read: &(dyn Fn() -> anyhow::Result<Seen> + Sync),
    count: fn(&Seen) -> u64,
) -> anyhow::Result<Measured> {
    let (sw, lb) = (lab.ns(GEN_NS), lab.ns("lb"));
    let napi = pin_napi(lb, &lab.lb_iface, RX_CPU)?;
    let (eth_p0, eth_lb0) = (
        ethtool_stats(sw, GEN_IFACE)?,
        ethtool_stats(lb, &lab.lb_iface)?,
    );
    let napi_cpu = || -> anyhow::Result<Duration> { napi.iter().map(|&pid| thread_cpu(pid)).sum() };
    let napi_wait =
        || -> anyhow::Result<Duration> { napi.iter().map(|&pid| Ok(schedstat(pid)?.1)).sum() };
    let read = || -> anyhow::Result<Seen> {
        Ok(Seen {
            napi_cpu: napi_cpu()?,
            ..read()?
        })
    };
    let (cpu0, w0) = (napi_cpu()?, napi_wait()?);
    let before = read()?;
    let (first, points) = generator.run(sw, GEN_IFACE, plan, read)?;
    // Let the ring drain before the closing reading.
    std::thread::sleep(Duration::from_millis(200));
    let after = read()?;
    let cpu1 = napi_cpu()?;
    let napi_waited = napi_wait()?.saturating_sub(w0);
    let (eth_p1, eth_lb1) = (
        ethtool_stats(sw, GEN_IFACE)?,
        ethtool_stats(lb, &lab.lb_iface)?,
    );
    let total = Seen {
        runs: after.runs - before.runs,
        run_time: after.run_time.saturating_sub(before.run_time),
        forwarded: after.forwarded - before.forwarded,
        outcomes: after.outcomes - before.outcomes,
        napi_cpu: after.napi_cpu.saturating_sub(before.napi_cpu),
    };
    ensure!(total.runs > 0, "the program under test never ran");
    let pushed = points.iter().map(|p| p.pushed).sum();
    let active = points.iter().map(|p| p.active).sum();
    Ok(Measured {
        rates: rates(&first, &points, count),
        busy: median(
            std::iter::once(&first)
                .chain(points.iter().map(|p| &p.seen))
                .zip(&points)
                .map(|(a, p)| {
                    p.seen.napi_cpu.saturating_sub(a.napi_cpu).as_secs_f64()
                        / p.active.as_secs_f64()
                })
                .collect(),
        ),
        runs: points.len(),
        active,
        total,
        pushed,
        eth_p: diff(&eth_p0, &eth_p1),
        eth_lb: diff(&eth_lb0, &eth_lb1),
        napi,
        napi_cpu: cpu1.saturating_sub(cpu0),
        napi_waited,
    })
}

/// Runs the veth rows: the live-frames generator from `p` (namespace
/// `PREFIX-sw`) into the LB's veth, first through `xdp_lb` as the agent
/// attached it (program `lb_prog`, counters `pins`), then, with the agent
/// stopped, through `bench_drop` attached natively to the same veth. Stops
/// the lab's pass-through program on `p` first (HTTP must be done), so
/// `xdp_lb`'s XDP_TX frames are dropped by veth instead of crossing the
/// bridge on the measured CPU. Adds two rows to `report`.
///
/// # Errors
/// Fewer than two CPUs, set-up fails, or a row's counters show another path
/// than it claims: `xdp_lb` forwarded fewer than it ran (beyond the lab's
/// background packets), `bench_drop`'s runs and veth's XDP drops differ.
pub fn bench(
    lab: &mut Lab,
    lb_prog: u32,
    pins: &StatsReader,
    plan: Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus > RX_CPU,
        "the veth rows need CPUs {GEN_CPU} and {RX_CPU}; {cpus} available"
    );
    crate::host::ensure_programs(&[("ethtool", "ethtool")])?;
    lab.stop_peer_pass();
    let mut generator = Generator::load()?;

    // 1. xdp_lb, attached by the agent; UDP to the VIP, XDP_TX back to p.
    // Its rate: the forwarded (XDP_TX) counter of its pinned stats.
    let read_lb = || {
        let (runs, run_time) = crate::host::prog_stats(lb_prog)?;
        Ok(Seen {
            runs,
            run_time,
            forwarded: pins.outcome(Outcome::Forwarded).packets,
            outcomes: Outcome::ALL.iter().map(|&o| pins.outcome(o).packets).sum(),
            ..Seen::default()
        })
    };
    let lb = measure(lab, &mut generator, plan, &read_lb, |s| s.forwarded)?;
    // The lab's own traffic (health checks, ARP) also runs xdp_lb; allow
    // for it, nothing else.
    let background = 200 + lb.total.runs / 1000;
    ensure!(
        lb.total.forwarded <= lb.total.runs && lb.total.runs - lb.total.forwarded <= background,
        "xdp_lb ran {} times but forwarded {} (outcomes {})",
        lb.total.runs,
        lb.total.forwarded,
        lb.total.outcomes
    );

    // 2. bench_drop, then bench_tx (XDP_TX of the frame as it came: the
    // veth's own transmit path, the floor of any forwarder here), on the
    // same veth, the agent stopped.
    lab.stop_agent();
    let mut native = |name: &str| -> anyhow::Result<Measured> {
        let _in_lb = lab.ns("lb").enter()?;
        let mut ebpf = EbpfLoader::new().load(object::bench_object())?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .context(name.to_string())?
            .try_into()?;
        prog.load()?;
        prog.attach(&lab.lb_iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name}"))?;
        let id = prog.info()?.id();
        // Its rate: BPF stats' run count.
        let read = || {
            let (runs, run_time) = crate::host::prog_stats(id)?;
            Ok(Seen {
                runs,
                run_time,
                ..Seen::default()
            })
        };
        drop(_in_lb);
        let m = measure(lab, &mut generator, plan, &read, |s| s.runs);
        drop(ebpf); // detaches
        m
    };
    let drop = native(PROG_BENCH_DROP)?;
    let tx_floor = native(PROG_BENCH_TX)?;
    let xdp_drops = drop
        .eth_lb
        .get("rx_queue_0_xdp_drops")
        .copied()
        .unwrap_or(0);
    ensure!(
        xdp_drops.abs_diff(drop.total.runs) <= 200 + drop.total.runs / 1000,
        "bench_drop ran {} times but veth counted {xdp_drops} XDP drops",
        drop.total.runs
    );

    // CPU time of the receive thread per packet: what the rows cost on
    // CPU RX_CPU, whatever share of it other work on the machine took.
    let cpu_ns = |m: &Measured| m.napi_cpu.as_nanos() as f64 / m.total.runs as f64;
    let common = |m: &Measured| {
        let ns = m.total.run_time.as_nanos() as f64 / m.total.runs as f64;
        let overflow = m
            .eth_p
            .get("tx_queue_0_xdp_xmit_errors")
            .copied()
            .unwrap_or(0);
        format!(
            "median of {} test runs of {REPEAT} frames (range {:.3}-{:.3} Mpps), rates over the kernel's generating time ({:.2} s in all), after {:.1} s warm-up; generator offered {:.2} Mpps (BPF_PROG_TEST_RUN live frames, bench_tx XDP_TX out of p, one of {BENCH_TX_FLOWS} UDP flows to the VIP per run, {BENCH_FRAME_LEN}-byte frames; thread pinned to CPU {GEN_CPU}, SCHED_FIFO); receive: the LB veth's threaded NAPI kthread (pids {:?}) pinned to CPU {RX_CPU}, SCHED_FIFO, busy {:.0}% of the generating time (median of the runs), {:.0} ns of its CPU per packet, {:.0} ms runnable but waiting; BPF run time {ns:.0} ns/packet; measured runs pushed {} frames; whole row (warm-up included): {} ran the program, ring full: {overflow} dropped by veth (ethtool -S p: tx_queue_0_xdp_xmit_errors)",
            m.runs,
            m.rates.received_range.0,
            m.rates.received_range.1,
            m.active.as_secs_f64(),
            plan.warmup.as_secs_f64(),
            m.rates.offered,
            m.napi,
            m.busy * 100.0,
            cpu_ns(m),
            m.napi_waited.as_secs_f64() * 1e3,
            m.pushed,
            m.total.runs,
        )
    };
    report.row(
        "veth",
        "XDP_DROP (bench_drop on the LB's veth)",
        format!("{:.3} Mpps", drop.rates.received),
        "1.00x",
        format!(
            "rate: BPF stats run_cnt; {}; path: veth counted {xdp_drops} XDP drops",
            common(&drop)
        ),
    );
    let floor_tx = tx_floor
        .eth_lb
        .get("rx_queue_0_xdp_tx_errors")
        .copied()
        .unwrap_or(0);
    report.row(
        "veth",
        "XDP_TX floor (bench_tx on the LB's veth: no parsing, no lookup)",
        format!("{:.3} Mpps", tx_floor.rates.received),
        format!("{:.2}x", tx_floor.rates.received / drop.rates.received),
        format!(
            "rate: BPF stats run_cnt; {}; path: {floor_tx} XDP_TX frames refused by veth toward p, as for xdp_lb; the most any program that transmits can reach on this veth",
            common(&tx_floor)
        ),
    );
    let tx = |k: &str| lb.eth_lb.get(k).copied().unwrap_or(0);
    report.row(
        "veth",
        "UDP to a VIP through xdp_lb (encap + XDP_TX)",
        format!("{:.3} Mpps", lb.rates.received),
        format!("{:.2}x", lb.rates.received / drop.rates.received),
        format!(
            "rate: forwarded_tx (pinned stats); {}; path: forwarded_tx counted {} of {} runs ({} other outcomes: the lab's own packets); XDP_TX toward p: {} taken, {} refused by veth (p has no XDP program: dropped there, as intended)",
            common(&lb),
            lb.total.forwarded,
            lb.total.runs,
            lb.total.outcomes - lb.total.forwarded,
            tx("rx_queue_0_xdp_tx"),
            tx("rx_queue_0_xdp_tx_errors"),
        ),
    );
    report.notes.push(format!(
        "veth: xdp_lb reaches {:.2}x the XDP_TX floor's rate (bench_tx, the veth's transmit path alone, {:.0} ns of receive CPU per packet): the rest of the gap to XDP_DROP is the veth's own transmit work, which any forwarder pays here.",
        lb.rates.received / tx_floor.rates.received,
        cpu_ns(&tx_floor)
    ));
    report.notes.push(format!(
        "veth: receive CPU per packet (NAPI kthread time / packets, less sensitive to other load than Mpps): bench_drop {:.0} ns, xdp_lb {:.0} ns, ratio of rates at full CPU {:.2}x. Both rows run with BPF run-time statistics on (two clock reads per packet, for run_cnt and the ns/packet figures), and xdp_lb's XDP_TX frames end at veth's refusal on p (no XDP program there), the cheapest end a transmitted frame can have on veth.",
        cpu_ns(&drop),
        cpu_ns(&lb),
        cpu_ns(&drop) / cpu_ns(&lb)
    ));
    // A row is bounded by the generator when its receiver had CPU to spare.
    for (name, m) in [
        ("bench_drop", &drop),
        ("bench_tx", &tx_floor),
        ("xdp_lb", &lb),
    ] {
        if m.busy < 0.9 {
            report.notes.push(format!(
                "veth: {name}'s receiving kthread was busy only {:.0}% of the generating time: that row is bounded by the generator ({:.2} Mpps offered), not by the receiver.",
                m.busy * 100.0,
                m.rates.offered
            ));
        }
    }
    Ok(())
}
