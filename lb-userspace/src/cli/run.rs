//! `lb run`: the agent, until SIGINT or SIGTERM (see [`crate::agent`]).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::agent;

/// Runs `lb run --config PATH [--iface IFACE] [--keep-attached]`.
pub fn command(config_path: PathBuf, iface: Option<String>, keep_attached: bool) -> ExitCode {
    super::report(super::block_on(|| async {
        let shutdown = super::shutdown_signal();
        let config = super::load_config(&config_path)?;
        let options = agent::RunOptions {
            config_path,
            iface,
            keep_attached,
        };
        agent::run(config, options, shutdown)
            .await
            .context("lb run")
    }))
}
