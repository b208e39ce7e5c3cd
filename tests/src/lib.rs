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

/// Whether this test can run: it needs root (network namespaces, XDP, BPF
/// maps). When it cannot, prints why, so a plain `cargo test` as a user
/// passes with the reason shown, as aya's integration tests skip on old
/// kernels; `cargo xtask test` runs as root and runs everything.
pub fn can_run_as_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!(
            "skipped {test}: needs root (network namespaces and XDP); run `cargo xtask test` as root"
        );
    }
    root
}
