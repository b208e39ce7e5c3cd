//! The kernel side as the agent sees it, and why an operation on it failed
//! ([`error`]): the embedded object and its
//! programs ([`object`]), where a data plane is pinned and locked
//! ([`pins`]), its maps and counters ([`maps`]), replacing the program of a running data plane
//! ([`upgrade`]), and the backends' next hops resolved from the kernel's
//! routes and neighbours ([`resolve`]) and kept in the data plane
//! ([`nexthops`]), and the walk of the connection table that lets a VIP's
//! SYNs skip it ([`conns`]), and the sweep of the NAT table ([`nat`]).

pub mod conns;
pub mod error;
pub mod maglev_map;
pub mod maps;
pub mod nat;
pub mod nexthops;
pub mod object;
pub mod pins;
pub mod resolve;
pub mod stats;
pub mod upgrade;
