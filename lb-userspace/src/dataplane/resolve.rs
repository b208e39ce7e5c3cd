//! Next hop of a backend as the kernel would route a packet to it: a
//! "route get" (`ip route get ADDR`), then the egress link and the
//! neighbour entry of the next hop, over rtnetlink; and a notification
//! stream that says when any of those may have changed.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
};

use anyhow::{Context as _, anyhow};
use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkLayerType},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType, RouteVia},
    },
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Where packets to one backend go: the kernel's answer to "route get <backend>" plus the neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Egress interface index.
    pub ifindex: u32,
    /// MAC of the egress interface.
    pub smac: [u8; 6],
    /// MAC of the next hop (the gateway if the route has one, else the backend itself).
    pub dmac: [u8; 6],
    /// MTU toward the backend in bytes: the route's MTU metric (RTAX_MTU) if set, else the egress interface's MTU.
    pub mtu: u32,
}

/// What [`connect`] returns besides the handle: yields `()` once per
/// netlink notification of a neighbour, route or link change (`recv()`,
/// `try_recv()` to drain a burst); ends when the notification socket fails.
pub type Notifications = UnboundedReceiver<()>;

/// Resolves `backend` (IPv4 or IPv6) in the namespace of `handle`.
///
/// The lookup is the kernel's own (policy rules, tables, PMTU exceptions)
/// for a packet this host would send to `backend` with no source address,
/// mark or input interface given, as `ip route get <backend>` does.
///
/// Ok(None) when there is no route, the route is not unicast (blackhole,
/// unreachable, prohibit, local, broadcast, multicast...) or encapsulates
/// (lwtunnel: MPLS, seg6...), the egress interface has no MAC (not
/// Ethernet) or vanished meanwhile, or the next hop has no usable neighbour
/// entry (state INCOMPLETE or FAILED or NOARP without lladdr, or no entry at
/// all): the XDP program then falls back to bpf_fib_lookup, which handles
/// those cases. Nothing here creates a neighbour entry: the first packet the
/// kernel itself sends to the next hop does.
///
/// Usable neighbour states: REACHABLE, STALE, DELAY, PROBE, PERMANENT
/// (NUD_* in include/uapi/linux/neighbour.h).
///
/// # Errors
///
/// Err only for a netlink failure (socket, permission, malformed answer),
/// with context naming the request and `backend`.
pub async fn resolve(handle: &Handle, backend: IpAddr) -> anyhow::Result<Option<Resolved>> {
    Pass::default().resolve(handle, backend).await
}

/// One resolution of many backends: each backend gets its own route get,
/// but a link is read and a link's neighbour table dumped once per pass,
/// so a pass over N backends behind one interface costs N + 2 requests,
/// not 3N. Start a new pass to see changes made since.
#[derive(Default)]
pub struct Pass {
    /// Links read in this pass, by index (`None`: not Ethernet, or gone).
    links: HashMap<u32, Option<Link>>,
    /// Usable neighbour entries with a 6-byte link-layer address, by
    /// (IPv6?, link index), dumped in this pass.
    neighbours: HashMap<(bool, u32), HashMap<IpAddr, [u8; 6]>>,
}

impl Pass {
    /// As [`resolve`], reusing the links and neighbour tables this pass
    /// has read.
    ///
    /// # Errors
    /// As [`resolve`].
    pub async fn resolve(
        &mut self,
        handle: &Handle,
        backend: IpAddr,
    ) -> anyhow::Result<Option<Resolved>> {
        let route = route_get(handle, backend)
            .await
            .with_context(|| format!("route get {backend}"))?;
        let Some(Route {
            ifindex,
            gateway,
            mtu,
        }) = route
        else {
            return Ok(None);
        };
        if let Entry::Vacant(slot) = self.links.entry(ifindex) {
            slot.insert(
                link_get(handle, ifindex)
                    .await
                    .with_context(|| format!("link {ifindex} (egress toward {backend})"))?,
            );
        }
        let Some(link) = self.links.get(&ifindex).copied().flatten() else {
            return Ok(None);
        };
        let next_hop = gateway.unwrap_or(backend);
        let key = (next_hop.is_ipv6(), ifindex);
        if let Entry::Vacant(slot) = self.neighbours.entry(key) {
            slot.insert(
                neighbour_table(handle, ifindex, next_hop)
                    .await
                    .with_context(|| {
                        format!("neighbours on link {ifindex} (toward {backend} via {next_hop})")
                    })?,
            );
        }
        let Some(dmac) = self
            .neighbours
            .get(&key)
            .and_then(|table| table.get(&next_hop))
            .copied()
        else {
            return Ok(None);
        };
        Ok(Some(Resolved {
            ifindex,
            smac: link.mac,
            dmac,
            mtu: mtu.unwrap_or(link.mtu),
        }))
    }
}

/// Opens a netlink connection (spawned on the current tokio runtime) and a
/// second socket subscribed to the multicast groups of neighbour, IPv4
/// route, IPv6 route and link changes (RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE,
/// RTNLGRP_IPV6_ROUTE, RTNLGRP_LINK), both in the network namespace of the
/// calling thread.
///
/// Returns the handle (for [`resolve`]) and a receiver that yields `()`
/// once per netlink notification, and once when the notification socket
/// overflowed and lost some (NLMSG_OVERRUN): the content is not needed, the
/// caller re-resolves every backend. The receiver ends (`recv()` gives
/// `None`) if the notification socket fails; the caller should then connect
/// again. Dropping the receiver closes that socket (at its next
/// notification); dropping every clone of the handle closes the other.
///
/// # Errors
///
/// When called outside a tokio runtime, or when a netlink socket cannot be
/// opened or bound to the groups.
pub fn connect() -> anyhow::Result<(Handle, Notifications)> {
    let runtime = tokio::runtime::Handle::try_current()
        .context("resolve::connect must be called inside a tokio runtime")?;
    let (connection, handle, _unsolicited) =
        rtnetlink::new_connection().context("opening a netlink route socket")?;
    // new_multicast_connection binds to the legacy RTMGRP_* bitmask
    // (1 << (RTNLGRP_* - 1)) for groups below 32, as ip monitor does.
    let (notifications, _notify_handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Link,
    ])
    .context("opening a netlink route socket subscribed to neighbour, route and link changes")?;
    runtime.spawn(connection);
    runtime.spawn(notifications);
    let (tx, rx) = unbounded_channel();
    runtime.spawn(async move {
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok((handle, rx))
}

/// The part of a unicast "route get" answer that [`resolve`] uses.
struct Route {
    /// RTA_OIF.
    ifindex: u32,
    /// RTA_GATEWAY, or RTA_VIA (an IPv6 gateway of an IPv4 route, RFC 5549).
    gateway: Option<IpAddr>,
    /// RTAX_MTU of RTA_METRICS, in bytes, when set (non-zero).
    mtu: Option<u32>,
}

/// The route the kernel picks for `dst`: `None` when there is none or it is
/// not a plain unicast route toward an IP next hop.
async fn route_get(handle: &Handle, dst: IpAddr) -> anyhow::Result<Option<Route>> {
    // What `ip route get` sends: family, full-length destination, and
    // RTA_DST; with RTA_DST set, rtnetlink sends no NLM_F_DUMP, so the
    // kernel answers with the one route it resolved (inet_rtm_getroute,
    // inet6_rtm_getroute).
    let mut request = RouteMessage::default();
    request.header.address_family = family_of(dst);
    request.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    request
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let mut answers = handle.route().get(request).execute();
    let route = match answers.try_next().await {
        Ok(Some(route)) => route,
        Ok(None) => return Err(anyhow!("the kernel answered nothing")),
        Err(rtnetlink::Error::NetlinkError(err)) if is_no_route(err.raw_code()) => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    if route.header.kind != RouteType::Unicast {
        return Ok(None);
    }
    let mut ifindex = None;
    let mut gateway = None;
    let mut mtu = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            // An MPLS label or link-layer address as next hop, or a
            // lightweight tunnel: not a plain Ethernet rewrite, so left to
            // bpf_fib_lookup (which answers BPF_FIB_LKUP_RET_UNSUPP_LWT).
            RouteAttribute::Gateway(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::Encap(_)
            | RouteAttribute::EncapType(_) => return Ok(None),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|metric| match metric {
                    RouteMetric::Mtu(bytes) if *bytes != 0 => Some(*bytes),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    let ifindex = ifindex.ok_or_else(|| anyhow!("unicast route without RTA_OIF: {route:?}"))?;
    Ok(Some(Route {
        ifindex,
        gateway,
        mtu,
    }))
}

/// Whether `raw_code` (a negative errno from NLMSG_ERROR) is the kernel's
/// way of saying a route get found no usable route: no route at all
/// (ENETUNREACH), or a route of type unreachable (EHOSTUNREACH), blackhole
/// (EINVAL), prohibit (EACCES) or throw (EAGAIN); see fib_props in
/// net/ipv4/fib_semantics.c and ip6_rt_type_to_error in net/ipv6/route.c.
fn is_no_route(raw_code: i32) -> bool {
    [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::EINVAL,
        libc::EACCES,
        libc::EAGAIN,
    ]
    .contains(&-raw_code)
}

/// The parts of a link [`resolve`] uses.
#[derive(Clone, Copy)]
struct Link {
    /// IFLA_ADDRESS.
    mac: [u8; 6],
    /// IFLA_MTU, in bytes.
    mtu: u32,
}

/// Link `ifindex`: `None` when it is not Ethernet (no 6-byte IFLA_ADDRESS)
/// or no longer exists (deleted since the route get: its notification
/// triggers another resolution).
async fn link_get(handle: &Handle, ifindex: u32) -> anyhow::Result<Option<Link>> {
    let mut answers = handle.link().get().match_index(ifindex).execute();
    let link = match answers.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) => return Err(anyhow!("the kernel answered nothing")),
        Err(rtnetlink::Error::NetlinkError(err)) if -err.raw_code() == libc::ENODEV => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    if link.header.link_layer_type != LinkLayerType::Ether {
        return Ok(None);
    }
    let mut mac = None;
    let mut mtu = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(bytes) => mtu = Some(*bytes),
            _ => {}
        }
    }
    let Some(mac) = mac else {
        return Ok(None);
    };
    let mtu = mtu.ok_or_else(|| anyhow!("link without IFLA_MTU"))?;
    Ok(Some(Link { mac, mtu }))
}

/// The usable neighbour entries (see [`usable`]) with a 6-byte link-layer
/// address on link `ifindex`, of the family of `like`: one dump.
async fn neighbour_table(
    handle: &Handle,
    ifindex: u32,
    like: IpAddr,
) -> anyhow::Result<HashMap<IpAddr, [u8; 6]>> {
    let mut request = handle
        .neighbours()
        .get()
        .set_address_family(family_of(like));
    // The kernel filters a dump by NDA_IFINDEX (neigh_valid_dump_req); the
    // loop below checks the index again all the same.
    request
        .message_mut()
        .attributes
        .push(NeighbourAttribute::IfIndex(ifindex));
    let mut entries = request.execute();
    let mut table = HashMap::new();
    while let Some(entry) = entries.try_next().await? {
        if entry.header.ifindex != ifindex || !usable(entry.header.state) {
            continue;
        }
        let mut dst = None;
        let mut lladdr = None;
        for attribute in &entry.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    dst = Some(IpAddr::V4(*a));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    dst = Some(IpAddr::V6(*a));
                }
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    lladdr = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                }
                _ => {}
            }
        }
        if let (Some(dst), Some(lladdr)) = (dst, lladdr) {
            table.insert(dst, lladdr);
        }
    }
    Ok(table)
}

/// Whether a neighbour entry in `state` may be used: REACHABLE, STALE,
/// DELAY, PROBE or PERMANENT. The kernel's NUD_VALID also counts NOARP,
/// left here to bpf_fib_lookup.
fn usable(state: NeighbourState) -> bool {
    // NUD_* of include/uapi/linux/neighbour.h.
    const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
    u16::from(state) & NUD_USABLE != 0
}

/// AF_INET or AF_INET6, after the version of `addr`.
fn family_of(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, fs::File, os::fd::AsRawFd as _, process::Command, time::Duration};

    use super::*;

    /// The longest any single netlink exchange or notification may take.
    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn usable_states() {
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
        ] {
            assert!(usable(state), "{state}");
        }
        for state in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::Noarp,
            NeighbourState::None,
        ] {
            assert!(!usable(state), "{state}");
        }
    }

    /// A network namespace made by `ip netns add`, deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(name: String) -> Self {
            // The guard exists before the namespace, so that a half-made
            // one is deleted too.
            let netns = Netns(name);
            run(&["netns", "add", &netns.0]);
            netns
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Runs `ip ARGS`, panicking with its stderr when it fails.
    fn run(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `ip -n NETNS ARGS`.
    fn ip(netns: &str, args: &str) {
        let mut all = vec!["-n", netns];
        all.extend(args.split_whitespace());
        run(&all);
    }

    /// [`resolve`] bounded by [`WAIT`].
    async fn resolve_now(handle: &Handle, addr: &str) -> Option<Resolved> {
        let addr: IpAddr = addr.parse().expect("address");
        tokio::time::timeout(WAIT, resolve(handle, addr))
            .await
            .unwrap_or_else(|_| panic!("resolve {addr} timed out"))
            .unwrap_or_else(|err| panic!("resolve {addr}: {err:#}"))
    }

    #[test]
    #[ignore = "needs root: cargo xtask test"]
    fn resolves_in_a_namespace() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root (a network namespace): run `cargo xtask test` as root"
        );
        let netns = Netns::new(format!("lbres-{}", std::process::id()));
        let name = netns.0.clone();
        let thread = std::thread::spawn(move || {
            let ns = File::open(format!("/run/netns/{name}")).expect("opening the namespace");
            // setns moves only this thread; the runtime below and the
            // sockets it opens stay on it.
            // SAFETY: setns with an open namespace file; it changes only this
            // thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(in_namespace(&name));
        });
        let joined = thread.join();
        drop(netns);
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
    }

    async fn in_namespace(ns: &str) {
        ip(ns, "link add rs0 type veth peer name rs1");
        ip(ns, "link set rs0 address 02:50:00:00:00:02");
        // No link-local addresses: their DAD would end with route
        // notifications a second after link up, indistinguishable from
        // the one awaited at the end.
        ip(ns, "link set rs0 addrgenmode none");
        ip(ns, "link set rs1 addrgenmode none");
        ip(ns, "addr add 10.50.0.2/24 dev rs0");
        ip(ns, "-6 addr add fd00:50::2/64 dev rs0 nodad");
        ip(ns, "link set rs1 up");
        ip(ns, "link set rs0 up");
        ip(
            ns,
            "neigh add 10.50.0.21 lladdr 02:50:00:00:00:21 dev rs0 nud permanent",
        );
        ip(
            ns,
            "route add 198.51.100.0/24 via 10.50.0.1 dev rs0 mtu 1400",
        );
        ip(
            ns,
            "neigh add 10.50.0.1 lladdr 02:50:00:00:00:01 dev rs0 nud permanent",
        );
        ip(
            ns,
            "-6 neigh add fd00:50::21 lladdr 02:50:00:00:00:31 dev rs0 nud permanent",
        );
        ip(ns, "route add blackhole 192.0.2.1");
        ip(ns, "route add unreachable 192.0.2.2");
        ip(ns, "route add prohibit 192.0.2.3");
        ip(ns, "-6 route add blackhole fd00:99::1");
        let name = CString::new("rs0").expect("name");
        // SAFETY: a NUL-terminated name that lives across the call.
        let rs0 = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(rs0, 0, "rs0 has no index");

        let (handle, mut notified) = connect().expect("connect");
        let mac = |last: u8| [0x02, 0x50, 0, 0, 0, last];

        assert_eq!(
            resolve_now(&handle, "10.50.0.21").await,
            Some(Resolved {
                ifindex: rs0,
                smac: mac(0x02),
                dmac: mac(0x21),
                mtu: 1500,
            })
        );
        assert_eq!(
            resolve_now(&handle, "198.51.100.7").await,
            Some(Resolved {
                ifindex: rs0,
                smac: mac(0x02),
                dmac: mac(0x01),
                mtu: 1400,
            })
        );
        assert_eq!(
            resolve_now(&handle, "10.50.0.99").await,
            None,
            "no neighbour"
        );
        assert_eq!(resolve_now(&handle, "203.0.113.1").await, None, "no route");
        assert_eq!(resolve_now(&handle, "10.50.0.2").await, None, "local");
        for addr in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "fd00:99::1"] {
            assert_eq!(resolve_now(&handle, addr).await, None, "{addr}");
        }
        assert_eq!(
            resolve_now(&handle, "2001:db8::1").await,
            None,
            "no v6 route"
        );
        assert_eq!(
            resolve_now(&handle, "fd00:50::21").await,
            Some(Resolved {
                ifindex: rs0,
                smac: mac(0x02),
                dmac: mac(0x31),
                mtu: 1500,
            })
        );
        assert_eq!(resolve_now(&handle, "fd00:50::99").await, None);

        // One pass over all of them (links and neighbour tables read once)
        // answers as each resolution alone does.
        let mut pass = Pass::default();
        for addr in [
            "10.50.0.21",
            "198.51.100.7",
            "10.50.0.99",
            "203.0.113.1",
            "fd00:50::21",
            "fd00:50::99",
        ] {
            let parsed: IpAddr = addr.parse().expect("address");
            let in_pass = tokio::time::timeout(WAIT, pass.resolve(&handle, parsed))
                .await
                .expect("in time")
                .expect("pass");
            assert_eq!(in_pass, resolve_now(&handle, addr).await, "{addr}");
        }
        assert_eq!(pass.links.len(), 1, "one link read");
        assert_eq!(pass.neighbours.len(), 2, "one table per family");

        // Wait for a quiet namespace, so that the notification awaited
        // below can only be the replace's.
        let quiet = Duration::from_millis(300);
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(())) = tokio::time::timeout(quiet, notified.recv()).await {}
        })
        .await
        .expect("notifications never stopped");
        ip(
            ns,
            "neigh replace 10.50.0.21 lladdr 02:50:00:00:00:22 dev rs0 nud permanent",
        );
        tokio::time::timeout(WAIT, notified.recv())
            .await
            .expect("no notification within 2 s")
            .expect("notification stream ended");
        let after = resolve_now(&handle, "10.50.0.21").await;
        assert_eq!(after.map(|r| r.dmac), Some(mac(0x22)));
    }
}
