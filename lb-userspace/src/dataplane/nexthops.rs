//! The backends' next hops in `LB_NEXTHOPS`: the agent resolves each
//! backend's route and neighbour ([`super::resolve`]) and writes the answer
//! where `xdp_lb` reads it instead of calling `bpf_fib_lookup` per packet.
//! It resolves again on every netlink notification of a neighbour, route or
//! link change (debounced by [`SETTLE`]), when the backend set changes, and
//! every [`REFRESH`] in case a notification was lost. An entry that cannot
//! be resolved is emptied, and `xdp_lb` falls back to the FIB lookup.

pub use crate::balancer::NextHopTarget;
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use lb_common::{CachedNextHop, MAP_NEXTHOPS};
use log::{info, warn};
use tokio::{sync::watch, time::Instant};

use super::resolve::{self, Resolved};

/// Time given to a burst of notifications to settle before resolving.
pub const SETTLE: Duration = Duration::from_millis(20);
/// Least time between the starts of two resolutions caused by
/// notifications: on a busy host neighbour entries change state (reachable,
/// stale, probe) all the time, and each resolution asks the kernel three
/// questions per backend address. A change still reaches the data plane
/// within this plus [`SETTLE`] plus the resolution itself.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest time between two resolutions of every backend.
pub const REFRESH: Duration = Duration::from_secs(10);
/// Least time between two solicitations of one unresolved backend
/// ([`solicit`]).
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Makes the kernel resolve the neighbour toward backend `address`: one
/// empty UDP datagram to its discard port (9, RFC 863), which the kernel
/// queues while it sends ARP or neighbour solicitations; the neighbour
/// entry it makes is then seen by the next resolution. Errors (no route)
/// are ignored: the resolution says so already.
pub fn solicit(address: IpAddr) {
    let any: std::net::SocketAddr = if address.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    if let Ok(socket) = std::net::UdpSocket::bind(any) {
        let _ = socket.send_to(&[], (address, DISCARD_PORT));
    }
}

/// The discard service's port (RFC 863).
const DISCARD_PORT: u16 = 9;

/// What one [`NextHopWriter::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries written with a next hop.
    pub written: usize,
    /// Entries emptied (no longer a backend, or not resolvable).
    pub emptied: usize,
    /// Map writes that failed (retried on the next resolution).
    pub failed: usize,
}

/// Smallest MTU a cached next hop may carry (RFC 791's 68 bytes): an
/// answer below it is not cached, so a bad answer cannot make `xdp_lb`
/// answer every packet with "too big".
const MIN_MTU: u32 = 68;

/// The map entry for `target` resolved as `resolved`.
fn entry(target: &NextHopTarget, resolved: Option<&Resolved>) -> CachedNextHop {
    match resolved {
        Some(r) if r.ifindex != 0 && r.mtu >= MIN_MTU => CachedNextHop {
            generation: target.generation,
            ifindex: r.ifindex,
            mtu: u16::try_from(r.mtu).unwrap_or(u16::MAX),
            smac: r.smac,
            dmac: r.dmac,
            _pad: [0; 2],
        },
        _ => CachedNextHop::default(),
    }
}

/// Writes `LB_NEXTHOPS`, keeping a copy of its non-empty entries so that
/// only changes reach the kernel.
pub struct NextHopWriter {
    map: Array<MapData, CachedNextHop>,
    /// Every non-empty entry of the map, by backend id.
    written: HashMap<u32, CachedNextHop>,
}

impl NextHopWriter {
    /// The writer of the map pinned in `dir`, with the entries already in
    /// it (an agent killed before it could empty them leaves them).
    ///
    /// # Errors
    /// The pin cannot be opened or read, or is not an array of
    /// [`CachedNextHop`].
    pub fn from_pin(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MAP_NEXTHOPS);
        let data = MapData::from_pin(&path)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
        Self::new(Map::Array(data))
    }

    /// The writer of `map` (the `LB_NEXTHOPS` of a loaded object), with
    /// the entries already in it.
    ///
    /// # Errors
    /// `map` is not an array of [`CachedNextHop`], or cannot be read.
    pub fn new(map: Map) -> anyhow::Result<Self> {
        let map: Array<MapData, CachedNextHop> = Array::try_from(map)
            .map_err(|e| anyhow::anyhow!("{MAP_NEXTHOPS} is not the expected array: {e}"))?;
        let mut written = HashMap::new();
        for (id, value) in (0u32..).zip(map.iter()) {
            let value = value.map_err(|e| anyhow::anyhow!("reading {MAP_NEXTHOPS}: {e}"))?;
            if value.ifindex != 0 {
                written.insert(id, value);
            }
        }
        Ok(Self { map, written })
    }

    /// Writes the entry of every target from `resolved` (by address; a
    /// missing or `None` answer empties it) and empties the entries of ids
    /// that are no longer targets. Writes only what differs from the map.
    pub fn apply(
        &mut self,
        targets: &[NextHopTarget],
        resolved: &HashMap<IpAddr, Option<Resolved>>,
    ) -> Applied {
        let mut applied = Applied::default();
        let mut wanted: HashMap<u32, CachedNextHop> = targets
            .iter()
            .map(|t| {
                (
                    t.id,
                    entry(t, resolved.get(&t.address).copied().flatten().as_ref()),
                )
            })
            .collect();
        for id in self.written.keys() {
            wanted.entry(*id).or_default();
        }
        for (id, value) in wanted {
            if self.written.get(&id).copied().unwrap_or_default() == value {
                continue;
            }
            match self.map.set(id, value, 0) {
                Ok(()) => {
                    if value.ifindex == 0 {
                        applied.emptied += 1;
                        self.written.remove(&id);
                    } else {
                        applied.written += 1;
                        self.written.insert(id, value);
                    }
                }
                Err(e) => {
                    applied.failed += 1;
                    warn!(
                        "writing the next hop of backend id {id}: {e}; retried on the next resolution"
                    );
                }
            }
        }
        applied
    }

    /// Empties every entry written, so `xdp_lb` uses the FIB while no
    /// agent keeps the next hops current (`lb run --keep-attached` exit).
    pub fn clear(&mut self) -> Applied {
        self.apply(&[], &HashMap::new())
    }
}

/// Resolves every distinct address of `targets` in one [`resolve::Pass`]
/// (a route get each; each egress link and its neighbour table read once);
/// a netlink failure counts as unresolved (the FIB lookup then serves) and
/// is logged.
pub async fn resolve_all(
    handle: &rtnetlink::Handle,
    targets: &[NextHopTarget],
) -> HashMap<IpAddr, Option<Resolved>> {
    let addresses: HashSet<IpAddr> = targets.iter().map(|t| t.address).collect();
    let mut out = HashMap::with_capacity(addresses.len());
    let mut pass = resolve::Pass::default();
    for address in addresses {
        let answer = match pass.resolve(handle, address).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(
                    "resolving the next hop of backend {address}: {e:#}; bpf_fib_lookup serves it"
                );
                None
            }
        };
        out.insert(address, answer);
    }
    out
}

/// Keeps `LB_NEXTHOPS` current until `targets` is closed: resolves every
/// target at once, then again on each netlink notification (after
/// [`SETTLE`], and at most every [`MIN_INTERVAL`]), each change of
/// `targets`, and every [`REFRESH`]; solicits the neighbour of each
/// unresolved backend ([`solicit`], at most every [`PROBE_EVERY`]). Logs each
/// backend address whose next hop changes. When the notifications end it
/// connects again; if it cannot, or they end again within [`REFRESH`], it
/// empties the cache and ends, since a next hop nobody watches could go
/// stale. Closing `targets` ends it, even in the middle of a pass, and
/// empties the cache.
pub async fn maintain(
    mut handle: rtnetlink::Handle,
    mut notifications: resolve::Notifications,
    mut writer: NextHopWriter,
    mut targets: watch::Receiver<Vec<NextHopTarget>>,
) {
    let mut known: HashMap<IpAddr, Option<Resolved>> = HashMap::new();
    let mut reconnected: Option<Instant> = None;
    // When each unresolved backend was last solicited.
    let mut probed: HashMap<IpAddr, Instant> = HashMap::new();
    loop {
        let started = Instant::now();
        let current = targets.borrow_and_update().clone();
        // A pass over many backends takes a while: new targets start it
        // again, and closed targets (the agent stopping) end it at once.
        let resolved = tokio::select! {
            resolved = resolve_all(&handle, &current) => resolved,
            changed = targets.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        for (address, answer) in &resolved {
            if known.get(address) != Some(answer) {
                match answer {
                    Some(r) => info!(
                        "next hop of backend {address}: interface {} to {}, MTU {} (used by xdp_lb instead of a FIB lookup)",
                        r.ifindex,
                        mac(&r.dmac),
                        r.mtu
                    ),
                    None => info!(
                        "next hop of backend {address}: not resolved (no route or no usable neighbour entry); xdp_lb looks it up per packet"
                    ),
                }
            }
        }
        let applied = writer.apply(&current, &resolved);
        if applied.failed > 0 {
            warn!("{} next-hop writes failed", applied.failed);
        }
        // Unresolved backends: make the kernel resolve their neighbour (a
        // packet xdp_lb hands it carries the node's own source address, which
        // it drops as a martian without resolving anything).
        for (address, answer) in &resolved {
            if answer.is_none()
                && probed
                    .get(address)
                    .is_none_or(|at: &Instant| at.elapsed() >= PROBE_EVERY)
            {
                solicit(*address);
                probed.insert(*address, Instant::now());
            }
        }
        probed.retain(|address, _| resolved.get(address).is_some_and(Option::is_none));
        known = resolved;
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            notified = notifications.recv() => {
                if notified.is_some() {
                    // Let a burst (a link going down touches many routes and
                    // neighbours) settle, and take it as one.
                    tokio::time::sleep_until((started + MIN_INTERVAL).max(Instant::now() + SETTLE)).await;
                    while notifications.try_recv().is_ok() {}
                    continue;
                }
                // Without notifications a cached next hop could go stale
                // unnoticed: connect again, or stop caching.
                if reconnected.is_some_and(|at| at.elapsed() < REFRESH) {
                    warn!("netlink notifications ended again within {}s of connecting: next-hop cache emptied, xdp_lb looks next hops up per packet", REFRESH.as_secs());
                    break;
                }
                warn!("netlink notifications of neighbour and route changes ended; connecting again");
                match resolve::connect() {
                    Ok((h, n)) => {
                        (handle, notifications) = (h, n);
                        reconnected = Some(Instant::now());
                    }
                    Err(e) => {
                        warn!("cannot connect again ({e:#}): next-hop cache emptied, xdp_lb looks next hops up per packet");
                        break;
                    }
                }
            }
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
    let cleared = writer.clear();
    if cleared.emptied > 0 {
        info!(
            "emptied {} cached next hops: xdp_lb looks them up per packet until an agent keeps them again",
            cleared.emptied
        );
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> NextHopTarget {
        NextHopTarget {
            id: 7,
            generation: 3,
            address: "10.0.0.21".parse().expect("address"),
        }
    }

    fn resolved(mtu: u32) -> Resolved {
        Resolved {
            ifindex: 2,
            smac: [2, 0, 0, 0, 0, 2],
            dmac: [2, 0, 0, 0, 0, 0x21],
            mtu,
        }
    }

    #[test]
    fn an_entry_carries_the_generation_and_a_usable_mtu() {
        let e = entry(&target(), Some(&resolved(9000)));
        assert_eq!((e.generation, e.ifindex, e.mtu), (3, 2, 9000));
        assert_eq!(e.dmac, [2, 0, 0, 0, 0, 0x21]);
        // Above 65535 (a loopback-like MTU): capped, still cached.
        assert_eq!(entry(&target(), Some(&resolved(65536))).mtu, u16::MAX);
        // Unresolved, or an MTU no link has: empty (the FIB serves it).
        assert_eq!(entry(&target(), None), CachedNextHop::default());
        assert_eq!(
            entry(&target(), Some(&resolved(0))),
            CachedNextHop::default()
        );
        assert_eq!(entry(&target(), Some(&resolved(67))).ifindex, 0);
    }
}
