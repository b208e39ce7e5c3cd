//! The lab measurements: HTTP through the balancer (DSR) against HAProxy in
//! TCP mode on the same backends; HTTP through a `mode = "nat"` VIP against
//! the kernel's own NAT (nftables DNAT + SNAT with conntrack, as
//! kube-proxy's nftables mode runs it) and HAProxy; then the packet rate
//! through `xdp_lb` against `bench_drop` on the same interface from a
//! live-frames generator ([`crate::livegen`]).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_userspace::dataplane::stats::StatsReader;

use crate::{
    host::{ensure_programs, prog_stats},
    lab::{
        BACKENDS, HAPROXY_PORT, KERNEL_NAT_BACKEND_PORT, KERNEL_NAT_PORT, LB_ADDR, Lab, NAT_PORT,
        VIP,
    },
    livegen,
    report::Report,
    traffic::{self, WrkResult},
};

/// How long each lab measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    /// Measured time of one veth packet-rate row (after a warm-up).
    pub flood: Duration,
    /// One wrk run.
    pub wrk: Duration,
    /// wrk connections.
    pub connections: u32,
}

/// What a wrk run cost on the LB side.
struct Cost {
    result: WrkResult,
    /// LB-side CPU time per request, µs.
    lb_us: f64,
    /// Softirq time of all CPUs during the run, as a share of one CPU.
    softirq: f64,
    /// Busy time of all CPUs during the run, as a share of one CPU.
    busy: f64,
    /// Softirq time of all CPUs per request, µs.
    softirq_us: f64,
}

/// Runs wrk from the client against `url`; `lb_cpu` reads the LB side's
/// CPU time before and after.
fn wrk(
    lab: &Lab,
    url: &str,
    close: bool,
    d: Durations,
    lb_cpu: &dyn Fn() -> anyhow::Result<Duration>,
) -> anyhow::Result<Cost> {
    let mut cmd = lab.ns("client").command("wrk");
    cmd.args([
        "-t2",
        &format!("-c{}", d.connections),
        &format!("-d{}s", d.wrk.as_secs()),
        "--timeout",
        "2s",
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let (soft0, busy0) = traffic::system_cpu()?;
    let lb0 = lb_cpu()?;
    let start = Instant::now();
    let text = crate::lab::output(&mut cmd)?;
    let elapsed = start.elapsed().as_secs_f64();
    let lb1 = lb_cpu()?;
    let (soft1, busy1) = traffic::system_cpu()?;
    let result = traffic::parse_wrk(&text)?;
    let lb_us = (lb1 - lb0).as_secs_f64() * 1e6 / result.requests.max(1) as f64;
    Ok(Cost {
        softirq_us: (soft1 - soft0).as_secs_f64() * 1e6 / result.requests.max(1) as f64,
        result,
        lb_us,
        softirq: (soft1 - soft0).as_secs_f64() / elapsed,
        busy: (busy1 - busy0).as_secs_f64() / elapsed,
    })
}

fn http_row(report: &mut Report, case: &str, c: &Cost, lb_what: &str, peer_rps: Option<f64>) {
    let r = &c.result;
    let errors = if r.errors.is_empty() {
        String::new()
    } else {
        format!("; wrk: {}", r.errors)
    };
    report.row(
        "HTTP",
        case,
        format!("{:.0} req/s", r.rps),
        peer_rps.map_or(String::new(), |p| format!("{:.2}x", r.rps / p)),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms; LB CPU {:.1} µs/req ({lb_what}); all CPUs: softirq {:.0}%, busy {:.0}% of one CPU; noisy{errors}",
            r.p50_ms,
            r.p99_ms,
            c.lb_us,
            c.softirq * 100.0,
            c.busy * 100.0
        ),
    );
}

/// The kernel's NAT on the load balancer (nftables, as kube-proxy's
/// nftables mode writes it): `LB_ADDR:KERNEL_NAT_PORT` DNAT to the
/// backends' `KERNEL_NAT_BACKEND_PORT` in turn (`numgen inc`), masqueraded
/// (SNAT to the load balancer's address) with conntrack, in table
/// `lbbench`.
fn kernel_nat_rules() -> String {
    let targets = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, (_, a))| format!("{i} : {a}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip lbbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    ip daddr {LB_ADDR} tcp dport {KERNEL_NAT_PORT} dnat to numgen inc mod {} map {{ {targets} }} : {KERNEL_NAT_BACKEND_PORT}\n  }}\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    ct status dnat masquerade\n  }}\n}}\n",
        BACKENDS.len()
    )
}

/// The NAT rows: HTTP through the `mode = "nat"` VIP (xdp_lb and its NAT
/// programs) and through the kernel's NAT, keep-alive and a new connection
/// per request, with HAProxy's runs of the same lab (`haproxy`: keep-alive,
/// new connection) beside them. Every method reaches the backends from its
/// own 4-tuples (SNAT ports 1024-32767; HAProxy's ephemeral ports; the
/// kernel NAT's own backend port), so none meets another's TIME_WAIT.
fn nat_rows(
    lab: &mut Lab,
    d: Durations,
    lb_cpu: &dyn Fn() -> anyhow::Result<Duration>,
    haproxy: (&Cost, &Cost),
    report: &mut Report,
) -> anyhow::Result<()> {
    let url = format!("http://{VIP}:{NAT_PORT}/");
    let xdp_ka = wrk(lab, &url, false, d, lb_cpu)?;
    let xdp_close = wrk(lab, &url, true, d, lb_cpu)?;
    let rules = lab.dir.join("kernel-nat.nft");
    std::fs::write(&rules, kernel_nat_rules())?;
    crate::lab::output(
        lab.ns("lb")
            .command("nft")
            .args(["-f", &rules.display().to_string()]),
    )
    .context("loading the kernel NAT rules (nft -f)")?;
    let kurl = format!("http://{LB_ADDR}:{KERNEL_NAT_PORT}/");
    lab.wait_http(&kurl, Duration::from_secs(10))
        .context("the kernel's NAT did not serve")?;
    // The kernel's NAT has no process: its cost is softirq time.
    let no_process = || Ok(Duration::ZERO);
    let k_ka = wrk(lab, &kurl, false, d, &no_process)?;
    let k_close = wrk(lab, &kurl, true, d, &no_process)?;
    let _ = crate::lab::output(
        lab.ns("lb")
            .command("nft")
            .args(["delete", "table", "ip", "lbbench"]),
    );
    for (what, xdp, kernel, hp) in [
        ("keep-alive", &xdp_ka, &k_ka, haproxy.0),
        (
            "new connection per request",
            &xdp_close,
            &k_close,
            haproxy.1,
        ),
    ] {
        http_row(
            report,
            &format!("{what}, through xdp_lb mode = \"nat\" (both directions)"),
            xdp,
            "BPF run time of xdp_lb with its NAT programs",
            None,
        );
        http_row(
            report,
            &format!("{what}, through the kernel's NAT (nftables DNAT + SNAT, conntrack)"),
            kernel,
            "none: softirq, see all CPUs",
            Some(xdp.result.rps),
        );
        http_row(
            report,
            &format!("{what}, through HAProxy (the run above; replies through it too)"),
            hp,
            "haproxy process time",
            Some(xdp.result.rps),
        );
        report.row(
            "HTTP",
            format!("{what}: softirq of all CPUs per request, kernel NAT / xdp_lb nat"),
            format!("{:.1} / {:.1} µs", kernel.softirq_us, xdp.softirq_us),
            format!("{:.2}x", kernel.softirq_us / xdp.softirq_us.max(f64::MIN_POSITIVE)),
            "the same client, bridge and backends in both runs: the difference is the load balancer's work (the kernel's NAT runs in softirq; xdp_lb's run time is in softirq too)",
        );
    }
    Ok(())
}

/// Runs the lab part: packet rate, then HTTP through XDP and HAProxy.
///
/// # Errors
/// The lab cannot be built, a tool is missing, or a run fails.
pub fn bench(prefix: &str, lb_bin: &Path, d: Durations, report: &mut Report) -> anyhow::Result<()> {
    ensure_programs(&[("wrk", "wrk"), ("haproxy", "haproxy"), ("nft", "nftables")])?;
    // Run-time statistics of every BPF program while this guard lives.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut lab = Lab::start(prefix, lb_bin)?;
    let lb_prog = lab.lb_prog_id()?;
    let pins = StatsReader::from_pins(&lab.pin_dir())?;

    // 1. HTTP through the balancer (DSR) and through HAProxy. HAProxy runs
    // while xdp_lb stays attached (it passes non-VIP traffic), so the LB's
    // interface has the same settings (XDP on, TSO off) for both.
    let lb_cpu = || -> anyhow::Result<Duration> { Ok(prog_stats(lb_prog)?.1) };
    let url = format!("http://{VIP}/");
    let xdp_ka = wrk(&lab, &url, false, d, &lb_cpu)?;
    let xdp_close = wrk(&lab, &url, true, d, &lb_cpu)?;
    let cfg = lab.dir.join("haproxy.cfg");
    let mut text = format!(
        "global\n    maxconn 4000\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\nfrontend fe\n    bind {LB_ADDR}:{HAPROXY_PORT}\n    default_backend be\n\nbackend be\n    balance roundrobin\n"
    );
    for (name, addr) in BACKENDS {
        text.push_str(&format!("    server {name} {addr}:80 check inter 1s\n"));
    }
    std::fs::write(&cfg, text)?;
    let haproxy = lab.spawn(
        "lb",
        Path::new("haproxy"),
        &["-db", "-f", &cfg.display().to_string()],
        "haproxy",
    )?;
    let pid = haproxy.pid();
    lab.keep(haproxy);
    let hurl = format!("http://{LB_ADDR}:{HAPROXY_PORT}/");
    lab.wait_http(&hurl, Duration::from_secs(10))
        .context("HAProxy did not come up")?;
    let hp_cpu = || traffic::process_cpu(pid);
    let hp_ka = wrk(&lab, &hurl, false, d, &hp_cpu)?;
    let hp_close = wrk(&lab, &hurl, true, d, &hp_cpu)?;
    nat_rows(&mut lab, d, &lb_cpu, (&hp_ka, &hp_close), report).context("NAT rows")?;

    // 2. Packet rate on the LB's veth from a live-frames generator: xdp_lb
    // as the agent attached it, then bench_drop with the agent stopped.
    let plan = livegen::Plan {
        warmup: Duration::from_millis(500),
        measure: d.flood,
    };
    livegen::bench(&mut lab, lb_prog, &pins, plan, report).context("veth rows")?;
    http_row(
        report,
        "keep-alive, through xdp_lb (DSR)",
        &xdp_ka,
        "BPF run time of xdp_lb",
        None,
    );
    http_row(
        report,
        "keep-alive, through HAProxy (TCP mode)",
        &hp_ka,
        "haproxy process time",
        Some(xdp_ka.result.rps),
    );
    http_row(
        report,
        "new connection per request, through xdp_lb",
        &xdp_close,
        "BPF run time of xdp_lb",
        None,
    );
    http_row(
        report,
        "new connection per request, through HAProxy",
        &hp_close,
        "haproxy process time",
        Some(xdp_close.result.rps),
    );
    report.notes.push(format!(
        "HTTP: wrk -t2 -c{} -d{}s from the client namespace; backends answer {} bytes from the bench's own small server. HAProxy is not DSR: replies come back through it, while xdp_lb sees only client-to-VIP packets. The ratio of a HAProxy row is to the xdp_lb row above it. LB CPU for xdp_lb is the BPF run time of the program only (not the veth driver work around it); for HAProxy it is the process's user+system time (not the kernel's softirq work for its sockets). 'All CPUs' figures include client, bridge and backends on the same machine.",
        d.connections,
        d.wrk.as_secs(),
        traffic::BODY_LEN
    ));
    drop(lab);
    Ok(())
}
