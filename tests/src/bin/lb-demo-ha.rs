//! `cargo xtask demo --ha`: scale-out. A router namespace runs BIRD 2 with
//! ECMP; two load balancer nodes run `lb run` and announce the VIP over
//! BGP; three backends run real HTTP servers. A client sends requests
//! through the router while one node is stopped with SIGTERM in the
//! middle; prints the requests per node and per backend and the failures
//! (expected 0), then removes the lab.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_common::ConnEvent;
use lb_tests::{
    bgp_lab::{AGENT_STOP_LIMIT, BgpLab, NODES},
    lab::{BACKENDS, VIP},
};
use lb_userspace::dataplane::stats::StatsReader;

/// Length of the traffic run; the node is stopped halfway.
const RUN: Duration = Duration::from_secs(10);
/// Requests per curl batch.
const BATCH: usize = 20;

/// New flows (connection-table misses) node `i` has seen, read from its
/// pinned counters; `None` once it has detached.
fn new_flows(lab: &BgpLab, i: usize) -> Option<u64> {
    let stats = StatsReader::from_pins(&lab.pin_dir(i)).ok()?;
    Some(stats.conn(ConnEvent::Miss).packets)
}

fn main() -> anyhow::Result<()> {
    println!(
        "building the lab: router (BIRD 2, ECMP), nodes lb1 and lb2 (lb run with [bgp]), {} backends, a client behind the router (namespaces lbha-*)",
        BACKENDS.len()
    );
    let mut lab = BgpLab::build("lbha").context("building the lab")?;
    let started = Instant::now();
    for i in 0..NODES.len() {
        lab.start_node(i, &[]).context("starting a node")?;
    }
    let both = [NODES[0].1, NODES[1].1];
    let Some(_) = lab.wait_next_hops(VIP, &both, Duration::from_secs(30)) else {
        bail!(
            "the router did not learn {VIP} from both nodes within 30 s: {:?}\n{}",
            lab.next_hops(VIP),
            lab.node_log(0)
        );
    };
    println!(
        "the router learned {VIP} from both nodes in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        lab.router_birdc(&["show", "route", &format!("{VIP}/32")])
            .lines()
            .skip(1)
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let base = [
        new_flows(&lab, 0).unwrap_or(0),
        new_flows(&lab, 1).unwrap_or(0),
    ];
    let results = Mutex::new(Vec::<Option<String>>::new());
    let done = AtomicBool::new(false);
    // lb1's count, read until it detaches (its pins go with it).
    let last_lb1 = Mutex::new(base[0]);
    println!(
        "sending HTTP requests to {VIP}:80 from the client (one connection each) for {} s; lb1 gets SIGTERM after {} s",
        RUN.as_secs(),
        RUN.as_secs() / 2
    );
    thread::scope(|scope| {
        let lab = &lab;
        scope.spawn(|| {
            let deadline = Instant::now() + RUN;
            while Instant::now() < deadline {
                let batch = lab.requests(BATCH);
                results.lock().expect("results").extend(batch);
            }
            done.store(true, Ordering::Relaxed);
        });
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(n) = new_flows(lab, 0) {
                    *last_lb1.lock().expect("count") = n;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        thread::sleep(RUN / 2);
        lab.signal_node(0);
        match lab.wait_next_hops(VIP, &[NODES[1].1], Duration::from_secs(5)) {
            Some(t) => println!(
                "lb1 got SIGTERM: its route left the router's table after {:.2} s; lb1 forwards for withdraw_delay (2 s) more, then detaches",
                t.as_secs_f64()
            ),
            None => println!("lb1 got SIGTERM: its route was NOT withdrawn within 5 s"),
        }
    });
    let exited = lab.wait_node_exit(0, AGENT_STOP_LIMIT);
    let lb2 = new_flows(&lab, 1).unwrap_or(0).saturating_sub(base[1]);
    let lb1 = last_lb1
        .into_inner()
        .expect("count")
        .saturating_sub(base[0]);
    let results = results.into_inner().expect("results");
    let mut per_backend: BTreeMap<String, usize> =
        BACKENDS.iter().map(|(n, _)| (n.to_string(), 0)).collect();
    let mut failed = 0;
    for r in &results {
        match r {
            Some(name) => *per_backend.entry(name.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    println!(
        "\n{} requests; per node (flows new to its connection table: a client port reused while its entry lives counts once):",
        results.len()
    );
    for ((name, addr), n) in NODES.iter().zip([lb1, lb2]) {
        println!("  {name} ({addr}): {n:>5}");
    }
    println!("per backend:");
    for ((name, count), (_, addr)) in per_backend.iter().zip(BACKENDS) {
        println!("  {name} ({addr}): {count:>5}");
    }
    println!("failed: {failed}");
    println!(
        "lb1 {}",
        if exited {
            "exited after withdrawing its route"
        } else {
            "did not exit"
        }
    );
    lab.stop_node(1);
    drop(lab);
    println!("\nlab removed");
    if failed > 0 {
        bail!("{failed} of {} requests failed", results.len());
    }
    Ok(())
}
