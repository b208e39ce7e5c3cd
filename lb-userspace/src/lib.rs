//! The load balancer's agent: configuration, Maglev tables, map writes,
//! health checks, and the `lb` commands built on them.

pub mod agent;
pub mod api;
pub mod balancer;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod explain;
pub mod health;
pub mod maglev;
pub mod netif;
pub mod systemd;
