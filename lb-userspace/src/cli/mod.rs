//! The `lb` commands, one module each; `main.rs` only parses the
//! command line and dispatches here. Each command returns the process's
//! exit code: 0 on success, 1 with the error printed.

use std::{future::Future, path::Path, process::ExitCode};

use anyhow::Context as _;
use log::{error, warn};

use crate::config::{Config, ConfigError};

pub mod check;
pub mod decap;
pub mod detach;
pub mod explain;
pub mod generate;
pub mod run;
pub mod status;

/// Installs the SIGINT and SIGTERM handlers now (so a signal that comes
/// while the data plane is being set up is not fatal), and returns a future
/// that completes on either. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Loads a configuration, logging its warnings.
///
/// # Errors
/// The file cannot be read or is invalid.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let loaded = Config::load(path)?;
    for warning in &loaded.warnings {
        warn!("{}: warning: {warning}", path.display());
    }
    Ok(loaded.config)
}

/// Runs `work` on a new multi-threaded tokio runtime.
///
/// # Errors
/// The runtime cannot start, or `work` fails.
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(
    work: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(work())
}

/// Logs an error with its chain of causes, each once: a cause whose text
/// its parent already shows (`{op} {path}: {source}`) is not repeated.
/// Returns the exit code.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", chain_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each text once.
pub fn chain_once(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut shown = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if !shown.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        shown = line;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_shown_by_its_parent_is_not_repeated() {
        let io = std::io::Error::other("Permission denied");
        let e = anyhow::Error::new(crate::agent::AgentError::Io {
            op: "create",
            path: "/run/lb".into(),
            source: io,
        })
        .context("lb run");
        assert_eq!(chain_once(&e), "lb run: create /run/lb: Permission denied");
    }
}
