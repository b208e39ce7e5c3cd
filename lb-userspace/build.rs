//! Builds the XDP programs of `lb-ebpf` for `bpfel-unknown-none` with the
//! pinned nightly (see ../shared/TOOLCHAIN.md) so the agent can embed them.
//! `cargo xtask setup` installs that toolchain and bpf-linker when missing.

/// The nightly the eBPF crate is built with, pinned by date so bpf-linker
/// 0.10.4 finds the LLVM it expects. Keep in sync with xtask's `EBPF_TOOLCHAIN`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// Cargo features of `lb-ebpf` to build with, comma-separated (the upgrade
/// test builds a variant with `test-outer-ttl-63`).
const FEATURES_ENV: &str = "LB_EBPF_FEATURES";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={FEATURES_ENV}");
    let features = std::env::var(FEATURES_ENV).unwrap_or_default();
    let features: Vec<&str> = features.split(',').filter(|f| !f.is_empty()).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            features: &features,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
