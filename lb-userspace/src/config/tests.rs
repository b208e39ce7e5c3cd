//! Every validation rule, with the message it gives.

use lb_common::MAX_TABLE_SIZE;

use super::*;

const GOOD: &str = r#"
interface = "eth0"
xdp_mode = "native"

[api]
listen = "127.0.0.1:9470"

[source_filter]
allow = ["10.0.0.0/8", "192.168.0.0/16"]
scope = "vip"

[encap]
kind = "ipip"
source_v4 = "10.10.0.2"

[maglev]
table_size = 65537

[conntrack]
max_entries = 1000

[[vip]]
name = "internal-api"
address = "10.10.0.100"
port = 80
protocol = "tcp"

  [vip.health_check]
  kind = "tcp"
  port = 8080
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 3

  [[vip.backend]]
  address = "10.10.0.21"
  weight = 1

  [[vip.backend]]
  address = "10.10.0.22"
  weight = 2
"#;

/// The problems `Config::parse` finds in `text` (empty when it is valid).
pub(super) fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "test.toml") {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => vec![other.to_string()],
    }
}

/// Asserts that `text` is rejected with exactly one problem equal to `expected`.
#[track_caller]
pub(super) fn rejects(text: &str, expected: &str) {
    assert_eq!(problems(text), vec![expected.to_string()]);
}

#[test]
fn good_config_parses_with_every_field() {
    let loaded = Config::parse(GOOD, "test.toml").expect("valid");
    let c = loaded.config;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(c.interface.as_deref(), Some("eth0"));
    assert_eq!(c.xdp_mode, XdpModeConfig::Native);
    assert_eq!(c.allow.len(), 2);
    assert_eq!(c.encap_source_v4, Some(Ipv4Addr::new(10, 10, 0, 2)));
    assert_eq!(c.table_size, 65537);
    assert_eq!(c.conntrack_entries, 1000);
    let vip = &c.vips[0];
    assert_eq!(vip.health_check.port, 8080);
    assert_eq!(vip.health_check.timeout, Duration::from_millis(500));
    assert_eq!(vip.backends[1].weight, 2);
}

#[test]
fn defaults_apply_when_keys_are_omitted() {
    let text = r#"
[[vip]]
name = "a"
address = "10.1.0.1"
port = 443
protocol = "tcp"
  [[vip.backend]]
  address = "10.1.0.10"
"#;
    let c = Config::parse(text, "t").expect("valid").config;
    assert_eq!(c.allow.len(), DEFAULT_ALLOW.len());
    assert_eq!(c.scope, FilterScope::Vip);
    assert_eq!(c.table_size, DEFAULT_TABLE_SIZE);
    assert_eq!(c.api_listen.to_string(), DEFAULT_API_LISTEN);
    let hc = &c.vips[0].health_check;
    assert_eq!(
        (hc.kind, hc.port, hc.rise, hc.fall),
        (HealthCheckKind::Tcp, 443, 2, 3)
    );
    assert_eq!(
        (hc.path.as_str(), hc.expect_status, hc.payload.as_str()),
        ("/", 200, "ping")
    );
    assert_eq!(c.vips[0].backends[0].weight, 1);
}

#[test]
fn unknown_keys_are_errors() {
    let err = Config::parse(
        &GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"native\"\ncolour = 1"),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `colour`"), "{err}");
    let err = Config::parse(&GOOD.replace("weight = 2", "weight = 2\nwieght = 3"), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `wieght`"), "{err}");
}

#[test]
fn bad_enum_values_are_errors() {
    let err = Config::parse(&GOOD.replace("\"native\"", "\"turbo\""), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `turbo`"), "{err}");
    let err = Config::parse(
        &GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown variant `sctp`"), "{err}");
}

#[test]
fn interface_name_is_checked() {
    rejects(
        &GOOD.replace("\"eth0\"", "\"a/b\""),
        "interface: \"a/b\" is not a valid interface name",
    );
}

#[test]
fn api_listen_must_be_address_and_port() {
    rejects(
        &GOOD.replace("\"127.0.0.1:9470\"", "\"localhost\""),
        "api.listen: \"localhost\" is not an address:port",
    );
}

#[test]
fn api_listen_off_loopback_needs_allow_remote() {
    let remote = GOOD.replace("127.0.0.1:9470", "10.0.0.1:9470");
    rejects(
        &remote,
        "api.listen: 10.0.0.1:9470 is not a loopback address and the API has no authentication: set api.allow_remote = true to expose it anyway",
    );
    let allowed = remote.replace(
        "listen = \"10.0.0.1:9470\"",
        "listen = \"10.0.0.1:9470\"\nallow_remote = true",
    );
    let loaded = Config::parse(&allowed, "t").expect("valid");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "api.listen: 10.0.0.1:9470 is not a loopback address: the API (read-only, without authentication) is reachable from the network"
    );
}

#[test]
fn api_max_connections_is_bounded() {
    let with = |n: &str| {
        GOOD.replace(
            "listen = \"127.0.0.1:9470\"",
            &format!("listen = \"127.0.0.1:9470\"\nmax_connections = {n}"),
        )
    };
    assert_eq!(
        Config::parse(&with("100"), "t")
            .expect("valid")
            .config
            .api_max_connections,
        100
    );
    assert_eq!(
        Config::parse(GOOD, "t")
            .expect("valid")
            .config
            .api_max_connections,
        DEFAULT_API_MAX_CONNECTIONS
    );
    rejects(
        &with("0"),
        "api.max_connections: 0 is out of range (1 to 512)",
    );
    rejects(
        &with("5000"),
        "api.max_connections: 5000 is out of range (1 to 512)",
    );
}

#[test]
fn no_vip_warns_and_says_what_reload_does() {
    let empty = "interface = \"eth0\"\n";
    let loaded = Config::parse(empty, "t").expect("valid");
    assert_eq!(
        loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![
            "vip: no VIP: a running agent refuses to reload to this (it would remove every VIP); set allow_empty = true if that is meant"
        ]
    );
    assert!(!loaded.config.allow_empty);
    let loaded = Config::parse("allow_empty = true\n", "t").expect("valid");
    assert!(loaded.config.allow_empty);
    assert_eq!(
        loaded.warnings[0].to_string(),
        "vip: no VIP: the data plane forwards nothing (allowed by allow_empty = true)"
    );
}

#[test]
fn keys_without_effect_warn() {
    let text = GOOD.replace(
        "source_v4 = \"10.10.0.2\"",
        "source_v4 = \"10.10.0.2\"\nsource_v6 = \"fd00::2\"\ngue_port = 6081",
    );
    let warnings: Vec<String> = Config::parse(&text, "t")
        .expect("valid")
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        vec![
            "encap.source_v6: has no effect: no backend is an IPv6 address",
            "encap.gue_port: has no effect with encap.kind = \"ipip\"",
        ]
    );
}

#[test]
fn sizes_are_checked_with_the_figure_and_the_limit() {
    // The issue's case: 130 VIPs at the largest table size.
    let mut text = format!("[maglev]\ntable_size = {MAX_TABLE_SIZE}\nmax_vips = 130\n");
    let default = format!("[maglev]\ntable_size = {MAX_TABLE_SIZE}\n");
    for i in 0..130 {
        let vip = format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.1.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            i / 250,
            i % 250 + 1
        );
        text += &vip;
    }
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "maglev.max_vips: Maglev tables would take 146 regions x 16777213 entries x 4 bytes = 9797892392 bytes, above the limit of 4294967296 bytes: lower maglev.max_vips or maglev.table_size"
        ]
    );
    // Without max_vips, the default (what fits 128 MiB) is named.
    let mut text = default;
    for i in 0..2 {
        text += &format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.1.0.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            i + 1
        );
    }
    assert_eq!(
        problems(&text),
        vec![
            "vip: 2 VIPs, above maglev.max_vips = 1 (the default: the most whose tables fit 128.0 MiB at table size 16777213)"
        ]
    );
    rejects(
        &GOOD.replace("table_size = 65537", "table_size = 65537\nmax_vips = 0"),
        "maglev.max_vips: must be at least 1",
    );
    rejects(
        &GOOD.replace("max_entries = 1000", "max_entries = 100000000"),
        "conntrack.max_entries: 100000000 flows is above the limit of 67108864",
    );
}

#[test]
fn backends_over_all_vips_are_bounded() {
    // 17 VIPs of 1000 backends: each VIP is within its limit, the total not.
    let mut text = String::from("[maglev]\ntable_size = 251\n");
    for v in 0..17u32 {
        text += &format!(
            "[[vip]]\nname = \"v{v}\"\naddress = \"10.1.0.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            v + 1
        );
        for b in 0..1000u32 {
            let id = v * 1000 + b;
            text += &format!(
                "  [[vip.backend]]\n  address = \"10.2.{}.{}\"\n",
                id / 250,
                id % 250 + 1
            );
        }
    }
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "vip: 17000 backends over all VIPs, above the data plane's limit of 16384 (one id per VIP and backend)"
        ]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever `check` accepts, the sizes `run` computes from it do not
    /// overflow and fit the data plane's limits.
    #[test]
    fn check_ok_implies_run_sizes_fit(
        table_index in 0usize..6,
        max_vips in proptest::option::of(1u32..2000),
        vips in 0u32..40,
        per_vip in 0u32..4,
        conntrack in 1u32..(1 << 27),
    ) {
        let table_size = [3u32, 251, 65537, 1_048_573, 4_194_301, MAX_TABLE_SIZE][table_index];
        let mut text = format!("allow_empty = true\n[maglev]\ntable_size = {table_size}\n");
        if let Some(m) = max_vips {
            text += &format!("max_vips = {m}\n");
        }
        text += &format!("[conntrack]\nmax_entries = {conntrack}\n");
        for v in 0..vips {
            text += &format!(
                "[[vip]]\nname = \"v{v}\"\naddress = \"10.1.0.{}\"\nport = 80\nprotocol = \"tcp\"\n",
                v + 1
            );
            for b in 0..per_vip {
                text += &format!("  [[vip.backend]]\n  address = \"10.2.{v}.{}\"\n", b + 1);
            }
        }
        if let Ok(loaded) = Config::parse(&text, "t") {
            let c = loaded.config;
            let s = c.sizing;
            proptest::prop_assert_eq!(s, crate::config::sizing::Sizing::new(c.table_size, s.max_vips, c.conntrack_entries).unwrap());
            proptest::prop_assert!(c.vips.len() as u32 <= s.max_vips);
            proptest::prop_assert!(s.max_vips <= lb_common::MAX_VIPS);
            proptest::prop_assert!(u64::from(s.table_regions) * u64::from(c.table_size) == u64::from(s.maglev_entries));
            proptest::prop_assert!(s.maglev_bytes <= crate::config::sizing::MAX_MAGLEV_BYTES);
            proptest::prop_assert!(c.backend_count() <= lb_common::MAX_BACKENDS as usize);
            proptest::prop_assert!(s.conntrack_entries <= crate::config::sizing::MAX_CONNTRACK_ENTRIES);
        }
    }
}

#[test]
fn allow_prefixes_are_checked() {
    rejects(
        &GOOD.replace("\"192.168.0.0/16\"", "\"192.168.0.1/16\""),
        "source_filter.allow[1]: \"192.168.0.1/16\" has host bits set (did you mean 192.168.0.0/16?)",
    );
    rejects(
        &GOOD.replace("\"192.168.0.0/16\"", "\"banana\""),
        "source_filter.allow[1]: \"banana\" is not a prefix (address/length)",
    );
    rejects(
        &GOOD.replace("\"192.168.0.0/16\"", "\"10.0.0.0/8\""),
        "source_filter.allow[1]: \"10.0.0.0/8\" is listed twice",
    );
}

#[test]
fn empty_allow_is_an_error_and_vip_outside_it_too() {
    let p = problems(&GOOD.replace("allow = [\"10.0.0.0/8\", \"192.168.0.0/16\"]", "allow = []"));
    assert_eq!(
        p,
        vec![
            "source_filter.allow: is empty: every packet to a VIP would be dropped".to_string(),
            "vip[0].address: 10.10.0.100 is outside every source_filter.allow prefix: no client could reach it".to_string(),
        ]
    );
}

#[test]
fn vip_outside_allow_is_an_error() {
    rejects(
        &GOOD.replace("\"10.0.0.0/8\", ", ""),
        "vip[0].address: 10.10.0.100 is outside every source_filter.allow prefix: no client could reach it",
    );
}

#[test]
fn gue_is_an_encapsulation() {
    let c = Config::parse(
        &GOOD.replace("kind = \"ipip\"", "kind = \"gue\"\ngue_port = 6081"),
        "t",
    )
    .expect("valid")
    .config;
    assert_eq!((c.encap, c.gue_port), (EncapKind::Gue, 6081));
    rejects(
        &GOOD.replace("kind = \"ipip\"", "kind = \"gue\"\ngue_port = 0"),
        "encap.gue_port: must not be 0",
    );
}

#[test]
fn encap_sources_must_be_of_their_family() {
    rejects(
        &GOOD.replace("source_v4 = \"10.10.0.2\"", "source_v4 = \"fd00::2\""),
        "encap.source_v4: fd00::2 is not an IPv4 address",
    );
    rejects(
        &GOOD.replace(
            "source_v4 = \"10.10.0.2\"",
            "source_v4 = \"10.10.0.2\"\nsource_v6 = \"10.10.0.3\"",
        ),
        "encap.source_v6: 10.10.0.3 is not an IPv6 address",
    );
    rejects(
        &GOOD.replace("source_v4 = \"10.10.0.2\"", "gue_port = 0"),
        "encap.gue_port: must not be 0",
    );
}

#[test]
fn table_size_must_be_a_prime_in_range() {
    rejects(
        &GOOD.replace("65537", "65536"),
        "maglev.table_size: 65536 is not prime (Maglev needs a prime table size)",
    );
    rejects(
        &GOOD.replace("65537", "2"),
        "maglev.table_size: 2 is out of range (3 to 16777213)",
    );
    rejects(
        &GOOD.replace("65537", "16777259"),
        "maglev.table_size: 16777259 is out of range (3 to 16777213)",
    );
}

#[test]
fn small_table_warns() {
    let loaded = Config::parse(&GOOD.replace("65537", "101"), "t").expect("valid");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "maglev.table_size: 101 is less than 100 times the 2 backends of VIP \"internal-api\": shares will be uneven"
    );
}

#[test]
fn conntrack_must_hold_a_flow() {
    rejects(
        &GOOD.replace("max_entries = 1000", "max_entries = 0"),
        "conntrack.max_entries: must be at least 1",
    );
}

fn two_vips(second: &str) -> String {
    format!("{GOOD}\n{second}")
}

#[test]
fn vip_names_and_keys_are_unique() {
    let dup_name = two_vips(
        "[[vip]]\nname = \"internal-api\"\naddress = \"10.10.0.101\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"10.10.0.21\"\n",
    );
    rejects(
        &dup_name,
        "vip[1].name: \"internal-api\" is used by another VIP",
    );
    let dup_key = two_vips(
        "[[vip]]\nname = \"other\"\naddress = \"10.10.0.100\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"10.10.0.21\"\n",
    );
    rejects(&dup_key, "vip[1]: 10.10.0.100 port 80 tcp is defined twice");
    let empty = two_vips(
        "[[vip]]\nname = \"\"\naddress = \"10.10.0.101\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"10.10.0.21\"\n",
    );
    rejects(&empty, "vip[1].name: must not be empty");
    // Same address and port with another protocol is a different VIP.
    let udp = two_vips(
        "[[vip]]\nname = \"dns\"\naddress = \"10.10.0.100\"\nport = 80\nprotocol = \"udp\"\n[[vip.backend]]\naddress = \"10.10.0.21\"\n",
    );
    assert!(problems(&udp).is_empty());
}

#[test]
fn vip_addresses_are_checked() {
    // An IPv6 VIP needs IPv6 backends (6in4 is refused).
    let v6 = GOOD
        .replace("\"192.168.0.0/16\"]", "\"192.168.0.0/16\", \"fc00::/7\"]")
        .replace("address = \"10.10.0.100\"", "address = \"fd00::100\"")
        .replace("10.10.0.21", "fd00::21")
        .replace("10.10.0.22", "fd00::22");
    let c = Config::parse(&v6, "t").expect("valid").config;
    assert!(c.vips[0].address.is_ipv6());
    rejects(
        &GOOD
            .replace("\"192.168.0.0/16\"]", "\"192.168.0.0/16\", \"fc00::/7\"]")
            .replace("address = \"10.10.0.100\"", "address = \"fd00::100\"")
            .replace("10.10.0.22", "fd00::22"),
        "vip[0].backend[0].address: 10.10.0.21 is IPv4 but the VIP is IPv6: IPv6-in-IPv4 is not supported (give the VIP IPv6 backends)",
    );
    rejects(
        &v6.replace("address = \"fd00::100\"", "address = \"ff02::1\""),
        "vip[0].address: ff02::1 cannot be a VIP",
    );
    rejects(
        &GOOD.replace("address = \"10.10.0.100\"", "address = \"0.0.0.0\""),
        "vip[0].address: 0.0.0.0 cannot be a VIP",
    );
}

/// GOOD with its health check's `kind = "tcp"` line replaced by `lines`.
fn check(lines: &str) -> String {
    GOOD.replace("  kind = \"tcp\"\n", &format!("  {lines}\n"))
}

#[test]
fn http_and_udp_checks_parse_with_their_defaults() {
    let hc = |text: &str| {
        Config::parse(text, "t").expect("valid").config.vips[0]
            .health_check
            .clone()
    };
    let http = hc(&check("kind = \"http\""));
    assert_eq!(
        (http.kind, http.port, http.path.as_str(), http.expect_status),
        (HealthCheckKind::Http, 8080, "/", 200)
    );
    let http = hc(&check(
        "kind = \"http\"\npath = \"/healthz?full=1\"\nexpect_status = 204",
    ));
    assert_eq!(
        (http.path.as_str(), http.expect_status),
        ("/healthz?full=1", 204)
    );
    let udp = hc(&check("kind = \"udp\""));
    assert_eq!(
        (udp.kind, udp.payload.as_str()),
        (HealthCheckKind::Udp, DEFAULT_UDP_PAYLOAD)
    );
    let udp = hc(&check("kind = \"udp\"\npayload = \"héllo\""));
    assert_eq!(udp.payload, "héllo");
    // The limit counts UTF-8 bytes: 700 two-byte characters fit exactly.
    let udp = hc(&check(&format!(
        "kind = \"udp\"\npayload = \"{}\"",
        "é".repeat(700)
    )));
    assert_eq!(udp.payload.len(), MAX_UDP_PAYLOAD);
}

#[test]
fn http_and_udp_check_rules() {
    rejects(
        &check("kind = \"http\"\npath = \"healthz\""),
        "vip[0].health_check.path: \"healthz\" does not start with \"/\"",
    );
    rejects(
        &check("kind = \"http\"\npath = \"/a b\""),
        "vip[0].health_check.path: \"/a b\" has a space, a \"#\" or a non-ASCII character (percent-encode it)",
    );
    rejects(
        &check("kind = \"http\"\npath = \"/status#top\""),
        "vip[0].health_check.path: \"/status#top\" has a space, a \"#\" or a non-ASCII character (percent-encode it)",
    );
    rejects(
        &check("kind = \"http\"\npath = \"/café\""),
        "vip[0].health_check.path: \"/café\" has a space, a \"#\" or a non-ASCII character (percent-encode it)",
    );
    rejects(
        &check("kind = \"http\"\nexpect_status = 99"),
        "vip[0].health_check.expect_status: 99 is out of range (100 to 599)",
    );
    rejects(
        &check("kind = \"http\"\nexpect_status = 600"),
        "vip[0].health_check.expect_status: 600 is out of range (100 to 599)",
    );
    rejects(
        &check("kind = \"udp\"\npayload = \"\""),
        "vip[0].health_check.payload: must not be empty",
    );
    rejects(
        &check(&format!(
            "kind = \"udp\"\npayload = \"{}\"",
            "x".repeat(1401)
        )),
        "vip[0].health_check.payload: is 1401 bytes, at most 1400",
    );
    rejects(
        &check(&format!(
            "kind = \"udp\"\npayload = \"{}\"",
            "é".repeat(701)
        )),
        "vip[0].health_check.payload: is 1402 bytes, at most 1400",
    );
}

#[test]
fn health_check_keys_of_another_kind_are_errors() {
    rejects(
        &check("kind = \"tcp\"\npayload = \"ping\""),
        "vip[0].health_check.payload: applies to kind \"udp\" only",
    );
    rejects(
        &check("kind = \"http\"\npayload = \"ping\""),
        "vip[0].health_check.payload: applies to kind \"udp\" only",
    );
    rejects(
        &check("kind = \"udp\"\npath = \"/\""),
        "vip[0].health_check.path: applies to kind \"http\" only",
    );
    rejects(
        &check("kind = \"none\"\nexpect_status = 200"),
        "vip[0].health_check.expect_status: applies to kind \"http\" only",
    );
    assert_eq!(
        problems(&check("kind = \"udp\"\npath = \"/\"\nexpect_status = 200")),
        vec![
            "vip[0].health_check.path: applies to kind \"http\" only".to_string(),
            "vip[0].health_check.expect_status: applies to kind \"http\" only".to_string(),
        ]
    );
}

#[test]
fn health_check_rules() {
    rejects(
        &GOOD.replace("port = 8080", "port = 8080\npath = \"/\""),
        "vip[0].health_check.path: applies to kind \"http\" only",
    );
    rejects(
        &GOOD.replace("port = 8080", "port = 8080\nexpect_status = 200"),
        "vip[0].health_check.expect_status: applies to kind \"http\" only",
    );
    rejects(
        &GOOD.replace("timeout = \"500ms\"", "timeout = \"2s\""),
        "vip[0].health_check.timeout: 2s is longer than interval 1s",
    );
    rejects(
        &GOOD.replace("interval = \"1s\"", "interval = \"soon\""),
        "vip[0].health_check.interval: \"soon\" is not a duration (expected number at 0); write for example \"500ms\" or \"2s\"",
    );
    rejects(
        &GOOD.replace("timeout = \"500ms\"", "timeout = \"1ms\""),
        "vip[0].health_check.timeout: \"1ms\" is shorter than 10ms",
    );
    rejects(
        &GOOD.replace("interval = \"1s\"", "interval = \"2h\""),
        "vip[0].health_check.interval: \"2h\" is longer than 1h",
    );
    rejects(
        &GOOD.replace("rise = 2", "rise = 0"),
        "vip[0].health_check.rise: 0 is out of range (1 to 100)",
    );
    rejects(
        &GOOD.replace("fall = 3", "fall = 101"),
        "vip[0].health_check.fall: 101 is out of range (1 to 100)",
    );
}

#[test]
fn wildcard_port_vip_needs_a_health_check_port() {
    rejects(
        &GOOD
            .replace("port = 80\n", "port = 0\n")
            .replace("  port = 8080\n", ""),
        "vip[0].health_check.port: is required (and not 0) when the VIP's port is 0",
    );
}

#[test]
fn backend_rules() {
    rejects(
        &GOOD.replace("10.10.0.22", "10.10.0.21"),
        "vip[0].backend[1].address: 10.10.0.21 is listed twice in VIP \"internal-api\"",
    );
    // An IPv4 VIP may have IPv6 backends (IPv4-in-IPv6).
    assert!(problems(&GOOD.replace("10.10.0.22", "fd00::22")).is_empty());
    rejects(
        &GOOD.replace("10.10.0.22", "fd00::22").replace(
            "source_v4 = \"10.10.0.2\"",
            "source_v4 = \"10.10.0.2\"\nmtu = 1300",
        ),
        "encap.mtu: 1300 is below 1328 with IPv6 backends: IPv6 links carry 1280 bytes, plus up to 48 of encapsulation",
    );
    rejects(
        &GOOD.replace("10.10.0.22", "10.10.0.100"),
        "vip[0].backend[1].address: is the VIP's own address",
    );
    rejects(
        &GOOD.replace("10.10.0.22", "224.0.0.1"),
        "vip[0].backend[1].address: 224.0.0.1 cannot be a backend",
    );
    rejects(
        &GOOD.replace("weight = 2", "weight = 10001"),
        "vip[0].backend[1].weight: 10001 is out of range (0 to 10000)",
    );
}

#[test]
fn zero_weight_only_and_empty_vips_warn() {
    let loaded = Config::parse(
        &GOOD
            .replace("weight = 1", "weight = 0")
            .replace("weight = 2", "weight = 0"),
        "t",
    )
    .expect("valid");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "vip[0].backend: every backend of VIP \"internal-api\" has weight 0: it takes no new flow"
    );
    let no_backend = GOOD.split("  [[vip.backend]]").next().unwrap().to_string();
    let loaded = Config::parse(&no_backend, "t").expect("valid");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "vip[0].backend: VIP \"internal-api\" has no backend"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = GOOD
        .replace("65537", "65536")
        .replace("10.10.0.22", "10.10.0.21")
        .replace("rise = 2", "rise = 0");
    assert_eq!(problems(&text).len(), 3);
}

#[test]
fn primes() {
    let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
    assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(65537));
    assert!(!is_prime(65535));
}

#[test]
fn vip_allow_narrows_the_global_list() {
    let with = |list: &str| {
        GOOD.replacen(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\nallow = [{list}]\n"),
            1,
        )
    };
    let c = Config::parse(&with("\"10.20.0.0/16\", \"192.168.1.7/32\""), "t")
        .expect("valid")
        .config;
    assert_eq!(
        c.vips[0]
            .allow
            .as_ref()
            .map(|l| l.iter().map(ToString::to_string).collect::<Vec<_>>()),
        Some(vec![
            "10.20.0.0/16".to_string(),
            "192.168.1.7/32".to_string()
        ])
    );
    assert_eq!(
        Config::parse(GOOD, "t").expect("valid").config.vips[0].allow,
        None
    );
    rejects(
        &with("\"172.16.0.0/12\""),
        "vip[0].allow[0]: \"172.16.0.0/12\" is outside every source_filter.allow prefix: it could never match",
    );
    // Wider than the global /8 it overlaps: it would widen the perimeter.
    rejects(
        &with("\"10.0.0.0/7\""),
        "vip[0].allow[0]: \"10.0.0.0/7\" is outside every source_filter.allow prefix: it could never match",
    );
    rejects(
        &with("\"10.1.2.3/16\""),
        "vip[0].allow[0]: \"10.1.2.3/16\" has host bits set (did you mean 10.1.0.0/16?)",
    );
    rejects(
        &with(""),
        "vip[0].allow: is empty: every client would be refused (remove the key to use the global list)",
    );
    rejects(
        &with("\"10.1.0.0/16\", \"10.1.0.0/16\""),
        "vip[0].allow[1]: \"10.1.0.0/16\" is listed twice",
    );
    rejects(
        &with("\"fd00::/8\""),
        "vip[0].allow[0]: \"fd00::/8\" is not of the VIP's address family",
    );
}

#[test]
fn encap_mtu_and_the_too_big_rate_are_checked() {
    let c = Config::parse(GOOD, "t").expect("valid").config;
    assert_eq!(
        (c.encap_mtu, c.too_big_per_cpu),
        (None, DEFAULT_TOO_BIG_PER_CPU)
    );
    let text = GOOD.replace(
        "source_v4 = \"10.10.0.2\"",
        "source_v4 = \"10.10.0.2\"\nmtu = 1500\n\n[icmp]\ntoo_big_per_cpu = 0",
    );
    let c = Config::parse(&text, "t").expect("valid").config;
    assert_eq!((c.encap_mtu, c.too_big_per_cpu), (Some(1500), 0));
    rejects(
        &GOOD.replace(
            "source_v4 = \"10.10.0.2\"",
            "source_v4 = \"10.10.0.2\"\nmtu = 500",
        ),
        "encap.mtu: 500 is out of range (576 to 65535)",
    );
    rejects(
        &GOOD.replace("[maglev]", "[icmp]\ntoo_big_per_cpu = 2000000\n\n[maglev]"),
        "icmp.too_big_per_cpu: 2000000 is out of range (0 to 1000000)",
    );
}

#[test]
fn new_flow_rate_is_checked() {
    let c = Config::parse(GOOD, "t").expect("valid").config;
    assert_eq!(c.max_new_per_cpu, DEFAULT_MAX_NEW_PER_CPU);
    let c = Config::parse(
        &GOOD.replace(
            "max_entries = 1000",
            "max_entries = 1000\nmax_new_per_cpu = 5",
        ),
        "t",
    )
    .expect("valid")
    .config;
    assert_eq!(c.max_new_per_cpu, 5);
    rejects(
        &GOOD.replace(
            "max_entries = 1000",
            "max_entries = 1000\nmax_new_per_cpu = 0",
        ),
        "conntrack.max_new_per_cpu: 0 is out of range (1 to 100000000)",
    );
}

#[test]
fn scope_all_without_link_local_ipv6_sources_is_warned() {
    let warnings = |allow: &str| {
        let text = GOOD.replace("scope = \"vip\"", "scope = \"all\"").replace(
            "allow = [\"10.0.0.0/8\", \"192.168.0.0/16\"]",
            &format!("allow = [\"10.0.0.0/8\", \"192.168.0.0/16\"{allow}]"),
        );
        Config::parse(&text, "t")
            .expect("valid")
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let without = warnings("");
    assert_eq!(
        without,
        vec!["source_filter.allow: scope = \"all\" drops IPv6 neighbour discovery and Router Advertisements, which come from link-local sources (fe80::/10) that the list misses: add \"fe80::/10\" unless the interface carries no IPv6".to_string()]
    );
    assert!(warnings(", \"fe80::/10\"").is_empty());
    // scope = "vip" filters traffic to VIPs only: nothing to warn.
    let vip_scope = Config::parse(GOOD, "t").expect("valid");
    assert!(vip_scope.warnings.is_empty());
}
