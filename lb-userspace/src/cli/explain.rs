//! `lb explain`: which backend a flow goes to, and why (see
//! [`crate::explain`]); consults the data plane pinned for the interface in
//! this network namespace when there is one.

use std::{net::SocketAddr, path::Path, process::ExitCode};

use crate::{
    config::{Config, Protocol},
    dataplane::pins::{LINK_PIN, pin_dir},
    explain,
};

/// Runs `lb explain --config PATH --proto P --src IP:PORT --dst IP:PORT [--iface IFACE]`.
pub fn command(
    path: &Path,
    protocol: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
    iface: Option<String>,
) -> ExitCode {
    let config = match Config::load(path) {
        Ok(loaded) => loaded.config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let pins = iface
        .or_else(|| config.interface.clone())
        .map(|i| pin_dir(&i))
        .filter(|dir| dir.join(LINK_PIN).exists());
    match explain::explain(&config, protocol, src, dst, pins.as_deref()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
