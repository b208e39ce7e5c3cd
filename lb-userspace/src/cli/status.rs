//! `lb status`: a running agent's `/status`, as a table or JSON.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use crate::api;

/// Runs `lb status [--api ADDR] [--json]`.
pub fn command(api_addr: SocketAddr, json: bool) -> ExitCode {
    super::report(super::block_on(|| async {
        let status = api::fetch_status(api_addr, Duration::from_secs(5)).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", api::render_table(&status));
        }
        Ok(())
    }))
}
