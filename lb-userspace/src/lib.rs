//! The load balancer's agent: configuration, Maglev tables, map writes,
//! health checks, and the `lb` commands built on them.

pub mod agent;
pub mod api;
pub mod balancer;
pub mod config;
pub mod decap;
pub mod explain;
pub mod health;
pub mod maglev;
pub mod maps;
pub mod netif;
pub mod probe;
pub mod sizing;
pub mod upgrade;
