//! `[nat]`: this node's SNAT addresses and ports, the NAT table's size, and
//! the idle timeout of established TCP translations, for the VIPs of
//! `mode = "nat"`; and the rule that keeps SNAT ports away from the host's
//! own sockets (health checks, BGP, API clients), whose source ports the
//! kernel takes from `net.ipv4.ip_local_port_range`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::Deserialize;

use super::validate::Validator;

/// Default `nat.max_entries`: translations the NAT table holds.
pub const DEFAULT_NAT_ENTRIES: u32 = 1 << 20;
/// Most `nat.max_entries` accepted (each translation is two entries of a
/// few dozen bytes).
pub const MAX_NAT_ENTRIES: u32 = 1 << 24;
/// Default `nat.tcp_timeout`: an established TCP translation idle this
/// long expires (IPVS keeps 900 s, Cilium's conntrack 6 h; an hour keeps
/// idle database and SSH sessions without holding ports for a day).
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Shortest and longest `nat.tcp_timeout` accepted.
pub const TCP_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(7 * 24 * 3600));
/// The lowest port a default SNAT range uses: below it are the well-known
/// ports services listen on.
pub const FIRST_SNAT_PORT: u16 = 1024;
/// Fewest ports a SNAT range may have.
pub const MIN_SNAT_PORTS: u32 = 1024;

/// A range of ports, both ends included (`"1024-32767"` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (not below `first`).
    pub last: u16,
}

impl PortRange {
    /// Parses `"A-B"` (1 <= A <= B <= 65535).
    ///
    /// # Errors
    /// The text is not two ports joined by `-`, or they are out of order.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a port range \"FIRST-LAST\" (1 to 65535)");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }

    /// Ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether the range holds no port (never, once parsed).
    pub fn is_empty(self) -> bool {
        self.last < self.first
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The SNAT ports of a node whose own sockets take their source ports from
/// `local` (`net.ipv4.ip_local_port_range`): `configured` when it does not
/// overlap `local`; by default the larger of the two ranges outside
/// `local`, from [`FIRST_SNAT_PORT`] up to it or from past it to 65535.
///
/// # Errors
/// `configured` overlaps `local` (a SNAT port could be one a health check
/// or an API client of the node uses), or no default range outside `local`
/// has [`MIN_SNAT_PORTS`].
pub fn snat_ports(configured: Option<PortRange>, local: PortRange) -> Result<PortRange, String> {
    if let Some(ports) = configured {
        if ports.overlaps(local) {
            return Err(format!(
                "nat.ports {ports} overlaps net.ipv4.ip_local_port_range {local}, where this host's own connections (health checks, BGP, API clients) take their source ports: choose ports outside it, or narrow the host's range"
            ));
        }
        return Ok(ports);
    }
    let below = (local.first > FIRST_SNAT_PORT).then(|| PortRange {
        first: FIRST_SNAT_PORT,
        last: local.first - 1,
    });
    let above = (local.last < u16::MAX).then(|| PortRange {
        first: local.last.max(FIRST_SNAT_PORT - 1) + 1,
        last: u16::MAX,
    });
    [below, above]
        .into_iter()
        .flatten()
        .filter(|r| r.len() >= MIN_SNAT_PORTS)
        .max_by_key(|r| r.len())
        .ok_or_else(|| {
            format!(
                "net.ipv4.ip_local_port_range {local} leaves fewer than {MIN_SNAT_PORTS} ports outside it for SNAT: set nat.ports, or narrow the host's range"
            )
        })
}

/// This host's `net.ipv4.ip_local_port_range` (it applies to IPv6 too).
///
/// # Errors
/// The file cannot be read or does not hold two ports.
pub fn local_port_range() -> Result<PortRange, String> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(first)), Some(Ok(last))) if first <= last => Ok(PortRange { first, last }),
        _ => Err(format!("{path} holds {text:?}, not two ports")),
    }
}

/// `[nat]` as serde reads it.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNat {
    #[serde(default)]
    pub(super) source_v4: Vec<IpAddr>,
    #[serde(default)]
    pub(super) source_v6: Vec<IpAddr>,
    pub(super) ports: Option<String>,
    pub(super) max_entries: Option<u32>,
    pub(super) tcp_timeout: Option<String>,
}

/// The validated `[nat]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// This node's IPv4 SNAT addresses; empty: the interface's first IPv4
    /// address.
    pub source_v4: Vec<Ipv4Addr>,
    /// This node's IPv6 SNAT addresses; empty: the interface's first global
    /// IPv6 address.
    pub source_v6: Vec<Ipv6Addr>,
    /// SNAT source ports; `None`: outside `net.ipv4.ip_local_port_range`
    /// ([`snat_ports`]).
    pub ports: Option<PortRange>,
    /// Translations the NAT table holds.
    pub max_entries: u32,
    /// Idle time after which an established TCP translation expires.
    pub tcp_timeout: Duration,
}

impl Validator {
    /// `[nat]`: addresses of the right family, each once and usable; a
    /// port range of at least [`MIN_SNAT_PORTS`] ports; sizes and timeout
    /// in range.
    pub(super) fn nat(&mut self, raw: &RawNat) -> NatConfig {
        let mut source_v4 = Vec::new();
        let mut source_v6 = Vec::new();
        for (key, list, v4) in [
            ("nat.source_v4", &raw.source_v4, true),
            ("nat.source_v6", &raw.source_v6, false),
        ] {
            if list.len() > lb_common::MAX_NAT_SOURCES {
                self.error(
                    key,
                    format!(
                        "{} addresses: at most {} per family",
                        list.len(),
                        lb_common::MAX_NAT_SOURCES
                    ),
                );
            }
            for (i, addr) in list.iter().enumerate() {
                let key = format!("{key}[{i}]");
                if list[..i].contains(addr) {
                    self.error(key, format!("{addr} is listed twice"));
                    continue;
                }
                match *addr {
                    a if a.is_unspecified() || a.is_multicast() || a.is_loopback() => {
                        self.error(key, format!("{a} cannot be a SNAT address"));
                    }
                    IpAddr::V4(a) if v4 => source_v4.push(a),
                    IpAddr::V6(a) if !v4 => source_v6.push(a),
                    a => self.error(
                        key,
                        format!("{a} is not an {} address", if v4 { "IPv4" } else { "IPv6" }),
                    ),
                }
            }
        }
        let ports = raw
            .ports
            .as_deref()
            .and_then(|text| match PortRange::parse(text) {
                Ok(r) if r.len() < MIN_SNAT_PORTS => {
                    self.error(
                        "nat.ports",
                        format!("{r} has {} ports, at least {MIN_SNAT_PORTS}", r.len()),
                    );
                    None
                }
                Ok(r) => Some(r),
                Err(e) => {
                    self.error("nat.ports", e);
                    None
                }
            });
        let max_entries = raw.max_entries.unwrap_or(DEFAULT_NAT_ENTRIES);
        if !(1..=MAX_NAT_ENTRIES).contains(&max_entries) {
            self.error(
                "nat.max_entries",
                format!("{max_entries} is out of range (1 to {MAX_NAT_ENTRIES})"),
            );
        }
        let tcp_timeout = self.duration(
            "nat.tcp_timeout",
            raw.tcp_timeout.as_deref(),
            DEFAULT_TCP_TIMEOUT,
        );
        let (least, most) = TCP_TIMEOUT_RANGE;
        if !(least..=most).contains(&tcp_timeout) {
            self.error(
                "nat.tcp_timeout",
                format!(
                    "{} is out of range ({} to {})",
                    humantime::format_duration(tcp_timeout),
                    humantime::format_duration(least),
                    humantime::format_duration(most)
                ),
            );
        }
        NatConfig {
            source_v4,
            source_v6,
            ports,
            max_entries,
            tcp_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PortRange, snat_ports};
    use crate::config::{Config, tests::problems};

    const LINUX_DEFAULT: PortRange = PortRange {
        first: 32768,
        last: 60999,
    };

    #[test]
    fn port_ranges_parse_and_compare() {
        assert_eq!(
            PortRange::parse("1024-32767"),
            Ok(PortRange {
                first: 1024,
                last: 32767
            })
        );
        for bad in ["", "80", "0-10", "10-9", "1-70000", "a-b"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        let r = PortRange::parse("1024-32767").expect("range");
        assert_eq!(r.len(), 31744);
        assert!(r.overlaps(PortRange::parse("32767-40000").expect("range")));
        assert!(!r.overlaps(LINUX_DEFAULT));
    }

    #[test]
    fn default_snat_ports_lie_outside_the_host_s_range_and_an_overlap_is_refused() {
        // Linux's default 32768-60999: 1024-32767 is larger than 61000-65535.
        assert_eq!(
            snat_ports(None, LINUX_DEFAULT),
            Ok(PortRange {
                first: 1024,
                last: 32767
            })
        );
        // A host range starting low leaves the ports above it.
        let low = PortRange {
            first: 1024,
            last: 40000,
        };
        assert_eq!(
            snat_ports(None, low),
            Ok(PortRange {
                first: 40001,
                last: 65535
            })
        );
        let all = PortRange {
            first: 1024,
            last: 65000,
        };
        assert!(snat_ports(None, all).is_err(), "535 ports are too few");
        let err =
            snat_ports(PortRange::parse("30000-40000").ok(), LINUX_DEFAULT).expect_err("overlap");
        assert!(
            err.contains("overlaps net.ipv4.ip_local_port_range 32768-60999"),
            "{err}"
        );
        assert_eq!(
            snat_ports(PortRange::parse("61000-65535").ok(), LINUX_DEFAULT),
            PortRange::parse("61000-65535")
        );
    }

    #[test]
    fn the_nat_section_is_read_with_defaults_and_every_error_named() {
        let vip = "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.21\"\n";
        let c = Config::parse(vip, "t").expect("valid").config;
        assert_eq!(c.nat.max_entries, super::DEFAULT_NAT_ENTRIES);
        assert_eq!(c.nat.tcp_timeout, super::DEFAULT_TCP_TIMEOUT);
        assert_eq!(c.nat.ports, None);
        let text = format!(
            "[nat]\nsource_v4 = [\"10.0.0.2\", \"fd00::2\", \"10.0.0.2\"]\nsource_v6 = [\"10.0.0.3\"]\nports = \"2000-2100\"\nmax_entries = 0\ntcp_timeout = \"1s\"\n{vip}"
        );
        let found = problems(&text);
        for expected in [
            "nat.source_v4[1]: fd00::2 is not an IPv4 address",
            "nat.source_v4[2]: 10.0.0.2 is listed twice",
            "nat.source_v6[0]: 10.0.0.3 is not an IPv6 address",
            "nat.ports: 2000-2100 has 101 ports, at least 1024",
            "nat.max_entries: 0 is out of range (1 to 16777216)",
            "nat.tcp_timeout: 1s is out of range (10s to 7days)",
        ] {
            assert!(
                found.iter().any(|p| p == expected),
                "{expected:?} in {found:?}"
            );
        }
        assert_eq!(found.len(), 6, "{found:?}");
    }
}
