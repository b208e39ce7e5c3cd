//! Flows survive every change: 50 long-lived TCP connections
//! through VIP `echo`, each exchanging a line every 100 ms with the echo
//! servers of the namespace lab, stay open while the configuration is
//! reloaded in many ways and the agent is killed and restarted. After each
//! step, new connections are checked to follow the new configuration.

use std::{
    collections::{BTreeMap, HashMap},
    thread,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::{MAP_VIPS, VipKey, VipValue};
use lb_tests::{
    flows::{LongLived, echo_addr, spread},
    lab::{Lab, Mode, Options},
};
use lb_userspace::dataplane::maps::open_pin;

const CONNECTIONS: usize = 50;
/// How long each step lets the connections run after its change.
const SOAK: Duration = Duration::from_millis(1500);

fn pinned_vips(lab: &Lab) -> Vec<(VipKey, VipValue)> {
    let map: BpfHashMap<MapData, VipKey, VipValue> =
        open_pin(&lab.pin_dir(), MAP_VIPS).expect("pinned VIP map");
    let mut vips: Vec<_> = map.iter().map(|r| r.expect("VIP entry")).collect();
    vips.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    vips
}

fn restart_and_wait_for_adoption(lab: &mut Lab, args: &[&str]) {
    let before = lab.log_count("adopted the data plane");
    lab.start_agent(args).expect("agent starts");
    assert!(
        lab.wait_for_log(
            "adopted the data plane",
            before + 1,
            Duration::from_secs(15)
        ),
        "the agent did not adopt the pinned data plane; log:\n{}",
        lab.agent_log()
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn long_lived_connections_survive_reloads_and_restarts() {
    lb_tests::require_root();
    let mut lab = Lab::start_with(
        "lbsurv",
        Mode::Native,
        Options {
            spare_backend: true,
            echo: true,
            ..Options::default()
        },
    )
    .expect("lab starts");
    let _client = lab.client().enter().expect("enter the client's namespace");

    let three = [("be1", 1), ("be2", 1), ("be3", 1)];
    let (initial, failed) = spread(48);
    assert_eq!(failed, 0, "{initial:?}");
    assert_eq!(
        initial.len(),
        3,
        "new connections spread over be1..be3: {initial:?}"
    );

    let mut flows = LongLived::open(CONNECTIONS).expect("long-lived connections");
    let on = flows.per_backend();
    println!("50 long-lived connections on {on:?}");
    assert!(!on.contains_key("be4"));

    let mut report: Vec<(&str, usize, String)> = Vec::new();
    let mut step = |name: &'static str, lab: &Lab, check: &dyn Fn(&BTreeMap<String, usize>)| {
        let exchanged = flows.exchanges();
        thread::sleep(SOAK);
        let now = flows.exchanges();
        assert!(
            now > exchanged,
            "{name}: the connections went on exchanging"
        );
        // 120: be1 at weight 4 of 6 then takes more than the others
        // together but for a 4-sigma draw.
        let (spread, failed) = spread(120);
        assert_eq!(failed, 0, "{name}: new connections: {spread:?}");
        check(&spread);
        let alive = flows.survivors();
        println!("step {name:<32} survivors {alive}/{CONNECTIONS}, new connections {spread:?}");
        report.push((name, alive, format!("{spread:?}")));
        let failures = flows.failures();
        assert!(
            failures.is_empty(),
            "{name}: connections failed: {failures:?}; agent log:\n{}",
            lab.agent_log()
        );
    };

    // 1. A fourth backend is added.
    lab.reload(&lab.config_text(&[three[0], three[1], three[2], ("be4", 1)], ""));
    step("add backend be4", &lab, &|s| {
        assert!(
            s.get("be4").copied().unwrap_or(0) > 0,
            "be4 takes new connections: {s:?}"
        );
    });
    // 2. Another backend (not theirs) is removed.
    lab.reload(&lab.config_text(&three, ""));
    step("remove backend be4", &lab, &|s| {
        assert!(!s.contains_key("be4"), "be4 takes nothing: {s:?}");
        assert_eq!(s.len(), 3, "{s:?}");
    });
    // 3. A weight changes, written in three quick writes: one reload.
    let weighted = lab.config_text(&[("be1", 4), ("be2", 1), ("be3", 1)], "");
    let before = lab.log_count("configuration reloaded");
    for text in [
        &lab.config_text(&three, ""),
        &weighted[..weighted.len() / 2],
        &weighted,
    ] {
        lab.write_config(text).expect("write config");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lab.wait_for_log(
        "configuration reloaded",
        before + 1,
        Duration::from_secs(10)
    ));
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        lab.log_count("configuration reloaded"),
        before + 1,
        "three quick writes give one reload"
    );
    let be1_heavy = |s: &BTreeMap<String, usize>| {
        let n = |b: &str| s.get(b).copied().unwrap_or(0);
        assert!(
            n("be1") > n("be2") + n("be3"),
            "be1 (weight 4 of 6) takes most new connections: {s:?}"
        );
    };
    step("weight of be1 1 -> 4", &lab, &be1_heavy);
    // 4. An unrelated VIP is added, then removed.
    let extra = "\n[[vip]]\nname = \"extra\"\naddress = \"10.30.0.101\"\nport = 7000\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.30.0.22\"\n";
    let vips_before = pinned_vips(&lab);
    lab.reload(&lab.config_text(&[("be1", 4), ("be2", 1), ("be3", 1)], extra));
    let with_extra = pinned_vips(&lab);
    assert_eq!(with_extra.len(), vips_before.len() + 1, "VIP extra added");
    for entry in &vips_before {
        assert!(
            with_extra.contains(entry),
            "other VIPs untouched: {entry:?}"
        );
    }
    step("add unrelated VIP", &lab, &be1_heavy);
    lab.reload(&weighted);
    assert_eq!(
        pinned_vips(&lab),
        vips_before,
        "VIP extra removed, others untouched"
    );
    step("remove unrelated VIP", &lab, &be1_heavy);
    // 5. An invalid configuration is rejected; nothing changes.
    let rejected = lab.log_count("configuration rejected");
    lab.write_config(&weighted.replace("table_size = 65537", "table_size = 65536"))
        .expect("write config");
    assert!(
        lab.wait_for_log(
            "configuration rejected",
            rejected + 1,
            Duration::from_secs(10)
        ),
        "invalid configuration rejected; log:\n{}",
        lab.agent_log()
    );
    assert!(
        lab.agent_log().contains("65536"),
        "the error names the bad value"
    );
    assert_eq!(pinned_vips(&lab), vips_before, "maps unchanged");
    step("invalid config rejected", &lab, &be1_heavy);
    lab.write_config(&weighted).expect("write config");
    // 6. The agent is killed with SIGKILL and started again.
    lab.kill_agent();
    thread::sleep(Duration::from_millis(500));
    restart_and_wait_for_adoption(&mut lab, &["--keep-attached"]);
    assert_eq!(pinned_vips(&lab), vips_before, "adoption rewrote nothing");
    step("SIGKILL and restart", &lab, &be1_heavy);
    // 7. The agent stops with --keep-attached and starts again.
    lab.stop_agent();
    assert!(
        lab.agent_log()
            .contains("--keep-attached: xdp_lb stays attached"),
        "{}",
        lab.agent_log()
    );
    assert!(lab.pin_dir().join("link").exists(), "link still pinned");
    thread::sleep(Duration::from_millis(500));
    restart_and_wait_for_adoption(&mut lab, &[]);
    step("--keep-attached stop and restart", &lab, &be1_heavy);

    // `lb explain` finds each connection in the connection table, on the
    // backend that greeted it (be1's weight change moved some of these
    // flows in the Maglev table).
    let mut overridden = 0;
    for c in &flows.conns {
        // In the LB's namespace: pins are keyed by it.
        let lb = lb_tests::lab::lb_binary().expect("lb");
        let out = lab
            .lb()
            .command(&lb.display().to_string())
            .args([
                "explain",
                "--config",
                &lab.config_path().display().to_string(),
            ])
            .args(["--proto", "tcp", "--src", &c.local.to_string()])
            .args(["--dst", &echo_addr().to_string()])
            .output()
            .expect("lb explain");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let addr = lab
            .backends()
            .into_iter()
            .find(|b| b.0 == c.backend)
            .expect("backend")
            .1;
        assert!(
            text.contains(&format!("connection table: entry -> {addr} ")),
            "{}:\n{text}",
            c.backend
        );
        if !text.contains(&format!("Maglev table (live health): {addr} ")) {
            overridden += 1;
        }
    }
    println!(
        "lb explain: 50 of 50 connections in the connection table, {overridden} overriding the Maglev table"
    );

    flows.finish();
    let exchanges = flows.exchanges();
    println!(
        "\nper-step survivors of {CONNECTIONS} long-lived connections ({exchanges} exchanges):"
    );
    for (name, alive, spread) in &report {
        println!("  {name:<34} {alive:>3}   new connections {spread}");
    }
    let per: HashMap<&str, usize> = report.iter().map(|(n, a, _)| (*n, *a)).collect();
    assert!(per.values().all(|&a| a == CONNECTIONS));
}
