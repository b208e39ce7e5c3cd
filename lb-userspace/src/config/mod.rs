//! Configuration: the TOML schema (docs/configuration.md), parsed with serde
//! (`deny_unknown_fields`), then validated as a whole into a typed [`Config`].
//!
//! Validation collects every error, each naming its key and the reason, so
//! `lb check` can print them all; a configuration with any error is rejected
//! whole.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use sizing::Sizing;

mod bgp;
mod mode;
pub mod nat;
mod read;
mod schema;
pub mod sizing;
mod validate;
mod vips;

pub use bgp::{BgpConfig, BgpPeer, DEFAULT_BGP_PORT, DEFAULT_HOLD_TIME, DEFAULT_WITHDRAW_DELAY};
pub use read::read_file;
use schema::RawConfig;
use validate::Validator;
pub use validate::is_prime;

/// Default `maglev.table_size`: the prime Katran and the Maglev paper use.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Default `conntrack.max_entries` (flows).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 1 << 20;
/// Default `api.listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9470";
/// Default `api.max_connections`: concurrent API clients.
pub const DEFAULT_API_MAX_CONNECTIONS: u32 = 256;
/// Largest `api.max_connections` accepted: the API must leave file
/// descriptors to health checks even under the systemd default limit (1024).
pub const MAX_API_CONNECTIONS: u32 = 512;
/// Largest configuration file read, in bytes (1 MiB): more is refused
/// rather than read (a `/dev/zero` or a runaway generator would otherwise
/// grow the agent without bound).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Default `icmp.too_big_per_cpu`: ICMP "too big" messages per second per CPU.
pub const DEFAULT_TOO_BIG_PER_CPU: u32 = 1000;
/// Default `conntrack.max_new_per_cpu`: new flows recorded per second per
/// CPU (Katran's flood threshold, 125k new flows/s/CPU).
pub const DEFAULT_MAX_NEW_PER_CPU: u32 = 125_000;
/// Largest `conntrack.max_new_per_cpu`.
pub const MAX_MAX_NEW_PER_CPU: u32 = 100_000_000;
/// Largest `icmp.too_big_per_cpu`.
pub const MAX_TOO_BIG_PER_CPU: u32 = 1_000_000;
/// Smallest `encap.mtu`: an outer header, a minimal inner header and room
/// for a quoted packet (RFC 791's 576 bytes every host accepts).
pub const MIN_ENCAP_MTU: u32 = 576;
/// Smallest `encap.mtu` with IPv6 backends: the IPv6 minimum MTU (RFC
/// 8200) plus the largest encapsulation overhead (IPv6 + UDP, 48 bytes).
pub const MIN_ENCAP_MTU_V6: u32 = 1280 + 48;
/// Default `encap.gue_port`.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Largest backend weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most backends of one VIP.
pub const MAX_BACKENDS_PER_VIP: usize = 1000;
/// Default `health_check.path` of an `http` check.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// Default `health_check.expect_status` of an `http` check.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Default `health_check.payload` of a `udp` check.
pub const DEFAULT_UDP_PAYLOAD: &str = "ping";
/// Longest `health_check.payload` in bytes: one datagram that fits a
/// 1500-byte MTU with IPv6 and UDP headers and some room for tunnels.
pub const MAX_UDP_PAYLOAD: usize = 1400;
/// Sources allowed when `source_filter.allow` is omitted: the private ranges
/// (RFC 1918, RFC 6598 shared space, RFC 4193 unique local).
pub const DEFAULT_ALLOW: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// One problem found in a configuration: the key it is about and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, for example `vip[1].backend[0].address`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a directory, a
    /// socket): reading it could block or never end.
    #[error("{path} is a {kind}, not a regular file: refusing to read it")]
    NotRegular {
        /// The file.
        path: String,
        /// What it is: `FIFO`, `character device`, ...
        kind: &'static str,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is {size} bytes or more, above the limit of {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size (at least), in bytes.
        size: u64,
    },
    /// Not valid TOML, or not the schema's shape (unknown key, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<input>`).
        path: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// Well-formed but invalid; every problem found.
    #[error("{} error(s) in {path}:\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (or `<input>`).
        path: String,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
}

/// How the XDP program is attached (`xdp_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native when the driver supports it, else generic (the kernel chooses).
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

/// Which packets the source filter applies to (`source_filter.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterScope {
    /// Packets addressed to a VIP address.
    #[default]
    Vip,
    /// Every IPv4 packet on the interface.
    All,
}

/// Encapsulation toward backends (`encap.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    /// IPv4-in-IPv4 (RFC 2003).
    #[default]
    Ipip,
    /// Generic UDP Encapsulation, variant 1 (the inner IP packet right
    /// after UDP, to `encap.gue_port`).
    Gue,
}

impl EncapKind {
    /// The kind's name in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }
}

/// L4 protocol of a VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::PROTO_TCP,
            Self::Udp => lb_common::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// What to do with a VIP's packets when no backend is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNoBackend {
    /// Drop them (counted).
    #[default]
    Drop,
    /// Pass them to the load balancer's kernel.
    Pass,
}

/// How a VIP reaches its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipMode {
    /// Direct server return: packets are encapsulated toward the backend,
    /// which carries the VIP and answers clients directly.
    #[default]
    Dsr,
    /// Full NAT: client -> VIP:port becomes SNAT address -> backend:port,
    /// and the reply is translated back (backends need nothing).
    Nat,
    /// Destination NAT: client -> backend:port, the client's address kept;
    /// backends route replies through the load balancer.
    Dnat,
}

impl VipMode {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            VipMode::Dsr => "dsr",
            VipMode::Nat => "nat",
            VipMode::Dnat => "dnat",
        }
    }
}

/// Kind of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connection that completes.
    Tcp,
    /// An HTTP/1.1 GET of `path` answered with status `expect_status`.
    Http,
    /// A UDP datagram (`payload`) that gets any reply.
    Udp,
    /// No check: backends are always healthy.
    None,
}

impl HealthCheckKind {
    /// The kind's name in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
            Self::None => "none",
        }
    }
}

impl fmt::Display for HealthCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// NIC to attach to, unless `--iface` overrides it.
    pub interface: Option<String>,
    /// Attach mode.
    pub xdp_mode: XdpModeConfig,
    /// Whether a configuration without VIPs may replace one with VIPs
    /// (`allow_empty`); without it such a reload is refused.
    pub allow_empty: bool,
    /// Address of the HTTP API.
    pub api_listen: SocketAddr,
    /// Concurrent API connections; more are refused (`api.max_connections`).
    pub api_max_connections: u32,
    /// Allowed source prefixes (host bits clear).
    pub allow: Vec<IpNet>,
    /// What the source filter applies to.
    pub scope: FilterScope,
    /// Encapsulation kind.
    pub encap: EncapKind,
    /// Outer IPv4 source; `None`: the interface's first IPv4 address.
    pub encap_source_v4: Option<Ipv4Addr>,
    /// Outer IPv6 source.
    pub encap_source_v6: Option<Ipv6Addr>,
    /// GUE destination port.
    pub gue_port: u16,
    /// Largest outer packet toward backends (`encap.mtu`); `None`: the
    /// egress interface's MTU.
    pub encap_mtu: Option<u16>,
    /// ICMP "too big" messages generated per second per CPU; 0: never.
    pub too_big_per_cpu: u32,
    /// Maglev table size `M` (prime) of every VIP.
    pub table_size: u32,
    /// Connection-table capacity in flows.
    pub conntrack_entries: u32,
    /// New flows recorded in the connection table per second per CPU
    /// (`conntrack.max_new_per_cpu`); above it new flows keep their Maglev
    /// choice unrecorded.
    pub max_new_per_cpu: u32,
    /// Map sizes: `maglev.max_vips`, table regions, memory.
    pub sizing: Sizing,
    /// VIPs, in file order.
    pub vips: Vec<Vip>,
    /// `[nat]`: SNAT addresses and ports, NAT table size, TCP idle timeout.
    pub nat: nat::NatConfig,
    /// BGP announcement of the VIP addresses (`[bgp]`); `None`:
    /// nothing is announced.
    pub bgp: Option<BgpConfig>,
}

/// A validated VIP.
#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Address.
    pub address: IpAddr,
    /// Port; 0 means every port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Rule when no backend is usable.
    pub on_no_backend: OnNoBackend,
    /// How the VIP reaches its backends.
    pub mode: VipMode,
    /// The VIP's own source prefixes (`allow`), each inside a global one;
    /// `None`: the global list alone.
    pub allow: Option<Vec<IpNet>>,
    /// Health check of every backend.
    pub health_check: HealthCheck,
    /// Backends, in file order, each address once.
    pub backends: Vec<BackendConfig>,
}

/// A validated health check.
///
/// The fields of one kind keep their defaults under the others (validation
/// rejects `path` with kind `tcp`, for example), so comparing two checks
/// compares what they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Kind.
    pub kind: HealthCheckKind,
    /// Port checked on each backend.
    pub port: u16,
    /// `http`: the path (and query) requested; starts with `/`.
    pub path: String,
    /// `http`: the only status that counts as success (100 to 599).
    pub expect_status: u16,
    /// `udp`: the datagram sent, as UTF-8 bytes (1 to [`MAX_UDP_PAYLOAD`]).
    pub payload: String,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Longest a check may take; never longer than `interval`.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address, reachable from the load balancer.
    pub address: IpAddr,
    /// Relative share of the Maglev table; 0 drains.
    pub weight: u32,
    /// The port the backend serves the VIP on: the VIP's own port unless
    /// the configuration maps it (NAT modes only; 0 with a VIP of every
    /// port: each packet keeps its port).
    pub port: u16,
}

/// A configuration and the warnings its validation produced.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things that are allowed but probably not meant (for example a VIP
    /// whose backends all have weight 0).
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Reads (see [`read_file`]) and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::NotRegular`],
    /// [`ConfigError::TooLarge`], [`ConfigError::Parse`] or
    /// [`ConfigError::Invalid`] with every problem found.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = read_file(path, MAX_CONFIG_BYTES)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut v = Validator::default();
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(Loaded {
                config,
                warnings: v.warnings,
            })
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems: v.errors,
            })
        }
    }

    /// Whether a VIP or a backend is IPv6 (the data plane then needs IPv6
    /// forwarding for its next-hop lookups).
    pub fn uses_ipv6(&self) -> bool {
        self.vips
            .iter()
            .any(|v| v.address.is_ipv6() || v.backends.iter().any(|b| b.address.is_ipv6()))
    }

    /// Number of backends over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|v| v.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests;
