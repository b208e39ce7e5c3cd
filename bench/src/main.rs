//! `cargo xtask bench`: measures the load balancer and prints one table,
//! also written as markdown to `target/bench/report.md`. Needs root.
//!
//! 1. Per-packet cost of each packet class through `BPF_PROG_TEST_RUN`,
//!    beside two baseline programs, on one pinned CPU ([`prog`]).
//! 2. Maglev build time and the time to apply a large configuration ([`apply`]).

mod apply;
mod prog;
mod report;

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
    /// Where to write the markdown report.
    #[arg(long, default_value = "target/bench/report.md")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench needs root: it makes network namespaces and loads XDP programs");
    }
    let prefix = format!("lbbench-{}", std::process::id());
    let mut report = Report {
        machine: report::machine(),
        ..Report::default()
    };
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

    report.notes.push(
        "Per-packet figures are kernel-timed averages over the repetitions of one BPF_PROG_TEST_RUN, on one pinned CPU; between runs of the bench they move by about ±10-15 ns on a 2-vCPU VM, so compare each row with the baselines of the same run (the ratio column), not with another run.".into(),
    );
    report
        .write(&cli.out)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    println!("\n{}", report.markdown());
    println!("written to {}", cli.out.display());
    Ok(())
}
