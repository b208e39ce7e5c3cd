//! BIRD 2's configuration for one node, as text: the announced VIP
//! addresses as `protocol static` blackhole routes (never exported to the
//! node's kernel: there is no `protocol kernel`), each family exported only
//! to the peers of that family (an IPv4 peer gets the /32s, an IPv6 peer
//! the /128s) with `next hop self`, nothing imported.
//!
//! Only the static routes change with health, so `birdc configure` keeps
//! every session up (BIRD restarts a protocol only when its own options
//! change). Both static protocols are always present, and a peer's one
//! channel depends only on its address (which names its protocol), for the
//! same reason.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use crate::config::{BgpConfig, BgpPeer};

/// The static protocol holding the announced IPv4 addresses.
pub const STATIC_V4: &str = "lb_vips4";
/// The static protocol holding the announced IPv6 addresses.
pub const STATIC_V6: &str = "lb_vips6";
/// Seconds between two connection attempts to a peer that is not up
/// (BIRD's default is 120): a router that starts after the node learns its
/// routes within this.
pub const CONNECT_RETRY_SECONDS: u32 = 5;

/// What BIRD is configured with: the `[bgp]` settings and the router id
/// chosen for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `[bgp]`.
    pub bgp: BgpConfig,
    /// The BGP identifier: `bgp.router_id`, else the outer IPv4 source.
    pub router_id: Ipv4Addr,
}

/// BIRD's protocol name for `peer`: `lb_peer_` and its address with
/// `.` and `:` as `_` (stable across reloads that add or remove other
/// peers, so their sessions are untouched).
pub fn protocol_name(peer: &BgpPeer) -> String {
    let addr: String = peer
        .address
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("lb_peer_{addr}")
}

/// The configuration announcing `addresses` (each as /32 or /128) with
/// `settings`, each address to the peers of its family; `interface` names
/// the agent in a comment.
pub fn render(settings: &Settings, addresses: &[IpAddr], interface: &str) -> String {
    let bgp = &settings.bgp;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `lb run` on {interface}; rewritten on every change of the announced VIP addresses. Do not edit."
    );
    let _ = writeln!(out, "router id {};", settings.router_id);
    // Epoch seconds in `show protocols`: the agent computes session uptimes.
    let _ = writeln!(out, "timeformat protocol \"%s\";");
    let _ = writeln!(
        out,
        "log stderr {{ info, remote, warning, error, auth, fatal, bug }};"
    );
    let _ = writeln!(out, "protocol device lb_device {{ }}");
    for (name, v4) in [(STATIC_V4, true), (STATIC_V6, false)] {
        let _ = writeln!(
            out,
            "protocol static {name} {{\n  {};",
            if v4 { "ipv4" } else { "ipv6" }
        );
        for addr in addresses.iter().filter(|a| a.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            let _ = writeln!(out, "  route {addr}/{len} blackhole;");
        }
        let _ = writeln!(out, "}}");
    }
    for peer in &bgp.peers {
        let (family, vips) = if peer.address.is_ipv4() {
            ("ipv4", STATIC_V4)
        } else {
            ("ipv6", STATIC_V6)
        };
        let _ = writeln!(
            out,
            "protocol bgp {} {{\n  local as {};\n  neighbor {} port {} as {};\n  hold time {};\n  keepalive time {};\n  connect delay time 1;\n  connect retry time {CONNECT_RETRY_SECONDS};\n  error wait time 1, 30;\n  {family} {{ import none; export where proto = \"{vips}\"; next hop self; }};\n}}",
            protocol_name(peer),
            bgp.local_as,
            peer.address,
            peer.port,
            peer.remote_as,
            bgp.hold_time.as_secs(),
            (bgp.hold_time.as_secs() / 3).max(1),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Settings {
        Settings {
            bgp: BgpConfig {
                local_as: 65001,
                router_id: None,
                hold_time: Duration::from_secs(9),
                withdraw_delay: Duration::from_secs(2),
                peers: vec![
                    BgpPeer {
                        address: "10.77.0.1".parse().unwrap(),
                        remote_as: 65000,
                        port: 179,
                    },
                    BgpPeer {
                        address: "fd00::1".parse().unwrap(),
                        remote_as: 65002,
                        port: 1179,
                    },
                ],
            },
            router_id: Ipv4Addr::new(10, 77, 0, 2),
        }
    }

    #[test]
    fn announced_addresses_are_static_routes_exported_to_the_peers_of_their_family() {
        let addrs: Vec<IpAddr> = vec!["10.1.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()];
        let text = render(&settings(), &addrs, "eth0");
        for line in [
            "router id 10.77.0.2;",
            "protocol static lb_vips4 {\n  ipv4;\n  route 10.1.0.1/32 blackhole;\n}",
            "protocol static lb_vips6 {\n  ipv6;\n  route fd00:1::1/128 blackhole;\n}",
            "protocol bgp lb_peer_10_77_0_1 {\n  local as 65001;\n  neighbor 10.77.0.1 port 179 as 65000;\n  hold time 9;\n  keepalive time 3;",
            "neighbor fd00::1 port 1179 as 65002;",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        // Each peer has the channel of its own family only: an IPv6 route
        // sent to an IPv4 peer would carry a next hop it cannot use.
        let peer = |name: &str| {
            let start = text.find(&format!("protocol bgp {name} {{")).expect(name);
            let end = start + text[start..].find("\n}").expect("end");
            text[start..end].to_string()
        };
        let v4 = peer("lb_peer_10_77_0_1");
        assert!(
            v4.contains(
                "  ipv4 { import none; export where proto = \"lb_vips4\"; next hop self; };"
            ),
            "{v4}"
        );
        assert!(!v4.contains("ipv6") && !v4.contains("lb_vips6"), "{v4}");
        let v6 = peer("lb_peer_fd00__1");
        assert!(
            v6.contains(
                "  ipv6 { import none; export where proto = \"lb_vips6\"; next hop self; };"
            ),
            "{v6}"
        );
        assert!(!v6.contains("ipv4") && !v6.contains("lb_vips4"), "{v6}");
        assert!(
            !text.contains("protocol kernel"),
            "nothing in the node's kernel"
        );
        assert_eq!(text.matches("protocol bgp ").count(), 2);
    }

    #[test]
    fn only_the_static_routes_differ_between_announcement_sets() {
        let s = settings();
        let all = render(&s, &["10.1.0.1".parse().unwrap()], "eth0");
        let none = render(&s, &[], "eth0");
        assert!(
            none.contains("protocol static lb_vips4 {\n  ipv4;\n}"),
            "{none}"
        );
        let differing: Vec<&str> = all
            .lines()
            .filter(|l| !none.lines().any(|m| m == *l))
            .collect();
        assert_eq!(differing, ["  route 10.1.0.1/32 blackhole;"]);
    }
}
