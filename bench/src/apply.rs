//! Control-plane timings: Maglev table builds, and applying a large
//! configuration (`Balancer::new`) to the maps of a loaded object.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_userspace::{
    balancer::Balancer,
    config::Config,
    dataplane::{maps::AyaMaps, object},
    maglev::{self, MaglevBackend},
};

use crate::{prog::median, report::Report};

/// Maglev table size of every measurement (the agent's default prime).
const TABLE_SIZE: u32 = 65537;

/// Time of one Maglev build for each backend count, median of `runs`.
///
/// # Errors
/// Never; `Result` for symmetry with the other parts.
pub fn maglev(runs: usize, report: &mut Report) -> anyhow::Result<()> {
    for n in [10u32, 100, 1000] {
        let names: Vec<[u8; 4]> = (0..n)
            .map(|i| Ipv4Addr::new(10, 42, (i >> 8) as u8, i as u8).octets())
            .collect();
        let backends: Vec<MaglevBackend<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| MaglevBackend {
                id: i as u32,
                name,
                weight: 1,
            })
            .collect();
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let table = maglev::build(&backends, TABLE_SIZE);
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(table.len(), TABLE_SIZE as usize);
        }
        report.row(
            "control",
            format!("Maglev build, M = {TABLE_SIZE}, {n} backends"),
            format!("{:.2} ms", median(&mut samples)),
            "",
            format!("median of {runs}; single thread, not pinned"),
        );
    }
    Ok(())
}

/// A configuration of `vips` TCP VIPs with `per_vip` backends each.
fn big_config(vips: u32, per_vip: u32) -> String {
    let mut s = format!("[maglev]\ntable_size = {TABLE_SIZE}\nmax_vips = {vips}\n");
    for v in 0..vips {
        let _ = write!(
            s,
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"10.41.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            v >> 8,
            v & 0xff
        );
        for b in 0..per_vip {
            let id = v * per_vip + b;
            let _ = write!(
                s,
                "  [[vip.backend]]\n  address = \"10.42.{}.{}\"\n",
                id >> 8,
                id & 0xff
            );
        }
    }
    s
}

/// Parses and validates, then applies a config of `vips` x `per_vip`;
/// (parse time, apply time).
fn apply_once(vips: u32, per_vip: u32) -> anyhow::Result<(Duration, Duration)> {
    let text = big_config(vips, per_vip);
    let start = Instant::now();
    let config = Config::parse(&text, "bench")?.config;
    let parse = start.elapsed();
    let regions = config.sizing.table_regions;
    let mut ebpf = object::load_object(&config).context("loading the object")?;
    let maps = AyaMaps::take(&mut ebpf)?;
    let start = Instant::now();
    let balancer = Balancer::new(maps, &config, Ipv4Addr::new(10, 40, 0, 2), regions)?;
    let apply = start.elapsed();
    drop(balancer);
    Ok((parse, apply))
}

/// Time to apply 1000 VIPs x 10 backends (Maglev builds and every map write)
/// to the maps of a freshly loaded object. When a probe of 10 VIPs says the
/// full run would take longer than `budget`, measures fewer VIPs and scales.
///
/// # Errors
/// Loading the object or a map write fails.
pub fn apply(budget: Duration, report: &mut Report) -> anyhow::Result<()> {
    let (full, per_vip) = (1000u32, 10u32);
    let (_, probe) = apply_once(10, per_vip)?;
    let estimate = probe * (full / 10);
    let vips = if estimate <= budget {
        full
    } else {
        // Enough VIPs to take about a tenth of the budget, at least 10.
        let fit = (budget.as_secs_f64() / 10.0 / (probe.as_secs_f64() / 10.0)) as u32;
        fit.clamp(10, full)
    };
    let (parse, took) = apply_once(vips, per_vip)?;
    let scale = f64::from(full) / f64::from(vips);
    let note = if vips == full {
        "Balancer::new on the maps of a loaded object: 1000 Maglev builds + map writes; one run"
            .to_string()
    } else {
        format!(
            "measured {vips} VIPs and scaled x{scale:.0} (map writes are one system call per entry); one run"
        )
    };
    report.row(
        "control",
        format!("apply config: {full} VIPs x {per_vip} backends"),
        format!("{:.2} s", took.as_secs_f64() * scale),
        "",
        note,
    );
    report.row(
        "control",
        format!("parse + validate that config ({vips} VIPs)"),
        format!("{:.1} ms", parse.as_secs_f64() * 1e3),
        "",
        "toml + validation",
    );
    Ok(())
}
