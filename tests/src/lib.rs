//! Test support: network namespaces, veth pairs and processes that clean up
//! after themselves, shared by the packet tests, the integration tests and
//! `cargo xtask demo`.

pub mod flows;
pub mod lab;
pub mod netns;
pub mod xdp;
