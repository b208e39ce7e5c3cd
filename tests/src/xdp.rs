//! The load balancer's side of a packet test or benchmark: a namespace with
//! a veth whose first end plays the load balancer's NIC (address, MAC,
//! forwarding on, permanent neighbour entries, so `bpf_fib_lookup` resolves
//! next hops), entered by the calling thread; and the `xdp_md` context
//! BPF_PROG_TEST_RUN needs to run a program as if a frame arrived there.

use crate::netns::{EnteredNetns, Netns};

/// The load balancer's IPv6 address in a packet test's namespace.
pub const LB_ADDR_V6: &str = "fd00:20::2/64";

/// An entered namespace with the load balancer's veth; leaving and removal
/// on drop (in that order).
pub struct LbNamespace {
    /// Interface index of the load balancer's end.
    pub ifindex: u32,
    _entered: EnteredNetns,
    _ns: Netns,
}

/// Makes namespace `name` with veth `iface` (peer `peer`, both up): `iface`
/// gets MAC `mac`, address `cidr` (e.g. "10.20.0.2/24") and
/// [`LB_ADDR_V6`], forwarding of both families, and a permanent neighbour
/// entry per (address, MAC) of `neighbours` (IPv4 or IPv6). The calling
/// thread then enters it.
///
/// # Errors
/// An `ip` or `sysctl` command fails, or the namespace cannot be entered.
pub fn lb_namespace(
    name: &str,
    (iface, peer): (&str, &str),
    mac: &str,
    cidr: &str,
    neighbours: &[(String, String)],
) -> anyhow::Result<LbNamespace> {
    let ns = Netns::new(name)?;
    ns.ip(&["link", "add", iface, "type", "veth", "peer", "name", peer])?;
    ns.ip(&["link", "set", "dev", iface, "address", mac])?;
    ns.ip(&["addr", "add", cidr, "dev", iface])?;
    ns.ip(&["addr", "add", LB_ADDR_V6, "dev", iface, "nodad"])?;
    ns.ip(&["link", "set", "dev", iface, "up"])?;
    ns.ip(&["link", "set", "dev", peer, "up"])?;
    for (addr, lladdr) in neighbours {
        ns.ip(&[
            "neigh",
            "add",
            addr,
            "lladdr",
            lladdr,
            "dev",
            iface,
            "nud",
            "permanent",
        ])?;
    }
    ns.sysctl(&format!("net.ipv4.conf.{iface}.forwarding=1"))?;
    ns.sysctl("net.ipv6.conf.all.forwarding=1")?;
    let entered = ns.enter()?;
    let ifindex = lb_userspace::netif::ifindex(iface)
        .ok_or_else(|| anyhow::anyhow!("{iface} does not exist after creation"))?;
    Ok(LbNamespace {
        ifindex,
        _entered: entered,
        _ns: ns,
    })
}

/// The context of an XDP test run for a frame of `len` bytes arriving on
/// `ifindex`: `struct xdp_md` {data 0, data_end `len`, data_meta 0,
/// ingress_ifindex, rx_queue_index 0, egress_ifindex 0}, 24 bytes.
pub fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    [0, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}
