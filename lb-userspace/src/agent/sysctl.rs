//! The host's IPv6 settings the agent changes, and only when its
//! configuration needs them: IPv6 forwarding on the interface
//! (`bpf_fib_lookup` with `AF_INET6` needs it), with Router Advertisements
//! kept (`accept_ra` 1 becomes 2: a forwarding interface ignores RAs
//! otherwise, and the host's RA-learned default route and SLAAC addresses
//! expire). What was changed is written beside the instance lock, so the
//! agent that detaches restores the values the first agent found, even
//! after restarts and adoptions in between.

use std::{
    io,
    path::{Path, PathBuf},
};

use log::{info, warn};

use crate::dataplane::pins::{lock_path_in, netns_key};

/// `/proc/sys` path of IPv6 setting `key` of interface `iface`.
fn path(iface: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv6/conf/{iface}/{key}"))
}

/// The file that keeps the values the agent replaced, beside the lock:
/// one `KEY VALUE` line each.
fn saved(iface: &str) -> PathBuf {
    lock_path_in(netns_key().as_deref(), iface).with_extension("sysctl")
}

fn read(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// Turns IPv6 forwarding on for `iface` (accepting RAs still: `accept_ra`
/// 1 becomes 2) unless it is on; records the values it replaced unless an
/// earlier agent did. Returns the changes made, as `KEY OLD -> NEW`.
///
/// # Errors
/// A setting cannot be read or written (no IPv6 on the host), or the
/// record cannot be written.
pub fn enable_ipv6_forwarding(iface: &str) -> io::Result<Vec<String>> {
    let forwarding = read(&path(iface, "forwarding"))?;
    if forwarding == "1" {
        return Ok(Vec::new());
    }
    let accept_ra = read(&path(iface, "accept_ra"))?;
    let mut changes = Vec::new();
    let mut record = String::new();
    if accept_ra == "1" {
        record.push_str("accept_ra 1\n");
        changes.push("accept_ra 1 -> 2".to_string());
    }
    record.push_str(&format!("forwarding {forwarding}\n"));
    changes.push(format!("forwarding {forwarding} -> 1"));
    let file = saved(iface);
    if !file.exists() {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, record)?;
    }
    if accept_ra == "1" {
        std::fs::write(path(iface, "accept_ra"), "2")?;
    }
    std::fs::write(path(iface, "forwarding"), "1")?;
    Ok(changes)
}

/// Puts back what [`enable_ipv6_forwarding`] replaced on `iface`, when the
/// data plane is detached; logs what it restored.
pub fn restore(iface: &str) {
    let file = saved(iface);
    let Ok(record) = std::fs::read_to_string(&file) else {
        return;
    };
    // Forwarding first: turning it off puts the kernel's own RA handling
    // back before accept_ra returns to 1.
    let mut lines: Vec<(&str, &str)> = record
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(key, _)| matches!(*key, "forwarding" | "accept_ra"))
        .collect();
    lines.sort_by_key(|(key, _)| *key != "forwarding");
    for (key, value) in lines {
        match std::fs::write(path(iface, key), value) {
            Ok(()) => info!("restored net.ipv6.conf.{iface}.{key} = {value}"),
            Err(e) => warn!("restoring net.ipv6.conf.{iface}.{key} = {value}: {e}"),
        }
    }
    if let Err(e) = std::fs::remove_file(&file) {
        warn!("removing {}: {e}", file.display());
    }
}
