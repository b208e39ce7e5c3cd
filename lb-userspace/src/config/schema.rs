//! The raw configuration schema (docs/configuration.md), as serde reads it (`deny_unknown_fields`):
//! every key optional where the specification gives a default, no rule
//! checked yet (see [`super::validate`]).

use std::net::IpAddr;

use serde::Deserialize;

use super::{
    EncapKind, FilterScope, HealthCheckKind, OnNoBackend, Protocol, VipMode, XdpModeConfig,
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interface: Option<String>,
    #[serde(default)]
    pub(super) xdp_mode: XdpModeConfig,
    #[serde(default)]
    pub(super) allow_empty: bool,
    #[serde(default)]
    pub(super) api: RawApi,
    #[serde(default)]
    pub(super) source_filter: RawSourceFilter,
    #[serde(default)]
    pub(super) encap: RawEncap,
    #[serde(default)]
    pub(super) maglev: RawMaglev,
    #[serde(default)]
    pub(super) conntrack: RawConntrack,
    #[serde(default)]
    pub(super) icmp: RawIcmp,
    #[serde(default, rename = "vip")]
    pub(super) vips: Vec<RawVip>,
    #[serde(default)]
    pub(super) nat: super::nat::RawNat,
    pub(super) bgp: Option<super::bgp::RawBgp>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) listen: Option<String>,
    pub(super) max_connections: Option<u32>,
    #[serde(default)]
    pub(super) allow_remote: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSourceFilter {
    pub(super) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(super) scope: FilterScope,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncap {
    #[serde(default)]
    pub(super) kind: EncapKind,
    pub(super) source_v4: Option<IpAddr>,
    pub(super) source_v6: Option<IpAddr>,
    pub(super) gue_port: Option<u16>,
    pub(super) mtu: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIcmp {
    pub(super) too_big_per_cpu: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaglev {
    pub(super) table_size: Option<u32>,
    pub(super) max_vips: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConntrack {
    pub(super) max_entries: Option<u32>,
    pub(super) max_new_per_cpu: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: String,
    pub(super) address: IpAddr,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    #[serde(default)]
    pub(super) on_no_backend: OnNoBackend,
    #[serde(default)]
    pub(super) mode: VipMode,
    pub(super) allow: Option<Vec<String>>,
    pub(super) health_check: Option<RawHealthCheck>,
    #[serde(default, rename = "backend")]
    pub(super) backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) kind: HealthCheckKind,
    pub(super) port: Option<u16>,
    pub(super) path: Option<String>,
    pub(super) expect_status: Option<u16>,
    pub(super) payload: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: IpAddr,
    pub(super) weight: Option<u32>,
    pub(super) port: Option<u16>,
}
