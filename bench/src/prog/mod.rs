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

mod cases;
mod nat;
use cases::run_cases;

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
[nat]
max_entries = {conntrack}
[[vip]]
name = "webnat"
address = "10.40.0.100"
port = {NAT_VIP_PORT}
protocol = "tcp"
mode = "nat"
  [[vip.backend]]
  address = "10.40.0.21"
  port = {NAT_BACKEND_PORT}
  [[vip.backend]]
  address = "10.40.0.22"
  port = {NAT_BACKEND_PORT}
  [[vip.backend]]
  address = "10.40.0.23"
  port = {NAT_BACKEND_PORT}
"#
    )
}

/// The `mode = "nat"` VIP's port, and its backends'.
const NAT_VIP_PORT: u16 = 81;
const NAT_BACKEND_PORT: u16 = 8080;

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
        // The client, where NAT replies go.
        neighbours.push(("10.40.0.10".into(), "02:40:00:00:00:10".into()));
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
            {
                let mut s = lb_userspace::balancer::Sources::from(Ipv4Addr::from(LB_ADDR));
                s.v6 = "fd00:20::2".parse().expect("address");
                // Four SNAT addresses and every port from 1024: no host
                // socket of this namespace competes, and the new-flow row
                // makes thousands of translations per run.
                s.nat.v4 = [LB_ADDR, [10, 40, 0, 3], [10, 40, 0, 4], [10, 40, 0, 5]];
                s.nat.v4_count = 4;
                s.nat.port_first = 1024;
                s.nat.port_count = 65536 - 1024;
                s
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
        object::load_tail_programs(&mut ebpf).context("xdp_lb_v6 in LB_PROGS")?;
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
