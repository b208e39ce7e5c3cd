//! `cargo xtask package`: the Debian package `lb` (cargo-deb, configured in
//! `[package.metadata.deb]` of lb-userspace/Cargo.toml): `/usr/bin/lb`
//! (release build, XDP programs embedded), the systemd units, an example
//! `/etc/lb/lb.toml` (a conffile), man pages and bash, zsh and fish
//! completions generated from the command line's definitions.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{cargo, output, progress::Steps, status};

/// cargo-deb's version; 3.8 needs rustc 1.85.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where the generated man pages and completions go: under `release/`, the
/// prefix cargo-deb maps to the real target directory.
const GENERATED: &str = "release/lb-generated";

/// Builds the package into `<target>/debian/` and returns its path; installs
/// cargo-deb first when missing. The release build is the one
/// `cargo xtask bench` uses.
///
/// # Errors
/// A build, the generation or cargo-deb fails.
pub fn package(root: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let mut steps = Steps::new(4);
    steps.next(&format!("cargo-deb {CARGO_DEB_VERSION}"));
    ensure_cargo_deb()?;
    steps.next("building lb (release, the XDP programs embedded)");
    build_release_lb(root)?;
    steps.next("generating man pages and completions (lb __generate)");
    let generated = target.join(GENERATED);
    let _ = std::fs::remove_dir_all(&generated);
    status(
        Command::new(target.join("release/lb"))
            .arg("__generate")
            .arg(&generated),
    )?;
    for page in std::fs::read_dir(generated.join("man"))? {
        let page = page?.path();
        // -n: no name or time stamp inside, so the package is reproducible.
        status(Command::new("gzip").args(["-9nf"]).arg(&page))?;
    }
    steps.next("cargo deb");
    let out_dir = target.join("debian");
    std::fs::create_dir_all(&out_dir)?;
    let printed = output(
        cargo()
            .current_dir(root)
            .args(["deb", "-p", "lb-userspace", "--no-build", "--output"])
            .arg(&out_dir),
    )
    .context(
        "cargo deb failed (run it by hand to see why: cargo deb -p lb-userspace --no-build)",
    )?;
    let deb = PathBuf::from(printed.trim().lines().last().unwrap_or_default());
    ensure!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "cargo deb printed no package path: {printed:?}"
    );
    steps.finish(&format!("built {}", deb.display()));
    Ok(deb)
}

/// `cargo build --release -p lb-userspace --bin lb`: the `lb` of the
/// package and of `cargo xtask bench` (built alone, so that the features of
/// its dependencies, and so the binary, are the same for both).
///
/// # Errors
/// The build fails.
pub fn build_release_lb(root: &Path) -> anyhow::Result<()> {
    status(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "lb",
    ]))
}

fn ensure_cargo_deb() -> anyhow::Result<()> {
    let version = output(cargo().args(["deb", "--version"])).unwrap_or_default();
    if version.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (builds the .deb; a few minutes)");
    status(cargo().args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
        "--force",
    ]))
}
