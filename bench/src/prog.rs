//! Per-packet cost through `BPF_PROG_TEST_RUN`: each packet class of
//! `xdp_lb` beside the baselines `bench_drop` and `bench_parse_drop` and the
//! reference `bench_lookup_encap` (parse, one VIP lookup, IPv4-in-IPv4,
//! XDP_TX: the floor of any encapsulating load balancer), measured in the
//! same run on one pinned CPU. Forwarding classes are reported as a ratio
//! to the reference, the others to the parse-then-drop baseline.
//!
//! With `repeat > 1` the kernel reruns the program on the same buffer, so
//! `xdp_lb` would encapsulate its own output from the second repetition on.
//! Every `xdp_lb` case therefore runs under `bench_restore`, which restores
//! the frame from a template and tail-calls `xdp_lb`; the wrapper's own cost
//! (`bench_restore` tail-calling `bench_drop`, minus `bench_drop`) is
//! measured in the same run and subtracted. After each run the counters and
//! the return code must show that every repetition took the claimed path.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    BENCH_F_VARY_FLOW, BENCH_FRAME_LEN, BenchBackend, BenchTemplate, BenchVipKey, ConnEvent,
    ConnValue, FLOW_CACHE_REFRESH, FlowKey, MAP_BENCH_PROGS, MAP_BENCH_TEMPLATE, MAP_BENCH_VIPS,
    MAP_CONNS, Outcome, PROG_BENCH_DROP, PROG_BENCH_LOOKUP_ENCAP, PROG_BENCH_PARSE_DROP,
    PROG_BENCH_RESTORE, PROTO_TCP, PROTO_UDP,
};
use lb_tests::frames::Frame;
use lb_tests::xdp::{LbNamespace, lb_namespace, xdp_md};
use lb_userspace::{
    balancer::Balancer,
    config::Config,
    dataplane::{
        maps::AyaMaps,
        nexthops::{self, NextHopWriter},
        object, resolve,
        stats::StatsReader,
    },
};

use crate::report::Report;

use lb_common::xdp_action::{DROP as XDP_DROP, PASS as XDP_PASS, TX as XDP_TX};

const LB_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0x40, 0, 0, 0, 0x10];
const LB_ADDR: [u8; 4] = [10, 40, 0, 2];
const VIP: [u8; 4] = [10, 40, 0, 100];
const CLIENT: [u8; 4] = [10, 40, 0, 10];
const OTHER_HOST: [u8; 4] = [10, 40, 0, 55];
/// A source outside the allowed prefixes (TEST-NET-3).
const OUTSIDE: [u8; 4] = [203, 0, 113, 7];

/// Repetitions per run and runs per case (the median is reported).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// `repeat` of one `BPF_PROG_TEST_RUN`.
    pub repeat: u32,
    /// Runs per case.
    pub runs: usize,
}

/// What a case's repetitions must all have done.
#[derive(Clone, Copy)]
struct Expect {
    action: u32,
    outcome: Option<Outcome>,
    conn: Option<ConnEvent>,
    /// Length of the output frame of the last repetition.
    out_len: usize,
}

fn config(conntrack: u32, gue: bool) -> String {
    let encap = if gue { "kind = \"gue\"\n" } else { "" };
    format!(
        r#"
[encap]
{encap}source_v6 = "fd00:20::2"
[maglev]
table_size = 65537
[conntrack]
max_entries = {conntrack}
max_new_per_cpu = 100000000
[[vip]]
name = "web"
address = "10.40.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.40.0.21"
  [[vip.backend]]
  address = "10.40.0.22"
  [[vip.backend]]
  address = "10.40.0.23"
[[vip]]
name = "dns"
address = "10.40.0.100"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "10.40.0.21"
  [[vip.backend]]
  address = "10.40.0.22"
  [[vip.backend]]
  address = "10.40.0.23"
[[vip]]
name = "web6"
address = "fd00:20::100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "fd00:20::21"
  [[vip.backend]]
  address = "fd00:20::22"
"#
    )
}

/// An IPv6 TCP segment (ACK) client -> the IPv6 VIP, padded to
/// [`BENCH_FRAME_LEN`] bytes.
fn tcp6(sport: u16) -> [u8; BENCH_FRAME_LEN] {
    let client: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let vip: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv6(client, vip)
        .tcp_ack(sport, 80)
        .padded_to(BENCH_FRAME_LEN)
        .build()
        .try_into()
        .expect("frame of BENCH_FRAME_LEN bytes")
}

/// A TCP segment padded to [`BENCH_FRAME_LEN`] bytes with payload.
fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> [u8; BENCH_FRAME_LEN] {
    let frame = Frame::eth(CLIENT_MAC, LB_MAC).ipv4(src, dst);
    let frame = if syn {
        frame.tcp_syn(sport, dport)
    } else {
        frame.tcp_ack(sport, dport)
    };
    frame
        .padded_to(BENCH_FRAME_LEN)
        .build()
        .try_into()
        .expect("frame of BENCH_FRAME_LEN bytes")
}

/// A UDP datagram padded to [`BENCH_FRAME_LEN`] bytes with payload.
fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> [u8; BENCH_FRAME_LEN] {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst)
        .udp(sport, dport)
        .padded_to(BENCH_FRAME_LEN)
        .build()
        .try_into()
        .expect("frame of BENCH_FRAME_LEN bytes")
}

/// The production object and the benchmark's own, loaded in the bench's
/// namespace, pinned to one CPU.
struct Bench {
    ebpf: Ebpf,
    bench: Ebpf,
    stats: StatsReader,
    template: Array<MapData, BenchTemplate>,
    progs: ProgramArray<MapData>,
    balancer: Balancer<AyaMaps>,
    /// `LB_NEXTHOPS`, filled as the agent fills it.
    next_hops: NextHopWriter,
    // Declared last: the programs and maps go before the namespace.
    lb: LbNamespace,
}

impl Bench {
    fn new(prefix: &str, conntrack: u32, gue: bool) -> anyhow::Result<Self> {
        // veth bp0 (10.40.0.2/24, the LB's side, forwarding on) with permanent
        // neighbours for the backends, so bpf_fib_lookup resolves them.
        let mut neighbours: Vec<(String, String)> = [21u8, 22, 23]
            .into_iter()
            .map(|b| (format!("10.40.0.{b}"), format!("02:40:00:00:00:{b:02x}")))
            .collect();
        for b in [0x21u8, 0x22] {
            neighbours.push((format!("fd00:20::{b:x}"), format!("02:40:00:00:00:{b:02x}")));
        }
        let lb = lb_namespace(
            &format!("{prefix}-{}", if gue { "gue" } else { "prog" }),
            ("bp0", "bp1"),
            "02:40:00:00:00:02",
            "10.40.0.2/24",
            &neighbours,
        )?;

        let config = Config::parse(&config(conntrack, gue), "bench")?.config;
        let regions = config.sizing.table_regions;
        let mut ebpf = object::load_object(&config).context("loading the object")?;
        let stats = StatsReader::take(&mut ebpf)?;
        let balancer = Balancer::new(
            AyaMaps::take(&mut ebpf)?,
            &config,
            lb_userspace::balancer::Sources {
                v4: Ipv4Addr::from(LB_ADDR),
                v6: "fd00:20::2".parse().expect("address"),
            },
            regions,
        )?;
        // The backends' next hops, resolved over netlink in this namespace
        // and written as the agent does.
        let mut next_hops = NextHopWriter::new(
            ebpf.take_map(lb_common::MAP_NEXTHOPS)
                .context(lb_common::MAP_NEXTHOPS)?,
        )?;
        let targets = balancer.next_hop_targets();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let resolved = runtime.block_on(async {
            let (handle, _notifications) = resolve::connect()?;
            anyhow::Ok(nexthops::resolve_all(&handle, &targets).await)
        })?;
        let applied = next_hops.apply(&targets, &resolved);
        ensure!(
            applied.written == targets.len() && applied.failed == 0,
            "next hops: {applied:?} for {} backends",
            targets.len()
        );
        let mut bench = EbpfLoader::new()
            .load(object::bench_object())
            .context("loading the bench object")?;
        for name in [
            "xdp_lb",
            PROG_BENCH_DROP,
            PROG_BENCH_PARSE_DROP,
            PROG_BENCH_LOOKUP_ENCAP,
            PROG_BENCH_RESTORE,
        ] {
            let object = if name == "xdp_lb" {
                &mut ebpf
            } else {
                &mut bench
            };
            let prog: &mut Xdp = object
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            lb_userspace::dataplane::object::load_program(prog)
                .with_context(|| format!("the verifier refuses {name}"))?;
        }
        let template = Array::try_from(
            bench
                .take_map(MAP_BENCH_TEMPLATE)
                .context(MAP_BENCH_TEMPLATE)?,
        )?;
        let progs =
            ProgramArray::try_from(bench.take_map(MAP_BENCH_PROGS).context(MAP_BENCH_PROGS)?)?;
        // The reference's VIPs: the same two as xdp_lb's, toward backend .21.
        let mut vips: HashMap<_, BenchVipKey, BenchBackend> =
            HashMap::try_from(bench.map_mut(MAP_BENCH_VIPS).context(MAP_BENCH_VIPS)?)?;
        for (port, proto) in [(80u16, PROTO_TCP), (53, PROTO_UDP)] {
            let key = BenchVipKey {
                addr: VIP,
                port: port.to_be_bytes(),
                proto,
                _pad: 0,
            };
            let backend = BenchBackend {
                dst: [10, 40, 0, 21],
                src: LB_ADDR,
                dmac: [0x02, 0x40, 0, 0, 0, 0x21],
                smac: LB_MAC,
            };
            vips.insert(key, backend, 0)?;
        }
        Ok(Self {
            ebpf,
            bench,
            stats,
            template,
            progs,
            balancer,
            next_hops,
            lb,
        })
    }

    /// Program `name`: `xdp_lb` from the production object, the others
    /// from the bench's own.
    fn prog(&self, name: &str) -> anyhow::Result<&Xdp> {
        let object = if name == "xdp_lb" {
            &self.ebpf
        } else {
            &self.bench
        };
        Ok(object
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    /// Entries in the connection table (walks its keys: about a second per
    /// million).
    fn conntrack_entries(&self) -> anyhow::Result<usize> {
        let conns: HashMap<_, FlowKey, ConnValue> =
            HashMap::try_from(self.ebpf.map(MAP_CONNS).context(MAP_CONNS)?)?;
        Ok(conns.keys().filter(Result::is_ok).count())
    }

    /// Points the wrapper at `target` and its template at `frame`.
    fn wrap(
        &mut self,
        target: &str,
        frame: &[u8; BENCH_FRAME_LEN],
        flags: u32,
    ) -> anyhow::Result<()> {
        let fd = self.prog(target)?.fd()?.try_clone()?;
        self.progs.set(0, &fd, 0)?;
        self.template.set(0, BenchTemplate::new(frame, flags), 0)?;
        Ok(())
    }

    /// One `BPF_PROG_TEST_RUN` of `program` on `frame`, arriving on bp0:
    /// (return code of the last repetition, its output length, ns per repetition).
    fn run(&self, program: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, usize, f64)> {
        let ctx = xdp_md(frame.len(), self.lb.ifindex);
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let result = self.prog(program)?.test_run(opts)?;
        Ok((
            result.return_value,
            result.data_size_out as usize,
            result.duration.as_nanos() as f64,
        ))
    }

    /// What a run is checked against for `event`: its count, and the cached
    /// hits. For [`ConnEvent::HitCached`] the count is of both hits (the
    /// table's and the flow cache's), as an established flow takes both.
    fn conn_counts(&self, event: ConnEvent) -> (u64, u64) {
        let cached = self.stats.conn(ConnEvent::HitCached).packets;
        match event {
            ConnEvent::HitCached => (self.stats.conn(ConnEvent::Hit).packets + cached, cached),
            e => (self.stats.conn(e).packets, cached),
        }
    }

    /// Runs a case `plan.runs` times, checking each run; the median ns.
    fn measure(
        &self,
        what: &str,
        program: &str,
        frame: &[u8; BENCH_FRAME_LEN],
        plan: Plan,
        expect: Expect,
    ) -> anyhow::Result<f64> {
        let mut samples = Vec::with_capacity(plan.runs);
        for _ in 0..plan.runs {
            let outcome_before = expect.outcome.map(|o| self.stats.outcome(o).packets);
            let conn_before = expect.conn.map(|e| self.conn_counts(e));
            let (action, out_len, ns) = self.run(program, frame, plan.repeat)?;
            ensure!(
                action == expect.action,
                "{what}: return code {action}, expected {}",
                expect.action
            );
            ensure!(
                out_len == expect.out_len,
                "{what}: output of {out_len} bytes, expected {} (was the frame restored?)",
                expect.out_len
            );
            if let (Some(o), Some(before)) = (expect.outcome, outcome_before) {
                let n = self.stats.outcome(o).packets - before;
                ensure!(
                    n == u64::from(plan.repeat),
                    "{what}: {} counted {n} times in {} repetitions",
                    o.name(),
                    plan.repeat
                );
            }
            if let (Some(e), Some(before)) = (expect.conn, conn_before) {
                let after = self.conn_counts(e);
                let n = after.0 - before.0;
                ensure!(
                    n == u64::from(plan.repeat),
                    "{what}: {} counted {n} times in {} repetitions",
                    e.name(),
                    plan.repeat
                );
                // A cached flow reads the connection table once per
                // FLOW_CACHE_REFRESH + 1 packets: the rest are cached hits.
                let cached = after.1 - before.1;
                let least = u64::from(plan.repeat) / u64::from(FLOW_CACHE_REFRESH + 1)
                    * u64::from(FLOW_CACHE_REFRESH);
                ensure!(
                    e != ConnEvent::HitCached || cached >= least,
                    "{what}: conntrack_hit_cached counted {cached} times in {} repetitions (at least {least} expected)",
                    plan.repeat
                );
            }
            samples.push(ns);
        }
        Ok(median(&mut samples))
    }
}

/// Median of a non-empty sample.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Runs every case and adds its rows to `report`. Runs on a scratch thread
/// pinned to the last CPU, so the caller's affinity and namespace stay.
///
/// # Errors
/// Set-up fails, the verifier refuses a program, or a repetition took
/// another path than its case claims.
pub fn bench(prefix: &str, plan: Plan, report: &mut Report) -> anyhow::Result<()> {
    let prefix = prefix.to_string();
    let cpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
    let rows = std::thread::spawn(move || -> anyhow::Result<Vec<Row>> {
        crate::host::set_affinity(0, cpu)?;
        run_cases(&prefix, plan)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the test-run thread panicked"))??;
    let find = |prefix: &str| {
        rows.iter()
            .find(|r| r.case.starts_with(prefix))
            .map_or(f64::NAN, |r| r.ns)
    };
    let (parse, reference) = (find("baseline: parse"), find("reference:"));
    let cpu_note = format!(
        "CPU {cpu}, median of {} runs x {} repetitions",
        plan.runs, plan.repeat
    );
    for row in rows {
        let (base, name) = match row.versus {
            Versus::Parse => (parse, "parse-drop"),
            Versus::Reference => (reference, "bench_lookup_encap"),
        };
        report.row(
            "per-packet",
            row.case,
            format!("{:.1} ns", row.ns),
            format!("{:.2}x", row.ns / base),
            match row.note.as_str() {
                "" => format!("ratio to {name}; {cpu_note}"),
                note => format!("{note}; ratio to {name}; {cpu_note}"),
            },
        );
    }
    Ok(())
}

/// Which row a case's ratio is taken to.
#[derive(Clone, Copy)]
enum Versus {
    /// `bench_parse_drop`: for what does not forward.
    Parse,
    /// `bench_lookup_encap`: for forwarding classes.
    Reference,
}

/// One per-packet row.
struct Row {
    case: String,
    ns: f64,
    note: String,
    versus: Versus,
}

impl Row {
    fn new(case: impl Into<String>, ns: f64, note: impl Into<String>, versus: Versus) -> Self {
        Self {
            case: case.into(),
            ns,
            note: note.into(),
            versus,
        }
    }
}

fn run_cases(prefix: &str, plan: Plan) -> anyhow::Result<Vec<Row>> {
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
struct Baselines {
    /// The wrapper (restore the frame, tail call), without flow numbering.
    wrap_fixed: f64,
    /// The wrapper with flow numbering (a new flow each repetition).
    wrap_vary: f64,
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
