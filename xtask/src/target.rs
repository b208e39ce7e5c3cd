//! Where cargo puts what it builds: asked of `cargo metadata`, so that
//! `CARGO_TARGET_DIR`, `build.target-dir` in a cargo config and the like
//! are respected wherever xtask locates a binary.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// The workspace's target directory as cargo resolves it (the
/// `target_directory` field of `cargo metadata --format-version 1
/// --no-deps`), for the workspace `cmd` runs in: `cmd` is a `cargo`
/// command with its directory and environment set, no arguments.
///
/// # Errors
/// cargo cannot run or fails, or its answer has no `target_directory`.
pub fn dir(mut cmd: Command) -> anyhow::Result<PathBuf> {
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata's answer is not JSON")?;
    let dir = metadata
        .get("target_directory")
        .and_then(serde_json::Value::as_str)
        .context("cargo metadata's answer has no target_directory")?;
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn cargo_in_workspace() -> Command {
        let mut cmd = crate::cargo();
        cmd.current_dir(crate::workspace_root())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR");
        cmd
    }

    /// A directory of its own under the system's temporary directory,
    /// removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-xtask-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create a temporary directory");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cargo_target_dir_is_respected() {
        let tmp = TempDir::new("target-env");
        let mut cmd = cargo_in_workspace();
        cmd.env("CARGO_TARGET_DIR", &tmp.0);
        assert_eq!(dir(cmd).expect("cargo metadata"), tmp.0);
    }

    #[test]
    fn cargo_build_target_dir_is_respected() {
        let tmp = TempDir::new("target-build-env");
        let mut cmd = cargo_in_workspace();
        cmd.env("CARGO_BUILD_TARGET_DIR", &tmp.0);
        assert_eq!(dir(cmd).expect("cargo metadata"), tmp.0);
    }

    #[test]
    fn without_settings_it_is_target_under_the_workspace() {
        // Unless the user's own cargo config moves it, which this test
        // cannot rule out: then it is at least not the checkout's `target`.
        let found = dir(cargo_in_workspace()).expect("cargo metadata");
        let default = crate::workspace_root().join("target");
        let configured = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .is_some_and(|home| {
                std::fs::read_to_string(home.join("config.toml"))
                    .is_ok_and(|c| c.contains("target-dir"))
            });
        if !configured {
            assert_eq!(found, default);
        }
        assert!(found.is_absolute(), "{}", found.display());
    }
}
