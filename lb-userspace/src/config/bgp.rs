//! `[bgp]`: the node's AS, router id, timers and peers, as read
//! and as validated. The agent announces VIP addresses to the peers through
//! BIRD 2 (the `bgp` module announces).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use serde::Deserialize;

use super::validate::Validator;

/// Default `bgp.hold_time`: 9 s, so a node that dies
/// whole (no agent, no BIRD) leaves the routers' ECMP sets within 9 s;
/// keepalives go every 3 s.
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(9);
/// Smallest `bgp.hold_time`: 3 s (RFC 4271 section 4.2: 0 or at least 3).
pub const MIN_HOLD_TIME: Duration = Duration::from_secs(3);
/// Largest `bgp.hold_time`: the 16-bit field of the OPEN message, in
/// seconds (RFC 4271 section 4.2).
pub const MAX_HOLD_TIME: Duration = Duration::from_secs(65535);
/// Default `bgp.withdraw_delay`: how long a stopping agent keeps forwarding
/// after withdrawing its announcements.
pub const DEFAULT_WITHDRAW_DELAY: Duration = Duration::from_secs(2);
/// Largest `bgp.withdraw_delay`: a stop must end under a service manager's
/// stop timeout (systemd's default is 90 s).
pub const MAX_WITHDRAW_DELAY: Duration = Duration::from_secs(60);
/// Default `bgp.peer.port` (RFC 4271 section 8.2.1).
pub const DEFAULT_BGP_PORT: u16 = 179;
/// AS_TRANS (RFC 6793 section 9): a placeholder, never a real AS.
const AS_TRANS: i64 = 23456;
/// Most `[[bgp.peer]]` entries.
pub const MAX_BGP_PEERS: usize = 64;

/// `[bgp]` as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    local_as: i64,
    router_id: Option<String>,
    hold_time: Option<String>,
    withdraw_delay: Option<String>,
    #[serde(default, rename = "peer")]
    peers: Vec<RawBgpPeer>,
}

/// `[[bgp.peer]]` as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgpPeer {
    address: IpAddr,
    remote_as: i64,
    port: Option<i64>,
}

/// A validated `[bgp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    /// This node's AS number (4-octet, RFC 6793).
    pub local_as: u32,
    /// BGP identifier (RFC 4271 section 4.2); `None`: the outer IPv4 source
    /// of encapsulation (`encap.source_v4`, else the interface's first IPv4
    /// address).
    pub router_id: Option<Ipv4Addr>,
    /// Hold time offered in OPEN, whole seconds from 3 to 65535;
    /// keepalives every third of it.
    pub hold_time: Duration,
    /// On a stop without `--keep-attached`: time between the withdrawal of
    /// every announcement and the detach of the data plane.
    pub withdraw_delay: Duration,
    /// The routers, in file order, each address once.
    pub peers: Vec<BgpPeer>,
}

/// A validated `[[bgp.peer]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPeer {
    /// The router's address (the session's destination).
    pub address: IpAddr,
    /// The router's AS number.
    pub remote_as: u32,
    /// The router's TCP port.
    pub port: u16,
}

impl Validator {
    /// Checks `[bgp]`; `encap_source_v4` is the configured outer source,
    /// the router id's default when it is given.
    pub(super) fn bgp(&mut self, raw: &RawBgp, encap_source_v4: Option<Ipv4Addr>) -> BgpConfig {
        let local_as = self.as_number("bgp.local_as", raw.local_as);
        let router_id = match raw.router_id.as_deref().map(str::parse::<IpAddr>) {
            None => encap_source_v4,
            Some(Ok(IpAddr::V4(id))) if id.is_unspecified() || id.is_broadcast() => {
                self.error("bgp.router_id", format!("{id} cannot be a router id"));
                None
            }
            Some(Ok(IpAddr::V4(id))) => Some(id),
            Some(Ok(IpAddr::V6(id))) => {
                self.error(
                    "bgp.router_id",
                    format!("{id} is not an IPv4 address (a BGP identifier is 32 bits, RFC 4271 section 4.2)"),
                );
                None
            }
            Some(Err(_)) => {
                self.error(
                    "bgp.router_id",
                    format!(
                        "{:?} is not an IPv4 address",
                        raw.router_id.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
        };
        let hold_time = self.bgp_duration(
            "bgp.hold_time",
            raw.hold_time.as_deref(),
            DEFAULT_HOLD_TIME,
            (MIN_HOLD_TIME, MAX_HOLD_TIME),
        );
        if hold_time.subsec_nanos() != 0 {
            self.error(
                "bgp.hold_time",
                format!(
                    "{} is not a whole number of seconds (BGP counts it in seconds)",
                    humantime::format_duration(hold_time)
                ),
            );
        }
        let withdraw_delay = self.bgp_duration(
            "bgp.withdraw_delay",
            raw.withdraw_delay.as_deref(),
            DEFAULT_WITHDRAW_DELAY,
            (Duration::ZERO, MAX_WITHDRAW_DELAY),
        );
        if raw.peers.is_empty() {
            self.error(
                "bgp.peer",
                "no peer: add a [[bgp.peer]] (the router to announce the VIPs to)",
            );
        } else if raw.peers.len() > MAX_BGP_PEERS {
            self.error(
                "bgp.peer",
                format!("{} peers, at most {MAX_BGP_PEERS}", raw.peers.len()),
            );
        }
        let mut seen = HashSet::new();
        let mut peers = Vec::new();
        for (i, peer) in raw.peers.iter().enumerate() {
            let key = format!("bgp.peer[{i}]");
            let a = peer.address;
            let unusable = a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
            if unusable {
                self.error(format!("{key}.address"), format!("{a} cannot be a peer"));
            } else if matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                self.error(
                    format!("{key}.address"),
                    format!(
                        "{a} is an IPv6 link-local address, which needs an interface to reach: give the router's global or unique local address"
                    ),
                );
            } else if !seen.insert(a) {
                self.error(format!("{key}.address"), format!("{a} is listed twice"));
            }
            let remote_as = self.as_number(&format!("{key}.remote_as"), peer.remote_as);
            let port = match peer.port {
                None => DEFAULT_BGP_PORT,
                Some(p @ 1..=65535) => p as u16,
                Some(p) => {
                    self.error(
                        format!("{key}.port"),
                        format!("{p} is out of range (1 to 65535)"),
                    );
                    DEFAULT_BGP_PORT
                }
            };
            peers.push(BgpPeer {
                address: a,
                remote_as,
                port,
            });
        }
        BgpConfig {
            local_as,
            router_id,
            hold_time,
            withdraw_delay,
            peers,
        }
    }

    /// A 4-octet AS number (RFC 6793): 1 to 4294967295, not AS_TRANS.
    fn as_number(&mut self, key: &str, value: i64) -> u32 {
        match value {
            AS_TRANS => {
                self.error(
                    key,
                    "23456 is AS_TRANS (RFC 6793), a placeholder that no speaker may use as its own AS",
                );
                0
            }
            1..=0xffff_ffff => value as u32,
            _ => {
                self.error(key, format!("{value} is out of range (1 to 4294967295)"));
                0
            }
        }
    }

    /// A humantime duration in `range` (inclusive), `default` when absent.
    fn bgp_duration(
        &mut self,
        key: &str,
        text: Option<&str>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d < min || d > max => {
                self.error(
                    key,
                    format!(
                        "{text:?} is out of range ({} to {})",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    key,
                    format!("{text:?} is not a duration ({e}); write for example \"9s\""),
                );
                default
            }
        }
    }
}

#[cfg(test)]
#[path = "bgp_tests.rs"]
mod tests;
