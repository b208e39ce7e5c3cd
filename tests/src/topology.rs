//! The shape every lab shares: hosts on a bridge (in a switch namespace),
//! and backends that hold the VIP on their loopback.

use crate::netns::{Netns, ip};

/// One host on the bridge: its namespace name, its interface, the name of
/// the bridge-side peer, and its address with prefix length.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// Namespace of the host.
    pub ns: &'a str,
    /// Its interface (created in its namespace).
    pub iface: &'a str,
    /// The veth peer's name in the switch namespace.
    pub peer: &'a str,
    /// Address/prefix, e.g. `10.30.0.21/24`.
    pub addr: &'a str,
}

/// [`bridge`] for the hosts of a lab named `prefix`, each given as (host,
/// interface, veth peer, address): host `h` lives in namespace
/// `{prefix}-{h}` and gets `{address}/24`.
///
/// # Errors
/// An `ip` command fails.
pub fn lab_bridge(
    sw: &Netns,
    prefix: &str,
    hosts: &[(&str, &str, &str, &str)],
) -> anyhow::Result<()> {
    let names: Vec<(String, String)> = hosts
        .iter()
        .map(|(host, _, _, addr)| (format!("{prefix}-{host}"), format!("{addr}/24")))
        .collect();
    let on_bridge: Vec<Host<'_>> = hosts
        .iter()
        .zip(&names)
        .map(|((_, iface, peer, _), (ns, addr))| Host {
            ns,
            iface,
            peer,
            addr,
        })
        .collect();
    bridge(sw, &on_bridge)
}

/// Makes bridge `br0` in `sw` and joins every host to it by a veth pair,
/// with its address, up.
///
/// # Errors
/// An `ip` command fails.
pub fn bridge(sw: &Netns, hosts: &[Host<'_>]) -> anyhow::Result<()> {
    sw.ip(&["link", "add", "br0", "type", "bridge"])?;
    sw.ip(&["link", "set", "dev", "br0", "up"])?;
    for h in hosts {
        sw.ip(&[
            "link", "add", h.peer, "type", "veth", "peer", "name", h.iface, "netns", h.ns,
        ])?;
        sw.ip(&["link", "set", "dev", h.peer, "master", "br0", "up"])?;
        ip(&["-n", h.ns, "addr", "add", h.addr, "dev", h.iface])?;
        ip(&["-n", h.ns, "link", "set", "dev", h.iface, "up"])?;
    }
    Ok(())
}

/// Puts `vip` on the backend's loopback (DSR: it answers from the VIP) and
/// keeps the kernel from answering ARP for it on other interfaces.
///
/// # Errors
/// An `ip` or `sysctl` command fails.
pub fn vip_on_loopback(backend: &Netns, vip: &str) -> anyhow::Result<()> {
    backend.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
    backend.sysctl("net.ipv4.conf.all.arp_ignore=1")?;
    backend.sysctl("net.ipv4.conf.all.arp_announce=2")
}
