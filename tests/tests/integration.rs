//! End to end through the real XDP path: a namespace lab (client, load
//! balancer, three backends with real HTTP servers), `lb run` and `lb decap`
//! as real processes, curl as the client.

use std::{collections::HashMap, thread, time::Duration};

use lb_common::{ConnEvent, ConnValue, FlowKey, MAP_CONNS, Outcome};
use lb_tests::lab::{self, BACKENDS, Lab, Mode, OUTSIDE_ADDR};
use lb_userspace::dataplane::stats::StatsReader;

fn tally(results: &[Option<String>]) -> (usize, HashMap<String, usize>) {
    let mut per_backend = HashMap::new();
    let mut failed = 0;
    for r in results {
        match r {
            Some(name) => *per_backend.entry(name.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    (failed, per_backend)
}

/// `/metrics` of the lab's agent (its API listens on loopback in the LB's
/// namespace).
fn metrics(lab: &Lab) -> String {
    let out = lab
        .lb()
        .command("curl")
        .args(["-s", "--max-time", "2", "http://127.0.0.1:9470/metrics"])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `series` (name and labels as printed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// `lb status` (table, or JSON with `--json`) run in the LB's namespace.
fn lb_status(lab: &Lab, json: bool) -> String {
    let lb = lab::lb_binary().expect("lb");
    let mut cmd = lab.lb().command(&lb.display().to_string());
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("lb status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses the backend rows of `lb status`'s table: address -> (state, weight, packets).
fn status_rows(table: &str) -> HashMap<String, (String, u32, u64)> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[0].starts_with("10.30.0.")).then(|| {
                (
                    f[0].to_string(),
                    (
                        f[1].to_string(),
                        f[2].parse().expect("weight"),
                        f[3].parse().expect("packets"),
                    ),
                )
            })
        })
        .collect()
}

fn end_to_end(prefix: &str, mode: Mode) {
    let mut lab = Lab::start(prefix, mode).expect("lab starts");
    let stats = StatsReader::from_pins(&lab.pin_dir()).expect("pinned counters");

    // A new VIP's SYNs skip the connection table (its flows cannot
    // disagree with its first table).
    assert_eq!(
        sample(&metrics(&lab), "lb_vip_syn_direct{vip=\"web\"}"),
        Some(1.0)
    );

    // The host's IPv6 is left alone: with no IPv6 VIP or backend the agent
    // has no use for IPv6 forwarding, which makes the kernel ignore Router
    // Advertisements (accept_ra = 1) and lose its RA-learned routes.
    let v6_forwarding = format!("net.ipv6.conf.{}.forwarding", lab.lb_iface);
    assert_eq!(
        lab.lb().sysctl_value(&v6_forwarding),
        "0",
        "{v6_forwarding}"
    );
    // Every map is pinned, the flow caches and the program array too (the
    // documents say so).
    for map in [lb_common::MAP_FLOW_CACHE, lb_common::MAP_PROGS] {
        assert!(lab.pin_dir().join(map).exists(), "{map} pinned");
    }

    // 1. Spread: 300 requests, each a new connection (a new flow).
    let client_before = lab::if_counters(lab.client(), "eth0").expect("client counters");
    let lb_before = lab::if_counters(lab.lb(), &lab.lb_iface).expect("lb counters");
    let results = lab.requests(300, None);
    let client_after = lab::if_counters(lab.client(), "eth0").expect("client counters");
    let lb_after = lab::if_counters(lab.lb(), &lab.lb_iface).expect("lb counters");
    let (failed, per_backend) = tally(&results);
    println!("[{mode:?}] 300 requests: {failed} failed, per backend {per_backend:?}");
    assert_eq!(
        failed,
        0,
        "every request succeeds; agent log:\n{}",
        lab.agent_log()
    );
    for (name, _) in BACKENDS {
        let served = per_backend.get(name).copied().unwrap_or(0);
        assert!(served > 0, "{name} served none: {per_backend:?}");
        assert!(
            served <= 150,
            "{name} served {served} of 300 (more than 50%)"
        );
    }

    // 2. Direct server return: the LB receives the client's packets (plus its
    // own health-check traffic), never the replies, which outweigh requests.
    let client_tx = client_after.tx_packets - client_before.tx_packets;
    let client_rx = client_after.rx_packets - client_before.rx_packets;
    let client_rx_bytes = client_after.rx_bytes - client_before.rx_bytes;
    let lb_rx = lb_after.rx_packets - lb_before.rx_packets;
    let lb_rx_bytes = lb_after.rx_bytes - lb_before.rx_bytes;
    println!(
        "[{mode:?}] client sent {client_tx} packets, received {client_rx} ({client_rx_bytes} bytes); LB received {lb_rx} packets, {lb_rx_bytes} bytes"
    );
    assert!(
        lb_rx < client_tx + client_rx / 2,
        "the LB saw {lb_rx} packets: more than the client's {client_tx} and its health checks"
    );
    assert!(
        lb_rx_bytes * 2 < client_rx_bytes,
        "replies ({client_rx_bytes} bytes at the client) must not cross the LB ({lb_rx_bytes} bytes)"
    );
    assert!(
        stats.outcome(Outcome::Forwarded).packets >= client_tx.min(300),
        "XDP_TX counter moves"
    );

    // Metrics and status show the traffic.
    let m = metrics(&lab);
    let vip_packets = sample(&m, "lb_vip_packets_total{vip=\"web\"}").expect("VIP counter");
    assert!(
        vip_packets >= 300.0,
        "lb_vip_packets_total moved: {vip_packets}"
    );
    assert!(sample(&m, "lb_packets_total{outcome=\"forwarded_tx\"}").is_some_and(|v| v >= 300.0));
    assert!(
        sample(&m, "lb_conntrack_events_total{event=\"syn_direct\"}").is_some_and(|v| v >= 300.0),
        "each connection's SYN took the table's choice without a lookup:\n{m}"
    );
    assert!(sample(&m, "lb_conntrack_events_total{event=\"miss\"}").is_some_and(|v| v >= 300.0));
    assert_eq!(
        sample(&m, "lb_backend_healthy{vip=\"web\",backend=\"10.30.0.21\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "lb_health_check_duration_seconds_count{vip=\"web\",backend=\"10.30.0.21\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "check latency histogram: {m}"
    );
    // Every metric the Grafana dashboard queries is served (the BGP
    // panels' only with `[bgp]`: the BGP test checks those).
    let unserved: Vec<String> = lb_tests::dashboard::unserved(lb_tests::dashboard::DASHBOARD, &m)
        .into_iter()
        .filter(|name| !name.starts_with("lb_bgp_"))
        .collect();
    assert!(
        unserved.is_empty(),
        "packaging/grafana/lb-dashboard.json queries {unserved:?}, not in /metrics:\n{m}"
    );
    let rows = status_rows(&lb_status(&lab, false));
    println!("[{mode:?}] lb status rows: {rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (state, weight, packets) in rows.values() {
        assert_eq!((state.as_str(), *weight), ("healthy", 1));
        assert!(*packets > 0, "every backend took packets");
    }

    // 3. Source filter: a client address outside the allowed prefixes.
    let drops_before = stats.outcome(Outcome::DropSourceFilter).packets;
    let segs_before = lab::tcp_out_segments(lab.client()).expect("snmp");
    let outside = lab.requests(3, Some(OUTSIDE_ADDR));
    let syns = lab::tcp_out_segments(lab.client()).expect("snmp") - segs_before;
    let dropped = stats.outcome(Outcome::DropSourceFilter).packets - drops_before;
    println!(
        "[{mode:?}] from {OUTSIDE_ADDR}: {outside:?}; {syns} SYNs sent, {dropped} dropped by the source filter"
    );
    assert!(
        outside.iter().all(Option::is_none),
        "no request from outside succeeds"
    );
    assert!(
        syns >= 3 && dropped >= syns,
        "{dropped} drops for {syns} SYNs"
    );

    // 4. Failover: stop be1's server; within fall x interval + 1 s = 2 s every
    // request succeeds on the two others.
    lab.stop_server(0);
    thread::sleep(Duration::from_millis(2000));
    let (failed, per_backend) = tally(&lab.requests(60, None));
    println!("[{mode:?}] be1 stopped: {failed} failed, per backend {per_backend:?}");
    assert_eq!(failed, 0, "agent log:\n{}", lab.agent_log());
    assert!(!per_backend.contains_key("be1"));
    let m = metrics(&lab);
    assert_eq!(
        sample(&m, "lb_backend_healthy{vip=\"web\",backend=\"10.30.0.21\"}"),
        Some(0.0),
        "health gauge flips"
    );
    let status: lb_userspace::api::Status =
        serde_json::from_str(&lb_status(&lab, true)).expect("lb status --json");
    let be1 = &status.vips[0].backends[0];
    assert_eq!(be1.state, "unhealthy");
    let check = be1.last_check.as_ref().expect("last check");
    assert_eq!(
        (check.ok, check.reason.as_str()),
        (false, "connection refused")
    );
    assert_eq!(
        status_rows(&lb_status(&lab, false))["10.30.0.21"].0,
        "unhealthy"
    );

    // 5. Recovery: within rise x interval + 1 s = 2 s be1 serves again.
    lab.start_server(0).expect("restart be1");
    thread::sleep(Duration::from_millis(2000));
    let (failed, per_backend) = tally(&lab.requests(60, None));
    println!("[{mode:?}] be1 restarted: {failed} failed, per backend {per_backend:?}");
    assert_eq!(failed, 0);
    assert!(
        per_backend.get("be1").copied().unwrap_or(0) > 0,
        "be1 serves again: {per_backend:?}"
    );

    // 6. The SYN shortcut after the table changed: flows of step 4 recorded
    // on be2 and be3 for what are be1's slots again disagree with the
    // table, so web's SYNs look their flows up. Once they leave the
    // connection table (removed here, as the LRU would evict them), the
    // agent's next walk gives the shortcut back.
    let syn_direct = |lab: &Lab| {
        let status: lb_userspace::api::Status =
            serde_json::from_str(&lb_status(lab, true)).expect("lb status --json");
        status.vips[0].syn_direct
    };
    assert!(!syn_direct(&lab), "be1's return cleared the flag");
    // (A walk may have given it back while be1 was out: the flows on be2
    // and be3 agreed with that table.)
    let agreed = "recorded flows agree with the Maglev table again";
    let walks = lab.log_count(agreed);
    {
        let data = aya::maps::MapData::from_pin(lab.pin_dir().join(MAP_CONNS))
            .expect("pinned connection table");
        let mut conns: aya::maps::HashMap<_, FlowKey, ConnValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).expect("map"))
                .expect("hash map");
        let keys: Vec<FlowKey> = conns.keys().filter_map(Result::ok).collect();
        println!(
            "[{mode:?}] removing {} connection-table entries",
            keys.len()
        );
        for key in keys {
            let _ = conns.remove(&key);
        }
    }
    assert!(
        // Each walk that found disagreement since be1's return doubled the
        // wait before the next (10 s, 20 s, ...): one or two of them.
        lab.wait_for_log(agreed, walks + 1, Duration::from_secs(60)),
        "no walk gave the shortcut back:\n{}",
        lab.agent_log()
    );
    assert!(syn_direct(&lab));
    let m = metrics(&lab);
    assert!(
        sample(&m, "lb_conntrack_walks_total{result=\"complete\"}").is_some_and(|n| n >= 1.0)
            && sample(&m, "lb_conntrack_walk_flags_set_total").is_some_and(|n| n >= 1.0)
            && sample(&m, "lb_conntrack_walk_seconds_total").is_some(),
        "walks counted:\n{m}"
    );
    let before = stats.conn(ConnEvent::SynDirect).packets;
    let (failed, _) = tally(&lab.requests(20, None));
    assert_eq!(failed, 0);
    assert!(stats.conn(ConnEvent::SynDirect).packets >= before + 20);

    // 7. Clean stop: SIGTERM detaches and removes the pins.
    lab.stop_agent();
    assert!(!lab.pin_dir().exists(), "pins removed on SIGTERM");
    let log = lab.agent_log();
    assert!(log.contains("detached from"), "{log}");
    // The agent kept the backends' next hops (from their neighbour entries,
    // learnt by the first packets) for xdp_lb all along.
    for (_, address) in lb_tests::lab::BACKENDS {
        assert!(
            log.contains(&format!("next hop of backend {address}: interface")),
            "next hop of {address} cached:\n{log}"
        );
    }
    assert!(!log.contains("next-hop cache off"), "{log}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn end_to_end_native() {
    lb_tests::require_root();
    end_to_end("lbe2en", Mode::Native);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn end_to_end_generic() {
    lb_tests::require_root();
    end_to_end("lbe2eg", Mode::Generic);
}
