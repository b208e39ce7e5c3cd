//! `lb check`: validate a configuration; exit 0 with a summary, its
//! warnings and the memory it takes, or 1 with every error.

use std::{path::Path, process::ExitCode};

use crate::config::Config;

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
