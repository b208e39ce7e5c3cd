//! `lb detach`: stop the data plane that `lb run --keep-attached` (the
//! systemd unit's mode) left running on an interface: first the BIRD an
//! agent with `[bgp]` left (its sessions close, so the routers withdraw
//! the VIP addresses; forwarding goes on for `withdraw_delay`), then the
//! pins under `/sys/fs/bpf/lb/<interface>`, the XDP link's among them, so
//! the kernel detaches `xdp_lb` and frees its maps, the connection table
//! included. Refused while an agent runs on that interface.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use log::{info, warn};

use crate::{
    bgp::{
        bird::{Bird, Found},
        paths::BirdPaths,
    },
    config::DEFAULT_WITHDRAW_DELAY,
    dataplane::pins::{InstanceLock, pin_dir, unpin},
};

/// Runs `lb detach (--config FILE | --iface IFACE)`: the interface is
/// `iface`, else the configuration's `interface`.
pub fn command(config: Option<&Path>, iface: Option<String>) -> ExitCode {
    super::report(detach(config, iface).context("lb detach"))
}

fn detach(config: Option<&Path>, iface: Option<String>) -> anyhow::Result<()> {
    let loaded = config.map(super::load_config).transpose()?;
    let iface = match (iface, config, &loaded) {
        (Some(iface), _, _) => iface,
        (None, Some(path), Some(loaded)) => loaded
            .interface
            .clone()
            .with_context(|| format!("{} names no interface: pass --iface", path.display()))?,
        _ => bail!("name the interface: --iface IFACE or --config FILE"),
    };
    // Held until the pins are gone: no agent starts (and adopts) meanwhile.
    let _lock = InstanceLock::take(&iface)
        .with_context(|| format!("stop the agent on {iface} first (systemctl stop lb)"))?;
    let withdraw_delay = loaded
        .as_ref()
        .and_then(|c| c.bgp.as_ref())
        .map_or(DEFAULT_WITHDRAW_DELAY, |bgp| bgp.withdraw_delay);
    stop_bird(&iface, withdraw_delay, pin_dir(&iface).exists())?;
    let dir = pin_dir(&iface);
    if !dir.exists() {
        info!(
            "nothing pinned for {iface} in {}: no data plane to detach",
            dir.display()
        );
        return Ok(());
    }
    unpin(&dir);
    crate::agent::sysctl::restore(&iface);
    if dir.exists() {
        bail!("could not remove every pin in {}", dir.display());
    }
    info!(
        "detached xdp_lb from {iface}: removed its pins in {} (its connection table is gone; flows are hashed again by the next agent)",
        dir.display()
    );
    Ok(())
}

/// Stops the BIRD an agent with `[bgp]` left running for `iface` (with
/// `--keep-attached`, or killed), if any: by its pid, once it is known to
/// be ours (`bgp::bird`). Its sessions close (a Cease), so the routers
/// withdraw this node's VIP addresses at once; then, when a data plane is
/// still attached (`attached`), it goes on forwarding for `withdraw_delay`
/// while the routers move the flows to other nodes, as `lb run` does on
/// SIGTERM. Removes BIRD's directory.
///
/// # Errors
/// No runtime for the BIRD commands could be made.
fn stop_bird(iface: &str, withdraw_delay: Duration, attached: bool) -> anyhow::Result<()> {
    let paths = BirdPaths::of(iface);
    if !paths.dir().exists() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the BIRD commands")?;
    if let Some(found) = runtime.block_on(Bird::find(&paths)) {
        let (Found::Answering(bird) | Found::Silent(bird)) = found;
        let pid = bird.pid;
        let how = runtime.block_on(bird.stop());
        info!(
            "withdrew {iface}'s VIP addresses: BIRD (pid {pid}) {how}; its BGP sessions are closed"
        );
        if attached && !withdraw_delay.is_zero() {
            info!("forwarding for withdraw_delay ({withdraw_delay:?}) before detaching");
            std::thread::sleep(withdraw_delay);
        }
    }
    if let Err(e) = std::fs::remove_dir_all(paths.dir()) {
        warn!("could not remove {}: {e}", paths.dir().display());
    }
    Ok(())
}
