//! Test support: network namespaces, veth pairs and processes that clean up
//! after themselves, shared by the packet tests, the integration tests and
//! `cargo xtask demo`.

pub mod bgp_lab;
pub mod dashboard;
pub mod flows;
pub mod lab;
pub mod netns;
pub mod proc;
pub mod topology;
pub mod xdp;

/// Fails the test unless it runs as root (network namespaces, XDP, BPF
/// maps). Such tests are `#[ignore = "needs root: cargo xtask test"]`, so a
/// plain `cargo test` reports them as ignored instead of passing them
/// without doing anything; `cargo xtask test` runs as root with
/// `--include-ignored`. Run alone without root, a test says why it fails.
///
/// # Panics
/// When the effective user is not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "needs root (network namespaces and XDP): run `cargo xtask test` as root"
    );
}
