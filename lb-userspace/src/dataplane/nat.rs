//! Sweeping the pinned NAT table (`LB_NAT`; docs/datapath.md, "NAT modes"): translations idle
//! past their timeout (`lb_common::nat::expired`: established TCP,
//! closing TCP, unanswered, UDP) are removed, both entries, so the LRU
//! never has to evict a live one; what stays is counted per VIP and per
//! backend for `/status` and `/metrics`.

use std::{
    borrow::BorrowMut,
    collections::HashMap as StdHashMap,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{FlowKey, MAP_NAT, NAT_F_REPLY, NatEntry, NatTimeouts, expired, nat_clock};

use crate::balancer::store::{MapStoreError, wrap};

/// How often the agent sweeps the NAT table.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a sweep may take per 2^20 entries of the table (two system
/// calls per entry, as a connection-table walk).
pub const SWEEP_TIME_PER_MEBI_ENTRIES: Duration = Duration::from_secs(20);

/// What one sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSweep {
    /// Live translations by VIP id.
    pub by_vip: StdHashMap<u16, u64>,
    /// Live translations by backend id.
    pub by_backend: StdHashMap<u32, u64>,
    /// Translations removed as expired (both entries, or a lone entry).
    pub expired: u64,
    /// Entries read.
    pub entries: u64,
    /// Whether the sweep read the whole table (not stopped by its time
    /// limit, a read error or the agent stopping).
    pub complete: bool,
}

/// The machine's `CLOCK_MONOTONIC` in [`nat_clock`] units: the clock of
/// `bpf_ktime_get_ns`.
pub fn now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    nat_clock(ns)
}

/// Sweeps the NAT table pinned in `dir` ([`sweep_map`]) at clock [`now`].
///
/// # Errors
/// The pinned map cannot be opened or its size read.
pub fn sweep_pinned(
    dir: &Path,
    timeouts: &NatTimeouts,
    stop: &AtomicBool,
) -> Result<NatSweep, MapStoreError> {
    let data = MapData::from_pin(dir.join(MAP_NAT)).map_err(wrap(MAP_NAT, "open pin"))?;
    let max_entries = data
        .info()
        .map_err(wrap(MAP_NAT, "read the size of"))?
        .max_entries();
    let map = Map::from_map_data(data).map_err(wrap(MAP_NAT, "open pin"))?;
    let mut nat: HashMap<MapData, FlowKey, NatEntry> =
        HashMap::try_from(map).map_err(wrap(MAP_NAT, "open pin"))?;
    Ok(sweep_map(&mut nat, timeouts, now(), max_entries, stop))
}

/// Sweeps `nat` at clock `now`: reads at most twice `max_entries` keys
/// within [`SWEEP_TIME_PER_MEBI_ENTRIES`] per 2^20 entries, counts every
/// live translation by its forward entry, and removes, after the read,
/// the entries of every expired translation (so the kernel's iteration is
/// not restarted by removals under it).
pub fn sweep_map<T: BorrowMut<MapData>>(
    nat: &mut HashMap<T, FlowKey, NatEntry>,
    timeouts: &NatTimeouts,
    now: u32,
    max_entries: u32,
    stop: &AtomicBool,
) -> NatSweep {
    let limit = SWEEP_TIME_PER_MEBI_ENTRIES * max_entries.div_ceil(1 << 20).max(1);
    let started = Instant::now();
    let mut out = NatSweep {
        complete: true,
        ..NatSweep::default()
    };
    let mut doomed: Vec<FlowKey> = Vec::new();
    let most = u64::from(max_entries) * 2;
    for key in nat.keys() {
        if out.entries >= most || stop.load(Ordering::Relaxed) || started.elapsed() > limit {
            out.complete = false;
            break;
        }
        let Ok(key) = key else {
            out.complete = false;
            break;
        };
        out.entries += 1;
        // Removed under the sweep: skipped.
        let Ok(entry) = nat.get(&key, 0) else {
            continue;
        };
        let peer_key = entry.peer_key(&key);
        let peer = nat.get(&peer_key, 0).ok();
        let reply = entry.flags & NAT_F_REPLY != 0;
        if reply && peer.is_some() {
            // Counted and judged with its forward entry.
            continue;
        }
        let (forward, back) = if reply {
            (None, Some(&entry))
        } else {
            (Some(&entry), peer.as_ref())
        };
        if expired(key.proto, forward, back, now, timeouts) {
            out.expired += 1;
            doomed.push(key);
            if peer.is_some() {
                doomed.push(peer_key);
            }
        } else if !reply {
            *out.by_vip.entry(entry.vip_id).or_default() += 1;
            *out.by_backend.entry(entry.backend_id).or_default() += 1;
        }
    }
    for key in &doomed {
        // Gone already (the data path replaced it, or the LRU evicted it).
        let _ = nat.remove(key);
    }
    out
}
