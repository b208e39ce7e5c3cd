//! Walking the pinned connection table for [`ConnsCheck`]: whether a VIP's
//! recorded flows agree with its Maglev table again, so its TCP SYNs may
//! skip the connection-table lookup ([`lb_common::VIP_F_CONNS_MATCH_TABLE`]).

use std::{
    borrow::Borrow,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{ConnValue, FlowKey, MAP_CONNS};

use crate::balancer::store::{MapStoreError, wrap};
use crate::balancer::{ConnsCheck, ConnsVerdict};

/// Longest a walk may take per 2^20 entries of the connection table's
/// size (at least this); a walk stopped by it sets no flag. Reading an
/// entry costs two system calls (next key, then value): about a second per
/// million entries on the bench machine.
pub const WALK_TIME_PER_MEBI_ENTRIES: Duration = Duration::from_secs(20);

/// Longest a walk of a connection table of `max_entries` flows may take.
pub fn walk_time_limit(max_entries: u32) -> Duration {
    WALK_TIME_PER_MEBI_ENTRIES * max_entries.div_ceil(1 << 20).max(1)
}

/// Walks the connection table pinned in `dir` for `check` ([`walk_map`]),
/// bounded by the size the kernel reports for it (an adopted table keeps
/// the size it was created with).
///
/// # Errors
/// The pinned map cannot be opened or its size read.
pub fn walk_pinned(
    dir: &Path,
    check: &ConnsCheck,
    stop: &AtomicBool,
) -> Result<ConnsVerdict, MapStoreError> {
    let data = MapData::from_pin(dir.join(MAP_CONNS)).map_err(wrap(MAP_CONNS, "open pin"))?;
    let max_entries = data
        .info()
        .map_err(wrap(MAP_CONNS, "read the size of"))?
        .max_entries();
    let map = Map::from_map_data(data).map_err(wrap(MAP_CONNS, "open pin"))?;
    let conns: HashMap<MapData, FlowKey, ConnValue> =
        HashMap::try_from(map).map_err(wrap(MAP_CONNS, "open pin"))?;
    Ok(walk_map(&conns, check, max_entries, stop))
}

/// Walks connection table `conns` for `check`: at most twice `max_entries`
/// entries (a key removed under the walk restarts the kernel's iteration
/// from the first bucket) and [`walk_time_limit`], and no further once
/// `stop` is set (the agent is stopping). Entries removed while the walk
/// reads them are skipped; a read error ends the walk as incomplete, and
/// an incomplete walk finds no VIP in agreement.
pub fn walk_map<T: Borrow<MapData>>(
    conns: &HashMap<T, FlowKey, ConnValue>,
    check: &ConnsCheck,
    max_entries: u32,
    stop: &AtomicBool,
) -> ConnsVerdict {
    let started = Instant::now();
    let limit = walk_time_limit(max_entries);
    let mut cut = false;
    let entries = conns.iter().map_while(|entry| {
        if started.elapsed() > limit || stop.load(Ordering::Relaxed) {
            cut = true;
            return None;
        }
        // aya's iterator skips keys removed between next-key and lookup.
        match entry {
            Ok(entry) => Some(entry),
            Err(_) => {
                cut = true;
                None
            }
        }
    });
    let bound = usize::try_from(max_entries)
        .unwrap_or(usize::MAX)
        .saturating_mul(2);
    let mut verdict = check.walk(entries, bound);
    if cut {
        verdict.complete = false;
        verdict.agree.clear();
    }
    verdict
}
