//! Commands to a running BIRD through `birdc -s SOCKET`, each bounded in
//! time, with BIRD's answer as text.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

/// Longest one `birdc` command may take (`configure` of a few hundred
/// routes takes milliseconds).
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a `birdc` command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirdcError {
    /// `birdc` could not be started (not installed: Debian `bird2`).
    #[error("cannot run birdc: {0} (install Debian's bird2; `cargo xtask setup` does)")]
    Spawn(String),
    /// No answer within [`BIRDC_TIMEOUT`].
    #[error("birdc {0}: no answer within {BIRDC_TIMEOUT:?}")]
    Timeout(String),
    /// BIRD refused the command, or its socket did not answer.
    #[error("birdc {command}: {answer}")]
    Failed {
        /// The command.
        command: String,
        /// What birdc printed.
        answer: String,
    },
}

/// Where BIRD's program `name` (`bird`, `birdc`) is: found in `PATH`, else
/// `/usr/sbin/NAME` (where Debian puts it; a user's `PATH` may lack it).
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| Path::new("/usr/sbin").join(name))
}

/// Runs `birdc -s socket ARGS` and returns its output.
///
/// # Errors
/// [`BirdcError`]: not started, too slow, or a non-zero exit (BIRD's error
/// or an unreachable socket).
pub async fn birdc(socket: &Path, args: &[&str]) -> Result<String, BirdcError> {
    let command = args.join(" ");
    let child = Command::new(program("birdc"))
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BirdcError::Spawn(e.to_string()))?;
    let out = tokio::time::timeout(BIRDC_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| BirdcError::Timeout(command.clone()))?
        .map_err(|e| BirdcError::Spawn(e.to_string()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        let answer = text
            .lines()
            .filter(|l| !(l.starts_with("BIRD ") && l.ends_with("ready.")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(BirdcError::Failed { command, answer })
    }
}
