//! `cargo xtask bench`: measures the load balancer and prints one table,
//! also written as markdown to `target/bench/report.md`. Needs root.
//!
//! 1. Per-packet cost of each packet class through `BPF_PROG_TEST_RUN`,
//!    beside two baseline programs, on one pinned CPU ([`prog`]).
//! 2. Maglev build time and the time to apply a large configuration ([`apply`]).
//! 3. In a namespace lab ([`lab`]): HTTP with wrk through the balancer and
//!    through HAProxy on the same backends ([`net`]), and the UDP packet rate
//!    through `xdp_lb` against `bench_drop` on the same veth, from a
//!    live-frames generator ([`livegen`]).

mod apply;
mod host;
mod lab;
mod livegen;
mod net;
mod prog;
mod report;
mod svg;
mod traffic;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::report::Report;

#[derive(Parser)]
#[command(about = "Benchmark the XDP load balancer (needs root)")]
struct Cli {
    /// Fewer repetitions and shorter runs: a smoke test of the bench itself.
    #[arg(long)]
    quick: bool,
    /// Where to write the markdown report (default: `bench/report.md` in the
    /// cargo target directory this binary was built in, i.e. beside its
    /// `release/` or `debug/` directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the namespace lab (packet rate and HTTP).
    #[arg(long)]
    no_lab: bool,
    /// The `lb` binary the lab runs (default: `$LB_BIN`, else `lb` beside this binary).
    #[arg(long)]
    lb_bin: Option<PathBuf>,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// Roles the bench runs itself in for the lab.
#[derive(clap::Subcommand)]
enum Helper {
    /// A backend's HTTP server (runs until killed).
    #[command(hide = true)]
    ServeHttp {
        /// TCP port.
        #[arg(long)]
        port: u16,
    },
    /// Draw the SVG of a kept report.md (no bench run, no root).
    #[command(hide = true)]
    Svg {
        /// The markdown report.
        #[arg(long)]
        report: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        Some(Helper::ServeHttp { port }) => return traffic::serve_http(port),
        Some(Helper::Svg { report, out }) => {
            let markdown = std::fs::read_to_string(&report)
                .with_context(|| format!("reading {}", report.display()))?;
            return svg::write(&svg::bars_from_markdown(&markdown), &out);
        }
        None => {}
    }
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench needs root: it makes network namespaces and loads XDP programs");
    }
    let prefix = format!("lbbench-{}", std::process::id());
    let mut report = Report {
        machine: report::machine(),
        ..Report::default()
    };
    report.machine.push(
        "noisy: every lab row (veth, HTTP: client, bridge, LB and backends share the cores, with whatever else runs); per-packet rows move by about 10-15 ns between runs (read the ratio to the baseline of the same run); Maglev and apply rows are wall-clock times of an unpinned thread".into(),
    );
    for line in &report.machine {
        println!("{line}");
    }
    let plan = if cli.quick {
        prog::Plan {
            repeat: 10_000,
            runs: 3,
        }
    } else {
        prog::Plan {
            repeat: 200_000,
            runs: 7,
        }
    };

    println!("\n1. per-packet cost through BPF_PROG_TEST_RUN");
    prog::bench(&prefix, plan, &mut report).context("per-packet bench")?;
    println!("\n2. control plane");
    apply::maglev(if cli.quick { 3 } else { 9 }, &mut report)?;
    apply::apply(
        Duration::from_secs(if cli.quick { 10 } else { 60 }),
        &mut report,
    )
    .context("config apply bench")?;

    if !cli.no_lab {
        println!("\n3. namespace lab");
        let lb_bin = match cli
            .lb_bin
            .or_else(|| std::env::var_os("LB_BIN").map(PathBuf::from))
        {
            Some(path) => path,
            None => std::env::current_exe()?
                .parent()
                .context("binary directory")?
                .join("lb"),
        };
        let durations = if cli.quick {
            net::Durations {
                flood: Duration::from_secs(2),
                wrk: Duration::from_secs(2),
                connections: 16,
            }
        } else {
            net::Durations {
                flood: Duration::from_secs(5),
                wrk: Duration::from_secs(8),
                connections: 32,
            }
        };
        net::bench(&prefix, &lb_bin, durations, &mut report).context("lab bench")?;
    }

    report.notes.push(
        "Per-packet figures are kernel-timed averages over the repetitions of one BPF_PROG_TEST_RUN, on one pinned CPU; between runs of the bench they move by about ±10-15 ns on a 2-vCPU VM, so compare each row with the baselines of the same run (the ratio column), not with another run.".into(),
    );
    let out = match cli.out {
        Some(out) => out,
        None => default_out()?,
    };
    report
        .write(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    let picture = out.with_extension("svg");
    svg::write(&svg::bars_from_rows(&report.rows), &picture)?;
    println!("\n{}", report.markdown());
    println!("written to {} and {}", out.display(), picture.display());
    Ok(())
}

/// `bench/report.md` in the target directory this binary was built in
/// (`<target>/release/lb-bench` -> `<target>/bench/report.md`), so that
/// `CARGO_TARGET_DIR` is respected.
fn default_out() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(std::path::Path::parent)
        .context("the bench binary is not in a cargo target directory")?;
    Ok(target.join("bench/report.md"))
}
