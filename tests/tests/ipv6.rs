//! IPv6 and GUE end to end, in a dual-stack lab: HTTP to an
//! IPv6 VIP over three IPv6 backends, an IPv4 VIP over IPv6 backends
//! (IPv4-in-IPv6), the IPv6 source filter, and the same traffic with GUE
//! over IPv4 and over IPv6.

use std::{collections::HashMap, time::Duration};

use lb_tests::lab::{
    BACKENDS, Lab, Mode, OUTSIDE_ADDR_V6, Options, VIP_4OVER6, VIP_V6, if_counters,
};

/// Requests per run.
const REQUESTS: usize = 300;

/// Per-backend counts of `results`, and the failures.
fn tally(results: &[Option<String>]) -> (HashMap<String, usize>, usize) {
    let mut per = HashMap::new();
    let mut failed = 0;
    for r in results {
        match r {
            Some(b) => *per.entry(b.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    (per, failed)
}

/// `REQUESTS` requests to `vip`: all succeed, every backend serves some,
/// none more than half; prints the counts.
fn spread(lab: &Lab, what: &str, vip: &str) -> HashMap<String, usize> {
    let (per, failed) = tally(&lab.requests_to(vip, REQUESTS, None));
    println!("{what}: {per:?}, {failed} failed");
    assert_eq!(failed, 0, "{what}: {per:?}\n{}", lab.agent_log());
    assert_eq!(
        per.len(),
        BACKENDS.len(),
        "{what}: every backend serves: {per:?}"
    );
    assert!(
        per.values().all(|&n| n <= REQUESTS / 2),
        "{what}: none more than half: {per:?}"
    );
    per
}

/// The packets counted for `outcome` by the agent (from `/status`).
fn outcome(lab: &Lab, outcome: &str) -> u64 {
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    status["outcomes"][outcome]["packets"].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ipv6_vips_ipv4_over_ipv6_and_gue() {
    lb_tests::require_root();
    let mut lab = Lab::start_with(
        "lbv6",
        Mode::Generic,
        Options {
            ipv6: true,
            ..Options::default()
        },
    )
    .expect("lab starts");
    let v6 = format!("[{VIP_V6}]");
    // Wait until the IPv6 VIP serves (neighbours of the IPv6 backends).
    let served = lb_tests::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        lab.requests_to(&v6, 1, None)[0].clone()
    });
    assert!(served.is_some(), "{}", lab.agent_log());
    // IPv6 backends need IPv6 forwarding for the next-hop lookups; the
    // agent turns it on with Router Advertisements still accepted.
    let lb_iface = lab.lb_iface.clone();
    let conf = |key: &str| format!("net.ipv6.conf.{lb_iface}.{key}");
    assert_eq!(lab.lb().sysctl_value(&conf("forwarding")), "1");
    assert_eq!(lab.lb().sysctl_value(&conf("accept_ra")), "2");

    // IPv6 VIP over IPv6 backends; replies bypass the load balancer.
    let before = if_counters(lab.lb(), &lab.lb_iface).expect("counters");
    spread(&lab, "IPv6 VIP, IPv6-in-IPv6", &v6);
    let after = if_counters(lab.lb(), &lab.lb_iface).expect("counters");
    let sent = after.tx_bytes - before.tx_bytes;
    let bodies = (REQUESTS * lb_tests::lab::BODY_LEN) as u64;
    println!("load balancer sent {sent} bytes for {bodies} bytes of bodies");
    assert!(sent < bodies / 2, "replies bypass the load balancer (DSR)");

    // Status and metrics name the IPv6 VIP and backends; the backends
    // are healthy by their IPv6 health checks (tcp, every 500 ms).
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let web6 = status["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "web6"))
        .expect("web6 in /status");
    assert_eq!(web6["address"], format!("[{VIP_V6}]:80"), "{web6}");
    let metrics = lab
        .api_get("/metrics", Duration::from_secs(2))
        .expect("/metrics");
    for backend in lb_tests::lab::BACKENDS_V6 {
        let label = format!("backend=\"{backend}\"");
        let healthy = metrics.lines().any(|l| {
            l.starts_with("lb_backend_healthy{")
                && l.contains("vip=\"web6\"")
                && l.contains(&label)
                && l.ends_with(" 1")
        });
        assert!(healthy, "{backend} healthy in /metrics:\n{metrics}");
        let checked = metrics.lines().any(|l| {
            l.starts_with("lb_health_check_duration_seconds_count{")
                && l.contains(&label)
                && !l.ends_with(" 0")
        });
        assert!(checked, "{backend} health-checked:\n{metrics}");
    }

    // From 2001:db8::7 nothing connects; the filter counts it.
    let dropped = outcome(&lab, "drop_source_filter");
    let outside = lab.requests_to(&v6, 3, Some(OUTSIDE_ADDR_V6));
    assert!(outside.iter().all(Option::is_none), "{outside:?}");
    let now = outcome(&lab, "drop_source_filter");
    println!("drop_source_filter {dropped} -> {now}");
    assert!(now > dropped);

    // An IPv4 VIP over the IPv6 backends.
    spread(&lab, "IPv4 VIP, IPv4-in-IPv6", VIP_4OVER6);

    // GUE, over IPv4 (the IPv4 VIP's IPv4 backends) and over IPv6.
    let echo: Vec<(&str, u32)> = BACKENDS.iter().map(|b| (b.0, 1)).collect();
    let text = lab.config_text(&echo, "").replacen(
        "\n[maglev]",
        "\n[encap]\nkind = \"gue\"\n\n[maglev]",
        1,
    );
    let reloads = lab.log_count("configuration reloaded");
    lab.write_config(&text).expect("write config");
    assert!(lab.wait_for_log(
        "configuration reloaded",
        reloads + 1,
        Duration::from_secs(10)
    ));
    let log = lab.agent_log();
    let reload = log
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .expect("reload line");
    assert!(
        reload.contains("other map writes 1"),
        "the encapsulation switched (globals written): {reload}"
    );
    spread(&lab, "IPv4 VIP, GUE over IPv4", lb_tests::lab::VIP);
    spread(&lab, "IPv6 VIP, GUE over IPv6", &v6);

    // The data plane outlives its agent: killed (SIGKILL leaves the pins),
    // xdp_lb still hands IPv6 packets to xdp_lb_v6 through the pinned
    // program array; a new agent adopts the data plane, and fills the
    // array with its own xdp_lb_v6 before anything else.
    lab.kill_agent();
    spread(&lab, "IPv6 VIP, no agent running", &v6);
    let adopted = lab.log_count("adopted the data plane");
    lab.start_agent(&[]).expect("the agent starts again");
    assert!(
        lab.wait_for_log(
            "adopted the data plane",
            adopted + 1,
            Duration::from_secs(10)
        ),
        "{}",
        lab.agent_log()
    );
    spread(&lab, "IPv6 VIP, adopted", &v6);
    spread(&lab, "IPv4 VIP, adopted", lb_tests::lab::VIP);

    // Detached (SIGTERM), the agent puts back the IPv6 settings the first
    // agent found, across the kill and the adoption in between.
    lab.stop_agent();
    assert_eq!(lab.lb().sysctl_value(&conf("forwarding")), "0");
    assert_eq!(lab.lb().sysctl_value(&conf("accept_ra")), "1");
    assert!(
        lab.agent_log().contains("restored net.ipv6.conf"),
        "{}",
        lab.agent_log()
    );
}
