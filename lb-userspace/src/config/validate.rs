//! Validation: a raw configuration checked as a whole into a typed
//! [`Config`], collecting every error and warning with its key.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use lb_common::MAX_TABLE_SIZE;

use super::{schema::*, *};
use crate::config::sizing::{self, Sizing};

#[derive(Default)]
pub(super) struct Validator {
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl Validator {
    pub(super) fn error(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub(super) fn warn(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        if let Some(interface) = &raw.interface
            && (interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']))
        {
            self.error(
                "interface",
                format!("{interface:?} is not a valid interface name"),
            );
        }
        let (api_listen, api_max_connections) = self.api(&raw.api);
        let allow = self.allow(&raw.source_filter);
        let (encap_source_v4, encap_source_v6, gue_port) = self.encap(&raw.encap);
        let table_size = self.table_size(&raw.maglev);
        let conntrack_entries = raw
            .conntrack
            .max_entries
            .unwrap_or(DEFAULT_CONNTRACK_ENTRIES);
        if conntrack_entries == 0 {
            self.error("conntrack.max_entries", "must be at least 1");
        }
        let sizing = self.sizing(&raw.maglev, table_size, conntrack_entries, raw.vips.len());
        self.no_effect(&raw);
        let nat = self.nat(&raw.nat);
        let vips = self.vips(raw.vips, &allow, table_size);
        let backends: usize = vips.iter().map(|v| v.backends.len()).sum();
        if backends > lb_common::MAX_BACKENDS as usize {
            self.error(
                "vip",
                format!(
                    "{backends} backends over all VIPs, above the data plane's limit of {} (one id per VIP and backend)",
                    lb_common::MAX_BACKENDS
                ),
            );
        }
        if vips.is_empty() {
            self.warn(
                "vip",
                if raw.allow_empty {
                    "no VIP: the data plane forwards nothing (allowed by allow_empty = true)"
                } else {
                    "no VIP: a running agent refuses to reload to this (it would remove every VIP); set allow_empty = true if that is meant"
                },
            );
        }
        let encap_mtu = self.encap_mtu(&raw.encap);
        let v6_backend = vips
            .iter()
            .flat_map(|v| &v.backends)
            .any(|b| b.address.is_ipv6());
        if let Some(mtu) = encap_mtu
            && v6_backend
            && u32::from(mtu) < MIN_ENCAP_MTU_V6
        {
            self.error(
                "encap.mtu",
                format!(
                    "{mtu} is below {MIN_ENCAP_MTU_V6} with IPv6 backends: IPv6 links carry 1280 bytes, plus up to 48 of encapsulation"
                ),
            );
        }
        let too_big_per_cpu = self.too_big_per_cpu(&raw.icmp);
        let max_new_per_cpu = raw
            .conntrack
            .max_new_per_cpu
            .unwrap_or(DEFAULT_MAX_NEW_PER_CPU);
        if !(1..=MAX_MAX_NEW_PER_CPU).contains(&max_new_per_cpu) {
            self.error(
                "conntrack.max_new_per_cpu",
                format!("{max_new_per_cpu} is out of range (1 to {MAX_MAX_NEW_PER_CPU})"),
            );
        }
        let own_prefixes: usize = vips
            .iter()
            .filter_map(|v| v.allow.as_ref())
            .map(Vec::len)
            .sum();
        if own_prefixes > lb_common::MAX_VIP_SOURCE_PREFIXES as usize {
            self.error(
                "vip",
                format!(
                    "{own_prefixes} prefixes in VIPs' own allow lists, at most {}",
                    lb_common::MAX_VIP_SOURCE_PREFIXES
                ),
            );
        }
        let bgp = raw.bgp.as_ref().map(|b| self.bgp(b, encap_source_v4));
        // The NAT table is preallocated (an LRU hash): sized only when a
        // VIP translates.
        let translations = if vips.iter().any(|v| v.mode != super::VipMode::Dsr) {
            nat.max_entries
        } else {
            1
        };
        let sizing = sizing.with_nat(translations);
        Config {
            interface: raw.interface,
            xdp_mode: raw.xdp_mode,
            allow_empty: raw.allow_empty,
            api_listen,
            api_max_connections,
            allow,
            scope: raw.source_filter.scope,
            encap: raw.encap.kind,
            encap_mtu,
            too_big_per_cpu,
            encap_source_v4,
            encap_source_v6,
            gue_port,
            table_size,
            conntrack_entries,
            max_new_per_cpu,
            sizing,
            vips,
            nat,
            bgp,
        }
    }

    /// `maglev.max_vips` and the map sizes it implies, checked against the
    /// data plane's limits and the VIPs configured.
    fn sizing(
        &mut self,
        maglev: &RawMaglev,
        table_size: u32,
        conntrack_entries: u32,
        vip_count: usize,
    ) -> Sizing {
        let max_vips = maglev
            .max_vips
            .unwrap_or_else(|| sizing::default_max_vips(table_size));
        if max_vips == 0 {
            self.error("maglev.max_vips", "must be at least 1");
        }
        if max_vips > 0 && vip_count > max_vips as usize {
            let why = if maglev.max_vips.is_some() {
                String::new()
            } else {
                format!(
                    " (the default: the most whose tables fit {} at table size {table_size})",
                    sizing::human_bytes(sizing::DEFAULT_MAGLEV_BUDGET)
                )
            };
            self.error(
                "vip",
                format!("{vip_count} VIPs, above maglev.max_vips = {max_vips}{why}"),
            );
        }
        match Sizing::new(table_size, max_vips.max(1), conntrack_entries.max(1)) {
            Ok(s) => s,
            Err(e) => {
                let key = match e {
                    sizing::SizingError::ConntrackTooLarge(_) => "conntrack.max_entries",
                    _ => "maglev.max_vips",
                };
                self.error(key, e.to_string());
                Sizing::new(3, 1, 1).expect("the smallest data plane fits")
            }
        }
    }

    /// Warns about keys that have no effect with the settings chosen.
    fn no_effect(&mut self, raw: &RawConfig) {
        let v6_backend = raw
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .any(|b| b.address.is_ipv6());
        if raw.encap.source_v6.is_some() && !v6_backend {
            self.warn(
                "encap.source_v6",
                "has no effect: no backend is an IPv6 address",
            );
        }
        if raw.encap.gue_port.is_some() && raw.encap.kind != EncapKind::Gue {
            self.warn(
                "encap.gue_port",
                format!(
                    "has no effect with encap.kind = \"{}\"",
                    raw.encap.kind.name()
                ),
            );
        }
    }

    fn api(&mut self, api: &RawApi) -> (SocketAddr, u32) {
        let max = api.max_connections.unwrap_or(DEFAULT_API_MAX_CONNECTIONS);
        if !(1..=MAX_API_CONNECTIONS).contains(&max) {
            self.error(
                "api.max_connections",
                format!("{max} is out of range (1 to {MAX_API_CONNECTIONS})"),
            );
        }
        let default: SocketAddr = DEFAULT_API_LISTEN.parse().expect("constant parses");
        let Some(listen) = &api.listen else {
            return (default, max);
        };
        let listen = match listen.parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.ip().is_loopback() {
                } else if api.allow_remote {
                    self.warn("api.listen", format!("{addr} is not a loopback address: the API (read-only, without authentication) is reachable from the network"));
                } else {
                    self.error("api.listen", format!("{addr} is not a loopback address and the API has no authentication: set api.allow_remote = true to expose it anyway"));
                }
                addr
            }
            Err(_) => {
                self.error("api.listen", format!("{listen:?} is not an address:port"));
                default
            }
        };
        (listen, max)
    }

    fn allow(&mut self, filter: &RawSourceFilter) -> Vec<IpNet> {
        let given = filter.allow.clone();
        let texts: Vec<String> = given
            .clone()
            .unwrap_or_else(|| DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect());
        if given.is_some() && texts.is_empty() {
            self.error(
                "source_filter.allow",
                "is empty: every packet to a VIP would be dropped",
            );
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let key = format!("source_filter.allow[{i}]");
            match text.parse::<IpNet>() {
                Ok(net) if net.trunc() != net => {
                    self.error(
                        key,
                        format!("{text:?} has host bits set (did you mean {}?)", net.trunc()),
                    );
                }
                Ok(net) => {
                    if !seen.insert(net) {
                        self.error(key, format!("{text:?} is listed twice"));
                    } else {
                        out.push(net);
                    }
                }
                Err(_) => self.error(key, format!("{text:?} is not a prefix (address/length)")),
            }
        }
        if out.len() > lb_common::MAX_SOURCE_PREFIXES as usize {
            self.error(
                "source_filter.allow",
                format!(
                    "has {} prefixes, at most {}",
                    out.len(),
                    lb_common::MAX_SOURCE_PREFIXES
                ),
            );
        }
        // With scope = "all" the filter takes every packet on the interface,
        // IPv6 neighbour discovery and Router Advertisements included, and
        // those come from link-local addresses.
        let link_local: IpAddr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into();
        if filter.scope == FilterScope::All && !out.iter().any(|net| net.contains(&link_local)) {
            self.warn(
                "source_filter.allow",
                "scope = \"all\" drops IPv6 neighbour discovery and Router Advertisements, which come from link-local sources (fe80::/10) that the list misses: add \"fe80::/10\" unless the interface carries no IPv6",
            );
        }
        out
    }

    fn encap(&mut self, encap: &RawEncap) -> (Option<Ipv4Addr>, Option<Ipv6Addr>, u16) {
        let v4 = match encap.source_v4 {
            Some(IpAddr::V4(a)) => Some(a),
            Some(IpAddr::V6(a)) => {
                self.error("encap.source_v4", format!("{a} is not an IPv4 address"));
                None
            }
            None => None,
        };
        let v6 = match encap.source_v6 {
            Some(IpAddr::V6(a)) => Some(a),
            Some(IpAddr::V4(a)) => {
                self.error("encap.source_v6", format!("{a} is not an IPv6 address"));
                None
            }
            None => None,
        };
        let gue_port = encap.gue_port.unwrap_or(DEFAULT_GUE_PORT);
        if gue_port == 0 {
            self.error("encap.gue_port", "must not be 0");
        }
        (v4, v6, gue_port)
    }

    fn encap_mtu(&mut self, encap: &RawEncap) -> Option<u16> {
        let mtu = encap.mtu?;
        if !(MIN_ENCAP_MTU..=u32::from(u16::MAX)).contains(&mtu) {
            self.error(
                "encap.mtu",
                format!("{mtu} is out of range ({MIN_ENCAP_MTU} to 65535)"),
            );
            return None;
        }
        Some(mtu as u16)
    }

    fn too_big_per_cpu(&mut self, icmp: &RawIcmp) -> u32 {
        let rate = icmp.too_big_per_cpu.unwrap_or(DEFAULT_TOO_BIG_PER_CPU);
        if rate > MAX_TOO_BIG_PER_CPU {
            self.error(
                "icmp.too_big_per_cpu",
                format!("{rate} is out of range (0 to {MAX_TOO_BIG_PER_CPU})"),
            );
        }
        rate
    }

    fn table_size(&mut self, maglev: &RawMaglev) -> u32 {
        let m = maglev.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !(3..=MAX_TABLE_SIZE).contains(&m) {
            self.error(
                "maglev.table_size",
                format!("{m} is out of range (3 to {MAX_TABLE_SIZE})"),
            );
        } else if !is_prime(m) {
            self.error(
                "maglev.table_size",
                format!("{m} is not prime (Maglev needs a prime table size)"),
            );
        }
        m
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d < Duration::from_millis(10) => {
                self.error(key, format!("{text:?} is shorter than 10ms"));
                default
            }
            Ok(d) if d > Duration::from_secs(3600) => {
                self.error(key, format!("{text:?} is longer than 1h"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}); write for example \"500ms\" or \"2s\""
                    ),
                );
                default
            }
        }
    }
}

/// Whether `addr` can be a VIP or a backend: not unspecified, loopback,
/// multicast or broadcast.
pub(super) fn usable_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
    }
}

/// Whether `n` is prime (trial division; `n` is at most a few million).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
