//! The load balancer's agent: configuration, Maglev tables, map writes,
//! health checks, BGP, the API, and the `lb` commands built on them.
//!
//! The modules form layers that import one way only, listed here bottom-up
//! (each imports only modules above it in this list; the order is kept by
//! the blank lines, which keep rustfmt from sorting the list):

/// Host interfaces: addresses, MTU, bpffs (no other module).
pub mod netif;

/// systemd's readiness, reload and stop notifications (no other module).
pub mod systemd;

/// The TOML configuration: schema, validation, map sizing.
pub mod config;

/// Maglev tables: permutations and table builds (Eisenbud et al., NSDI 2016).
pub mod maglev;

/// Health checks of backends: probes, rise and fall (config).
pub mod health;

/// The agent's picture of the data plane and its diff; the map-store trait
/// it writes through (config, maglev).
pub mod balancer;

/// The kernel side: the object, its maps over aya, pins, upgrades, next
/// hops, connection-table walks (config, balancer).
pub mod dataplane;

/// BGP announcement of VIP addresses through BIRD (config, balancer,
/// dataplane).
pub mod bgp;

/// The HTTP API: `/metrics`, `/status` (balancer, health, dataplane, bgp).
pub mod api;

/// `lb explain`: what the data plane does with one flow (config, balancer,
/// dataplane, maglev).
pub mod explain;

/// `lb run`: the agent's tasks and event loop (everything above).
pub mod agent;

/// The `lb` commands (everything above).
pub mod cli;
