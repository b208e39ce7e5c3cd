//! `lb detach`: stop the data plane that `lb run --keep-attached` (the
//! systemd unit's mode) left running on an interface: removes its pins
//! under `/sys/fs/bpf/lb/<interface>`, the XDP link's among them, so the
//! kernel detaches `xdp_lb` and frees its maps, the connection table
//! included. Refused while an agent runs on that interface.

use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, bail};
use log::info;

use crate::dataplane::pins::{InstanceLock, pin_dir, unpin};

/// Runs `lb detach (--config FILE | --iface IFACE)`: the interface is
/// `iface`, else the configuration's `interface`.
pub fn command(config: Option<&Path>, iface: Option<String>) -> ExitCode {
    super::report(detach(config, iface).context("lb detach"))
}

fn detach(config: Option<&Path>, iface: Option<String>) -> anyhow::Result<()> {
    let iface = match (iface, config) {
        (Some(iface), _) => iface,
        (None, Some(path)) => super::load_config(path)?
            .interface
            .with_context(|| format!("{} names no interface: pass --iface", path.display()))?,
        (None, None) => bail!("name the interface: --iface IFACE or --config FILE"),
    };
    // Held until the pins are gone: no agent starts (and adopts) meanwhile.
    let _lock = InstanceLock::take(&iface)
        .with_context(|| format!("stop the agent on {iface} first (systemctl stop lb)"))?;
    let dir = pin_dir(&iface);
    if !dir.exists() {
        info!(
            "nothing pinned for {iface} in {}: no data plane to detach",
            dir.display()
        );
        return Ok(());
    }
    unpin(&dir);
    if dir.exists() {
        bail!("could not remove every pin in {}", dir.display());
    }
    info!(
        "detached xdp_lb from {iface}: removed its pins in {} (its connection table is gone; flows are hashed again by the next agent)",
        dir.display()
    );
    Ok(())
}
