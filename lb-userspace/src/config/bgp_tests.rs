//! Every `[bgp]` validation rule, with the message it gives.

use std::{net::Ipv4Addr, time::Duration};

use super::super::{
    Config,
    tests::{problems, rejects},
};
use super::*;

const BASE: &str = r#"
interface = "eth0"

[encap]
source_v4 = "10.10.0.2"

[[vip]]
name = "web"
address = "10.10.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.10.0.21"
"#;

const PEER: &str = "\n[[bgp.peer]]\naddress = \"10.10.0.1\"\nremote_as = 65000\n";

fn with_bgp(bgp: &str) -> String {
    format!("{BASE}\n[bgp]\n{bgp}")
}

#[test]
fn no_bgp_section_means_no_announcement() {
    let c = Config::parse(BASE, "t").expect("valid").config;
    assert_eq!(c.bgp, None);
}

#[test]
fn full_section_parses() {
    let text = with_bgp(
        "local_as = 4200000001\nrouter_id = \"10.77.0.2\"\nhold_time = \"30s\"\nwithdraw_delay = \"500ms\"\n[[bgp.peer]]\naddress = \"10.77.0.1\"\nremote_as = 65000\nport = 1179\n[[bgp.peer]]\naddress = \"fd00::1\"\nremote_as = 65002\n",
    );
    let bgp = Config::parse(&text, "t").expect("valid").config.bgp;
    assert_eq!(
        bgp,
        Some(BgpConfig {
            local_as: 4_200_000_001,
            router_id: Some(Ipv4Addr::new(10, 77, 0, 2)),
            hold_time: Duration::from_secs(30),
            withdraw_delay: Duration::from_millis(500),
            peers: vec![
                BgpPeer {
                    address: "10.77.0.1".parse().unwrap(),
                    remote_as: 65000,
                    port: 1179,
                },
                BgpPeer {
                    address: "fd00::1".parse().unwrap(),
                    remote_as: 65002,
                    port: DEFAULT_BGP_PORT,
                },
            ],
        })
    );
}

#[test]
fn defaults_apply() {
    let bgp = Config::parse(&with_bgp(&format!("local_as = 65001\n{PEER}")), "t")
        .expect("valid")
        .config
        .bgp
        .expect("bgp");
    assert_eq!(
        bgp.router_id,
        Some(Ipv4Addr::new(10, 10, 0, 2)),
        "encap.source_v4"
    );
    assert_eq!(bgp.hold_time, DEFAULT_HOLD_TIME);
    assert_eq!(bgp.withdraw_delay, DEFAULT_WITHDRAW_DELAY);
    assert_eq!(bgp.peers[0].port, 179);
    let no_source = format!(
        "{}\n[bgp]\nlocal_as = 65001\n{PEER}",
        BASE.replace("source_v4 = \"10.10.0.2\"", "")
    );
    let bgp = Config::parse(&no_source, "t").expect("valid").config.bgp;
    assert_eq!(
        bgp.expect("bgp").router_id,
        None,
        "chosen at start from the interface"
    );
}

#[test]
fn unknown_keys_are_errors() {
    for (bad, key) in [
        (format!("local_as = 65001\nmed = 5\n{PEER}"), "med"),
        (
            format!("local_as = 65001\n{PEER}password = \"x\"\n"),
            "password",
        ),
    ] {
        let err = Config::parse(&with_bgp(&bad), "t").unwrap_err().to_string();
        assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
    }
    let err = Config::parse(&with_bgp(PEER), "t").unwrap_err().to_string();
    assert!(err.contains("missing field `local_as`"), "{err}");
}

#[test]
fn as_numbers_are_checked() {
    for (value, reason) in [
        ("0", "0 is out of range (1 to 4294967295)"),
        ("4294967296", "4294967296 is out of range (1 to 4294967295)"),
        ("-1", "-1 is out of range (1 to 4294967295)"),
        (
            "23456",
            "23456 is AS_TRANS (RFC 6793), a placeholder that no speaker may use as its own AS",
        ),
    ] {
        rejects(
            &with_bgp(&format!("local_as = {value}\n{PEER}")),
            &format!("bgp.local_as: {reason}"),
        );
        rejects(
            &with_bgp(&format!(
                "local_as = 65001\n{}",
                PEER.replace("65000", value)
            )),
            &format!("bgp.peer[0].remote_as: {reason}"),
        );
    }
}

#[test]
fn router_id_is_an_ipv4_address() {
    for (value, reason) in [
        (
            "fd00::2",
            "fd00::2 is not an IPv4 address (a BGP identifier is 32 bits, RFC 4271 section 4.2)",
        ),
        ("router-1", "\"router-1\" is not an IPv4 address"),
        ("0.0.0.0", "0.0.0.0 cannot be a router id"),
    ] {
        rejects(
            &with_bgp(&format!(
                "local_as = 65001\nrouter_id = \"{value}\"\n{PEER}"
            )),
            &format!("bgp.router_id: {reason}"),
        );
    }
}

#[test]
fn timers_are_checked() {
    for (key, value, reason) in [
        (
            "hold_time",
            "2s",
            "\"2s\" is out of range (3s to 18h 12m 15s)",
        ),
        (
            "hold_time",
            "1day",
            "\"1day\" is out of range (3s to 18h 12m 15s)",
        ),
        (
            "hold_time",
            "3500ms",
            "3s 500ms is not a whole number of seconds (BGP counts it in seconds)",
        ),
        (
            "hold_time",
            "soon",
            "\"soon\" is not a duration (unknown time unit \"soon\"); write for example \"9s\"",
        ),
        (
            "withdraw_delay",
            "61s",
            "\"61s\" is out of range (0s to 1m)",
        ),
    ] {
        let text = with_bgp(&format!("local_as = 65001\n{key} = \"{value}\"\n{PEER}"));
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with(&format!("bgp.{key}: ")), "{got:?}");
        if !value.ends_with("soon") {
            assert_eq!(got[0], format!("bgp.{key}: {reason}"));
        }
    }
    let ok = with_bgp(&format!(
        "local_as = 65001\nhold_time = \"3s\"\nwithdraw_delay = \"0s\"\n{PEER}"
    ));
    let bgp = Config::parse(&ok, "t")
        .expect("valid")
        .config
        .bgp
        .expect("bgp");
    assert_eq!(
        (bgp.hold_time, bgp.withdraw_delay),
        (MIN_HOLD_TIME, Duration::ZERO)
    );
}

#[test]
fn peers_are_checked() {
    rejects(
        &with_bgp("local_as = 65001\n"),
        "bgp.peer: no peer: add a [[bgp.peer]] (the router to announce the VIPs to)",
    );
    rejects(
        &with_bgp(&format!("local_as = 65001\n{PEER}{PEER}")),
        "bgp.peer[1].address: 10.10.0.1 is listed twice",
    );
    rejects(
        &with_bgp(&format!(
            "local_as = 65001\n{}",
            PEER.replace("10.10.0.1", "127.0.0.1")
        )),
        "bgp.peer[0].address: 127.0.0.1 cannot be a peer",
    );
    rejects(
        &with_bgp(&format!(
            "local_as = 65001\n{}",
            PEER.replace("10.10.0.1", "fe80::1")
        )),
        "bgp.peer[0].address: fe80::1 is an IPv6 link-local address, which needs an interface to reach: give the router's global or unique local address",
    );
    rejects(
        &with_bgp(&format!("local_as = 65001\n{PEER}port = 0\n")),
        "bgp.peer[0].port: 0 is out of range (1 to 65535)",
    );
    rejects(
        &with_bgp(&format!("local_as = 65001\n{PEER}port = 70000\n")),
        "bgp.peer[0].port: 70000 is out of range (1 to 65535)",
    );
    let many: String = (0..=MAX_BGP_PEERS)
        .map(|i| {
            format!(
                "\n[[bgp.peer]]\naddress = \"10.9.{}.{}\"\nremote_as = 65000\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    rejects(
        &with_bgp(&format!("local_as = 65001\n{many}")),
        &format!(
            "bgp.peer: {} peers, at most {MAX_BGP_PEERS}",
            MAX_BGP_PEERS + 1
        ),
    );
}

#[test]
fn every_bgp_error_is_reported_at_once() {
    let text = with_bgp(&format!(
        "local_as = 0\nrouter_id = \"::1\"\nhold_time = \"1s\"\n{PEER}port = 0\n{PEER}"
    ));
    let keys: Vec<String> = problems(&text)
        .iter()
        .map(|p| p.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "bgp.local_as",
            "bgp.router_id",
            "bgp.hold_time",
            "bgp.peer[0].port",
            "bgp.peer[1].address"
        ]
    );
}

#[test]
fn bgp_does_not_touch_the_data_plane_layout() {
    // `[bgp]` is the agent's alone: the map sizes (and so the pinned
    // layout an agent restart must match) are the same with and without it.
    let without = Config::parse(BASE, "t").expect("valid").config;
    let with = Config::parse(&with_bgp(&format!("local_as = 65001\n{PEER}")), "t")
        .expect("valid")
        .config;
    assert_eq!(with.sizing, without.sizing);
    assert_eq!(
        Config { bgp: None, ..with },
        without,
        "nothing else in the configuration changes"
    );
}
