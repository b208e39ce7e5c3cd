//! `lb check`: validate a configuration; exit 0 with a summary, its
//! warnings and the memory it takes, or 1 with every error.

use std::{path::Path, process::ExitCode};

use crate::config::{
    Config,
    nat::{local_port_range, snat_ports},
};
use crate::netif;

/// The host's rule for configured SNAT ports (`nat.ports`): outside
/// `net.ipv4.ip_local_port_range` while a SNAT address is one this host's
/// own connections may use as their source (the default, the interface's
/// address, always is).
///
/// # Errors
/// The ports overlap the host's range, or the range cannot be read.
fn snat_ports_here(c: &Config) -> Result<(), String> {
    let Some(ports) = c.nat.ports else {
        return Ok(());
    };
    let addresses: Vec<std::net::IpAddr> = c
        .nat
        .source_v4
        .iter()
        .map(|&a| a.into())
        .chain(c.nat.source_v6.iter().map(|&a| a.into()))
        .collect();
    // The host's own addresses; unreadable ones count as the host's.
    let local: Option<Vec<std::net::IpAddr>> = netif::ipv4_addresses(None)
        .and_then(|v4| {
            let v6 = netif::ipv6_addresses(None)?;
            Ok(v4
                .into_iter()
                .map(Into::into)
                .chain(v6.into_iter().map(Into::into))
                .collect())
        })
        .ok();
    let shared = addresses.is_empty()
        || addresses
            .iter()
            .any(|a| local.as_ref().is_none_or(|l| l.contains(a)));
    if !shared {
        return Ok(());
    }
    snat_ports(Some(ports), local_port_range()?).map(|_| ())
}

/// Runs `lb check --config PATH`.
pub fn command(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                println!("warning: {warning}");
            }
            let c = &loaded.config;
            println!(
                "{}: OK: {} VIPs, {} backends, Maglev table size {}",
                path.display(),
                c.vips.len(),
                c.backend_count(),
                c.table_size
            );
            println!("data plane memory: {}", c.sizing);
            if let Err(e) = snat_ports_here(c) {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if let Some(bgp) = &c.bgp {
                println!(
                    "BGP: AS {} announcing the VIP addresses to {} peers (BIRD 2, started by lb run)",
                    bgp.local_as,
                    bgp.peers.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
