//! BGP announcement with real BIRDs: a router running BIRD 2
//! with ECMP peers with two nodes running `lb run`. In one lab, in order:
//!
//! 1. the router learns each VIP address from both nodes (two next hops in
//!    its kernel table) within 30 s; a reload with a `[bgp]` that cannot
//!    work is refused whole, BIRD and the announcements kept;
//! 2. when the only backend of the only VIP on an address fails, both
//!    nodes withdraw that address within fall x interval + 3 s while the
//!    other address stays; it is announced again within rise x interval +
//!    5 s of recovery;
//! 3. an agent restart with --keep-attached leaves the router's routes
//!    (and its session) in place throughout;
//! 4. 20 long-lived TCP connections spread over both nodes survive SIGTERM
//!    of one node, whose routes are withdrawn within 5 s.
//!
//! The times are printed (run with --nocapture to see them).

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use lb_tests::{
    bgp_lab::{
        AGENT_STOP_LIMIT, BgpLab, CHECK_INTERVAL, FALL, NODES, RISE, ROUTER_AS, SOLO_VIP,
        WITHDRAW_DELAY,
    },
    flows::LongLived,
    lab::{ROUTER_ADDR, VIP},
};

const CONNECTIONS: usize = 20;

fn both() -> [&'static str; 2] {
    [NODES[0].1, NODES[1].1]
}

/// Packets node `i` forwarded for VIP `name`, from its `/status`.
fn vip_packets(lab: &BgpLab, i: usize, name: &str) -> u64 {
    lab.status(i)
        .and_then(|s| {
            s["vips"].as_array()?.iter().find(|v| v["name"] == name)?["traffic"]["packets"].as_u64()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nodes_announce_vips_health_aware_and_leave_without_breaking_connections() {
    lb_tests::require_root();
    let mut lab = BgpLab::build("lbbgp").expect("lab builds");
    let mut figures: Vec<String> = Vec::new();

    // 1. Learn.
    let started = Instant::now();
    // lb1 stops for good in step 4; lb2 restarts in step 3.
    lab.start_node(0, &[]).expect("agent starts");
    lab.start_node(1, &["--keep-attached"])
        .expect("agent starts");
    for vip in [VIP, SOLO_VIP] {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        assert!(
            lab.wait_next_hops(vip, &both(), left).is_some(),
            "the router did not learn {vip} from both nodes within 30 s: next hops {:?}\nrouter: {}\nlb1 log:\n{}",
            lab.next_hops(vip),
            lab.router_birdc(&["show", "protocols", "all"]),
            lab.node_log(0)
        );
    }
    let learn = started.elapsed();
    figures.push(format!(
        "learn: both VIP addresses with two next hops {:.2} s after the agents started",
        learn.as_secs_f64()
    ));
    // What the nodes show of it.
    // (The agents read BIRD every second: wait for both to have read it.)
    let mut metrics = String::new();
    lb_tests::wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        metrics = lab.api_get(0, "/metrics").unwrap_or_default();
        let second = lab
            .status(1)
            .is_some_and(|s| s["bgp"]["peers"][0]["state"] == "Established");
        (second && metrics.contains("lb_bgp_session_up{peer=\"10.30.0.1\"} 1")).then_some(())
    });
    for line in [
        format!("lb_bgp_session_up{{peer=\"{ROUTER_ADDR}\"}} 1"),
        format!("lb_bgp_announced{{address=\"{VIP}\"}} 1"),
        format!("lb_bgp_announced{{address=\"{SOLO_VIP}\"}} 1"),
        "lb_bgp_speaker_up 1".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    // The Grafana dashboard's BGP panels query only metrics a node serves.
    let unserved: Vec<String> =
        lb_tests::dashboard::unserved(lb_tests::dashboard::DASHBOARD, &metrics)
            .into_iter()
            .filter(|name| name.starts_with("lb_bgp_"))
            .collect();
    assert!(
        unserved.is_empty(),
        "packaging/grafana/lb-dashboard.json queries {unserved:?}, not in /metrics:\n{metrics}"
    );
    let status = lab.status(1).expect("/status");
    assert_eq!(
        status["bgp"]["peers"][0]["state"], "Established",
        "{status}"
    );
    let table = lab
        .ns(NODES[0].0)
        .command(
            &lb_tests::lab::lb_binary()
                .expect("lb")
                .display()
                .to_string(),
        )
        .args(["status"])
        .output()
        .expect("lb status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("BGP: BIRD running") && table.contains("Established"),
        "{table}"
    );

    // 1b. A reload with a [bgp] that cannot work (a link-local peer: no
    // interface to reach it) is refused whole; BIRD, its session and the
    // announcements stay.
    let session_before = lab
        .router_session_since(NODES[0].0)
        .expect("router session");
    let bird_before = lab.node_bird_pid(0).expect("lb1's BIRD");
    let good = lab.config_text();
    fs::write(
        lab.config_path(0),
        format!("{good}\n  [[bgp.peer]]\n  address = \"fe80::1\"\n  remote_as = {ROUTER_AS}\n"),
    )
    .expect("config written");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reloads = serde_json::Value::Null;
    let mut kept = true;
    while Instant::now() < deadline {
        for vip in [VIP, SOLO_VIP] {
            kept &= lab.next_hops(vip).len() == 2;
        }
        reloads = lab.status(0).unwrap_or_default()["reloads"].clone();
        if reloads["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("fe80::1"))
        {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(reloads["rejected"].as_u64() >= Some(1), "{reloads}");
    assert!(
        reloads["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("fe80::1 is an IPv6 link-local address")),
        "{reloads}"
    );
    // The announcements and the session stay (BIRD reads every second).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for vip in [VIP, SOLO_VIP] {
            kept &= lab.next_hops(vip).len() == 2;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(kept, "both VIP addresses kept both next hops");
    assert_eq!(
        lab.node_bird_pid(0),
        Some(bird_before),
        "the same BIRD runs"
    );
    assert_eq!(
        lab.router_session_since(NODES[0].0),
        Some(session_before),
        "the router's session with lb1 never went down"
    );
    let peers = lab.status(0).unwrap_or_default()["bgp"]["peers"].clone();
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{peers}");
    fs::write(lab.config_path(0), &good).expect("config restored");
    figures.push(format!(
        "bad [bgp] reload: refused ({}); BIRD pid {bird_before}, the session and both next hops kept",
        reloads["last_error"].as_str().unwrap_or_default()
    ));

    // 2. Withdraw on health, announce on recovery.
    let fall_limit = CHECK_INTERVAL * FALL + Duration::from_secs(3);
    let failed_at = Instant::now();
    lab.stop_solo_server();
    let mut kept = true;
    let mut withdrawn = None;
    while failed_at.elapsed() < fall_limit + Duration::from_secs(2) {
        kept &= lab.next_hops(VIP).len() == 2;
        if lab.next_hops(SOLO_VIP).is_empty() {
            withdrawn = Some(failed_at.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let withdrawn = withdrawn.unwrap_or_else(|| {
        panic!(
            "{SOLO_VIP} still routed {:?} after its backend failed; lb1 log:\n{}",
            lab.next_hops(SOLO_VIP),
            lab.node_log(0)
        )
    });
    assert!(
        withdrawn <= fall_limit,
        "{SOLO_VIP} withdrawn after {withdrawn:?}, more than fall x interval + 3 s = {fall_limit:?}"
    );
    assert!(kept, "{VIP} (healthy VIPs) kept both next hops throughout");
    // (The agent publishes its state after BIRD has taken the change.)
    let solo_now = || {
        let status = lab.status(0).unwrap_or_default();
        status["bgp"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["address"] == SOLO_VIP))
            .cloned()
            .unwrap_or_default()
    };
    let solo = lb_tests::wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
        Some(solo_now()).filter(|solo| solo["announced"] == false)
    })
    .unwrap_or_else(solo_now);
    assert_eq!(solo["announced"], false, "{solo}");
    assert!(
        solo["reason"]
            .as_str()
            .is_some_and(|r| r.contains("solo: 0 of 1 backends usable (1 unhealthy)")),
        "{solo}"
    );
    figures.push(format!(
        "withdraw on health: {SOLO_VIP} gone from the router {:.2} s after its only backend failed (limit {:.1} s)",
        withdrawn.as_secs_f64(),
        fall_limit.as_secs_f64()
    ));
    let rise_limit = CHECK_INTERVAL * RISE + Duration::from_secs(5);
    let recovered_at = Instant::now();
    lab.start_solo_server().expect("solo server starts");
    let back = lab
        .wait_next_hops(SOLO_VIP, &both(), rise_limit)
        .unwrap_or_else(|| {
            panic!(
                "{SOLO_VIP} not announced again within {rise_limit:?}: {:?}",
                lab.next_hops(SOLO_VIP)
            )
        });
    let _ = recovered_at;
    figures.push(format!(
        "re-announce: {SOLO_VIP} back with two next hops {:.2} s after its backend's server restarted (limit {:.1} s)",
        back.as_secs_f64(),
        rise_limit.as_secs_f64()
    ));

    // 3. Agent restart with --keep-attached: routes and session stay.
    let session_before = lab
        .router_session_since(NODES[1].0)
        .expect("router session");
    let bird_before = lab.node_bird_pid(1).expect("lb2's BIRD");
    let restart = Instant::now();
    lab.stop_node(1);
    assert!(
        lab.node_log(1).contains("BIRD keeps running"),
        "{}",
        lab.node_log(1)
    );
    lab.start_node(1, &["--keep-attached"])
        .expect("agent starts again");
    let mut gaps = 0;
    let mut samples = 0;
    while restart.elapsed() < Duration::from_secs(20) {
        samples += 1;
        for vip in [VIP, SOLO_VIP] {
            if lab.next_hops(vip).len() != 2 {
                gaps += 1;
            }
        }
        if lab.node_log(1).contains("adopted BIRD") && restart.elapsed() > Duration::from_secs(3) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.node_log(1).contains("adopted BIRD"),
        "the new agent adopted the running BIRD; log:\n{}",
        lab.node_log(1)
    );
    assert_eq!(gaps, 0, "the router lost a next hop during the restart");
    assert_eq!(
        lab.node_bird_pid(1),
        Some(bird_before),
        "the same BIRD runs"
    );
    assert_eq!(
        lab.router_session_since(NODES[1].0),
        Some(session_before.clone()),
        "the router's session with lb2 never went down"
    );
    figures.push(format!(
        "--keep-attached restart: both VIP addresses kept two next hops in {samples} samples over {:.1} s; BIRD pid {bird_before} and the router's session (up since {}) kept",
        restart.elapsed().as_secs_f64(),
        session_before.1
    ));

    // 4. SIGTERM of one node under 20 long-lived connections.
    let _client = lab.client().enter().expect("enter the client's namespace");
    let echo_before = [vip_packets(&lab, 0, "echo"), vip_packets(&lab, 1, "echo")];
    let mut flows = LongLived::open(CONNECTIONS).expect("long-lived connections");
    thread::sleep(Duration::from_secs(2));
    let carried = [
        vip_packets(&lab, 0, "echo") - echo_before[0],
        vip_packets(&lab, 1, "echo") - echo_before[1],
    ];
    assert!(
        carried.iter().all(|&p| p > 0),
        "the connections are spread over both nodes (ECMP): echo packets per node {carried:?}"
    );
    let bird_lb1 = lab.node_bird_pid(0).expect("lb1's BIRD");
    let stop = Instant::now();
    lab.signal_node(0);
    let gone = lab
        .wait_next_hops(VIP, &[NODES[1].1], Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "lb1's route to {VIP} not withdrawn within 5 s of SIGTERM: {:?}",
                lab.next_hops(VIP)
            )
        });
    assert!(lab.wait_node_exit(0, AGENT_STOP_LIMIT), "lb1 exits");
    let exited = stop.elapsed();
    assert!(
        exited >= WITHDRAW_DELAY,
        "lb1 kept forwarding for withdraw_delay ({WITHDRAW_DELAY:?}) before detaching: exited after {exited:?}"
    );
    // The withdraw came first, before the agent stopped serving (its
    // counters are logged once the health checks and next-hop cache end).
    let log = lab.node_log(0);
    let withdrew = log.find("withdrew every VIP address");
    let served = log.find("counters (packets)");
    assert!(
        withdrew.is_some() && served.is_some() && withdrew < served,
        "lb1 withdrew before it stopped serving; log:\n{log}"
    );
    // Its BIRD went with it (a stop without --keep-attached), files too.
    assert!(
        !lab.node_bird_alive(0, bird_lb1),
        "lb1's BIRD (pid {bird_lb1}) still runs after the agent's stop"
    );
    assert!(
        !lab.bird_paths(0).dir().exists(),
        "{} left behind",
        lab.bird_paths(0).dir().display()
    );
    assert_eq!(lab.next_hops(SOLO_VIP), [NODES[1].1.to_string()].into());
    let exchanged = flows.exchanges();
    thread::sleep(Duration::from_secs(3));
    assert!(
        flows.exchanges() > exchanged,
        "the connections go on through lb2"
    );
    flows.finish();
    let survivors = flows.survivors();
    let failures = flows.failures();
    figures.push(format!(
        "withdraw on stop: lb1's next hop gone {:.2} s after SIGTERM; lb1 exited after {:.2} s (withdraw_delay {:?}), its BIRD (pid {bird_lb1}) gone",
        gone.as_secs_f64(),
        exited.as_secs_f64(),
        WITHDRAW_DELAY
    ));
    figures.push(format!(
        "survivors: {survivors}/{CONNECTIONS} long-lived connections (echo packets per node before the stop: lb1 {}, lb2 {}); failures {failures:?}",
        carried[0], carried[1]
    ));

    // 5. Stopping for good under systemd (`lb run --keep-attached`, then
    // `lb detach`): the agent's SIGTERM leaves BIRD and the route; detach
    // stops BIRD (the router withdraws at once), forwards for
    // withdraw_delay, then removes the pins.
    let bird_lb2 = lab.node_bird_pid(1).expect("lb2's BIRD");
    lab.stop_node(1);
    assert!(
        lab.node_bird_alive(1, bird_lb2),
        "an agent run with --keep-attached leaves its BIRD"
    );
    assert_eq!(lab.next_hops(VIP), [NODES[1].1.to_string()].into());
    let config = lab.config_path(1).display().to_string();
    let detach = Instant::now();
    let (ok, out) = lab
        .run_lb(1, &["detach", "--config", &config], AGENT_STOP_LIMIT)
        .expect("lb detach runs");
    let detached = detach.elapsed();
    assert!(ok, "lb detach: {out}");
    assert!(
        lab.next_hops(VIP).is_empty(),
        "lb2's route withdrawn by lb detach: {:?}",
        lab.next_hops(VIP)
    );
    assert!(!lab.node_bird_alive(1, bird_lb2), "lb detach stopped BIRD");
    assert!(!lab.bird_paths(1).dir().exists(), "BIRD's files removed");
    assert!(!lab.pin_dir(1).exists(), "the data plane detached");
    assert!(
        detached >= WITHDRAW_DELAY,
        "lb detach forwarded for withdraw_delay before detaching: {detached:?}"
    );
    figures.push(format!(
        "lb detach after a --keep-attached stop: BIRD (pid {bird_lb2}) stopped, lb2's route gone, pins removed, in {:.2} s (withdraw_delay {WITHDRAW_DELAY:?})",
        detached.as_secs_f64()
    ));
    println!("\nBGP figures:");
    for f in &figures {
        println!("  {f}");
    }
    assert!(
        failures.is_empty(),
        "connections failed (reset, closed or stalled over 1 s): {failures:?}\nlb1 log:\n{}",
        lab.node_log(0)
    );
    assert_eq!(survivors, CONNECTIONS);
}
