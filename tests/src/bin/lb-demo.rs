//! `cargo xtask demo`: a namespace lab with three backends running real HTTP
//! servers behind the XDP load balancer; sends real requests, prints how many
//! each backend served and the balancer's counters, then removes the lab.
//! With `LB_DEMO_NAT=1` (`cargo xtask demo --nat`) the VIP is in
//! `mode = "nat"`: backends with no VIP, no decapsulation program and no
//! sysctl changes, servers on their own address and port 8080.

use std::collections::BTreeMap;

use anyhow::Context as _;
use lb_common::Outcome;
use lb_tests::lab::{BACKENDS, Lab, Mode, NAT_PORT, Options, VIP};
use lb_userspace::dataplane::stats::StatsReader;

const REQUESTS: usize = 300;

fn main() -> anyhow::Result<()> {
    println!(
        "building the lab: client, load balancer, {} backends on a bridge (namespaces lbdemo-*)",
        BACKENDS.len()
    );
    let nat = std::env::var_os("LB_DEMO_NAT").is_some();
    let options = Options {
        nat: nat.then_some("nat"),
        ..Options::default()
    };
    let mut lab = Lab::start_with("lbdemo", Mode::Native, options).context("starting the lab")?;
    if nat {
        println!(
            "mode = \"nat\": backends carry no VIP, run no decapsulation program and keep the kernel's settings; their servers listen on their own address, port {NAT_PORT}"
        );
    }
    println!(
        "lb run is up on {} (native XDP); sending {REQUESTS} HTTP requests to {VIP}:80, one connection each",
        lab.lb_iface
    );
    let results = lab.requests(REQUESTS, None);
    let mut served: BTreeMap<String, usize> =
        BACKENDS.iter().map(|(n, _)| (n.to_string(), 0)).collect();
    let mut failed = 0;
    for r in &results {
        match r {
            Some(name) => *served.entry(name.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    println!("\nrequests served per backend:");
    for ((name, count), (_, addr)) in served.iter().zip(BACKENDS) {
        println!("  {name} ({addr}): {count:>4}  {}", "#".repeat(count / 5));
    }
    println!("  failed:            {failed:>4}");

    let stats = StatsReader::from_pins(&lab.pin_dir()).context("reading the pinned counters")?;
    println!("\nload balancer counters (packets, bytes):");
    for outcome in Outcome::ALL {
        let c = stats.outcome(outcome);
        if c.packets > 0 {
            println!("  {:<22} {:>8} {:>10}", outcome.name(), c.packets, c.bytes);
        }
    }
    for event in lb_common::ConnEvent::ALL {
        let c = stats.conn(event);
        println!("  {:<22} {:>8} {:>10}", event.name(), c.packets, c.bytes);
    }
    if nat {
        for event in lb_common::NatEvent::ALL {
            println!("  {:<22} {:>8}", event.name(), stats.nat_event(event));
        }
    }
    lab.stop_agent();
    println!("\nthe agent's last words (per VIP and per backend counters):");
    for line in lab
        .agent_log()
        .lines()
        .filter(|l| l.contains("VIP \"") || l.contains("backend 10.") || l.contains("detached"))
    {
        println!("  {}", line.split("] ").nth(1).unwrap_or(line));
    }
    drop(lab);
    println!("\nlab removed");
    if failed > 0 {
        anyhow::bail!("{failed} of {REQUESTS} requests failed");
    }
    Ok(())
}
