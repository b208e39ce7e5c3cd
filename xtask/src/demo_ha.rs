//! `cargo xtask demo --ha`: the scale-out demo (`lb-demo-ha` in the tests
//! crate): a router with ECMP over two nodes that announce the VIP over
//! BGP, one stopped with SIGTERM in the middle of the traffic.

use std::path::Path;

use crate::{as_root, lb_binary, status};

/// Runs `lb-demo-ha` from cargo's target directory `target` (see
/// [`crate::target`]) as root with `LB_BIN` set; the caller has set up and
/// built.
pub fn run(target: &Path) -> anyhow::Result<()> {
    status(as_root(&target.join("debug/lb-demo-ha"))?.env("LB_BIN", lb_binary(target)))
}
