//! BGP announcement of the VIP addresses, health-aware, through
//! BIRD 2, which `lb run` starts, configures and supervises itself:
//!
//! - [`rule`]: which addresses are announced (a pure function of the
//!   balancer's health and weights);
//! - [`conf`]: BIRD's configuration for them;
//! - [`paths`]: BIRD's files, per network namespace and interface;
//! - [`bird`]: the BIRD process (start in its own session, adopt, stop)
//!   and `bird -p` (a configuration checked before it is taken);
//! - [`birdc`], [`parse`]: commands to BIRD and reading its answers;
//! - [`speaker`]: the task tying them together;
//! - [`status`]: what `/status`, `lb status` and `/metrics` show.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

pub mod bird;
pub mod birdc;
pub mod conf;
pub mod parse;
pub mod paths;
pub mod rule;
pub mod speaker;
pub mod status;

pub use speaker::{Speaker, Wanted};

use crate::{balancer::VipState, config::Config};

/// Why `[bgp]` cannot be announced.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// No router id: none configured and the interface has no IPv4 address.
    #[error(
        "bgp.router_id is not set and the interface has no IPv4 address to take it from: set bgp.router_id"
    )]
    NoRouterId,
    /// `bird -p` refuses the configuration made from `[bgp]` (its message).
    #[error("[bgp]: BIRD refuses the configuration made from it: {0}")]
    Refused(String),
}

/// What the agent wants announced for `config`, whose encapsulation source
/// is `source_v4` (the router id's default), with the balancer's `vips`.
///
/// # Errors
/// `[bgp]` has no router id and `source_v4` is unspecified (the interface
/// has no IPv4 address).
pub fn wanted(config: &Config, source_v4: Ipv4Addr, vips: &[VipState]) -> Result<Wanted, BgpError> {
    let Some(bgp) = &config.bgp else {
        return Ok(Wanted::default());
    };
    let router_id = bgp.router_id.unwrap_or(source_v4);
    if router_id.is_unspecified() {
        return Err(BgpError::NoRouterId);
    }
    Ok(Wanted {
        settings: Some(conf::Settings {
            bgp: bgp.clone(),
            router_id,
        }),
        decisions: rule::decide(&rule::VipHealth::of(vips)),
    })
}

/// Checks that BIRD accepts the configuration `config` gives it on `iface`
/// (every VIP address announced), with `bird -p` on a file beside the
/// running one ([`bird::check_config`]); nothing when `config` has no
/// `[bgp]`. The agent runs it at start and before it accepts a reload.
///
/// # Errors
/// As [`wanted`]; BIRD's message when it refuses the configuration, or
/// why `bird -p` could not run.
pub async fn check(config: &Config, source_v4: Ipv4Addr, iface: &str) -> Result<(), BgpError> {
    let Some(settings) = wanted(config, source_v4, &[])?.settings else {
        return Ok(());
    };
    let addresses: Vec<IpAddr> = config
        .vips
        .iter()
        .map(|v| v.address)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let text = conf::render(&settings, &addresses, iface);
    bird::check_config(&paths::BirdPaths::of(iface), &text)
        .await
        .map_err(BgpError::Refused)
}
