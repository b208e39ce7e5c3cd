//! Whether a VIP's recorded flows agree with its Maglev table
//! ([`lb_common::VIP_F_CONNS_MATCH_TABLE`]), which lets its TCP SYNs skip
//! the connection-table lookup.
//!
//! The flag holds while every usable connection-table entry of a flow of
//! the VIP names the backend the VIP's current table names for that flow.
//! The balancer sets it on a VIP's first table and clears it (before the
//! change is visible) on every change that could break it; the agent then
//! walks the connection table now and again ([`ConnsCheck::walk`]) and sets
//! it again once no entry disagrees ([`super::Balancer::conns_checked`]).
//! A walk counts the entries of unhealthy backends too (still in their
//! VIP's set): a backend that recovers makes its entries usable again
//! without changing the table of the VIP their flows match now, when that
//! is a VIP of a port over the port-0 VIP that recorded them.
//! Entries disagree while flows that a table change moved are alive (they
//! keep their backend) and for a while after they end (an LRU entry stays
//! until it is evicted).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lb_common::{ConnValue, FlowKey, VipKey, flow_hash, maglev_slot, rules::match_vip};

use crate::maglev;

/// Least time between a change of a VIP's table or backends and the start
/// of a walk that may set its flag again: a packet that read the VIP's old
/// table (its program runs for microseconds) has recorded its flow by then.
pub const CONNS_GRACE: Duration = Duration::from_secs(1);

/// A VIP whose flag is clear, as it was when the walk was prepared.
#[derive(Debug, Clone)]
struct Candidate {
    /// [`super::VipState`]'s change count when prepared.
    epoch: u64,
    /// Its Maglev table's members: (backend id, name, weight).
    members: Vec<(u32, Vec<u8>, u32)>,
}

impl Candidate {
    /// Its Maglev table (backend ids), empty when no backend is usable:
    /// built where the walk runs, not in the agent's event loop.
    fn table(&self, table_size: u32) -> Vec<u32> {
        maglev::build(&maglev::borrowed(&self.members), table_size)
    }
}

/// What a walk of the connection table needs, taken from the balancer
/// ([`super::Balancer::conns_check`]) so the walk runs outside it.
#[derive(Debug, Clone)]
pub struct ConnsCheck {
    /// Every VIP by key: its id (the VIP a flow belongs to is found as
    /// `xdp_lb` finds it, port-0 VIPs included).
    vips: HashMap<VipKey, u32>,
    /// The VIPs under check, by id.
    candidates: HashMap<u32, Candidate>,
    /// Entries of every Maglev table.
    table_size: u32,
    /// Backends in a VIP's set, healthy or not: id -> generation. An entry
    /// of one of them is usable now or once its backend recovers.
    live: HashMap<u32, u32>,
}

/// The result of a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnsVerdict {
    /// VIPs (id, epoch) none of whose walked entries disagree.
    pub agree: Vec<(u32, u64)>,
    /// Entries read.
    pub entries: usize,
    /// The walk read every entry (not stopped early, by its bound or
    /// because every candidate disagreed); only a complete walk sets flags.
    pub complete: bool,
}

impl ConnsCheck {
    /// A check with no VIP under it yet: every VIP by key (its id), the
    /// backends in a VIP's set (id -> generation), and the tables' size.
    pub(super) fn new(
        vips: HashMap<VipKey, u32>,
        live: HashMap<u32, u32>,
        table_size: u32,
    ) -> Self {
        Self {
            vips,
            candidates: HashMap::new(),
            live,
            table_size,
        }
    }

    /// Puts VIP `vip_id` (change count `epoch`) under check, with its
    /// table's members: (backend id, name, weight).
    pub(super) fn add(&mut self, vip_id: u32, epoch: u64, members: Vec<(u32, Vec<u8>, u32)>) {
        self.candidates.insert(vip_id, Candidate { epoch, members });
    }

    /// The VIP id of an entry that disagrees with its VIP's table, if the
    /// VIP is under check: the entry's backend is in its VIP's set with the
    /// entry's generation (healthy or not: usable now or once it recovers),
    /// and the table names another backend for the flow (or none: a SYN
    /// would find no backend where its flow has one).
    fn disagreeing(
        &self,
        tables: &HashMap<u32, Vec<u32>>,
        key: &FlowKey,
        entry: &ConnValue,
    ) -> Option<u32> {
        if self.live.get(&entry.backend_id) != Some(&entry.generation) {
            return None;
        }
        let vip_id = *match_vip(key.dport, |port| {
            self.vips.get(&VipKey {
                addr: key.dst,
                port,
                proto: key.proto,
                family: key.family,
            })
        })?;
        let table = tables.get(&vip_id)?;
        let hash = flow_hash(
            key.family, &key.src, &key.dst, key.sport, key.dport, key.proto,
        );
        let choice = u32::try_from(table.len())
            .ok()
            .filter(|&size| size > 0)
            .and_then(|size| table.get(maglev_slot(hash, size) as usize));
        (choice != Some(&entry.backend_id)).then_some(vip_id)
    }

    /// Walks `entries` (the connection table as read), reading at most
    /// `bound` of them: which VIPs under check have no disagreeing entry.
    /// Builds their tables first (a few milliseconds each). Stops early
    /// once every VIP under check disagrees.
    pub fn walk(
        &self,
        entries: impl IntoIterator<Item = (FlowKey, ConnValue)>,
        bound: usize,
    ) -> ConnsVerdict {
        let tables: HashMap<u32, Vec<u32>> = self
            .candidates
            .iter()
            .map(|(&id, c)| (id, c.table(self.table_size)))
            .collect();
        let mut disagree = std::collections::HashSet::new();
        let mut verdict = ConnsVerdict::default();
        let mut entries = entries.into_iter();
        loop {
            if disagree.len() == self.candidates.len() {
                break;
            }
            if verdict.entries >= bound {
                break;
            }
            let Some((key, entry)) = entries.next() else {
                verdict.complete = true;
                break;
            };
            verdict.entries += 1;
            if let Some(vip_id) = self.disagreeing(&tables, &key, &entry) {
                disagree.insert(vip_id);
            }
        }
        if verdict.complete {
            verdict.agree = self
                .candidates
                .iter()
                .filter(|(id, _)| !disagree.contains(*id))
                .map(|(&id, c)| (id, c.epoch))
                .collect();
            verdict.agree.sort_unstable();
        }
        verdict
    }
}

/// Least time between two walks for the same VIPs (with the same change
/// counts): the agent checks every this often.
pub const WALK_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Most time between two walks for the same VIPs: each walk that sets no
/// flag doubles the time to the next one, up to this. A VIP whose moved
/// flows live on (or whose entries a table that is not full never evicts)
/// costs a full walk at most this often.
pub const WALK_MAX_INTERVAL: Duration = Duration::from_secs(320);

/// What [`WalkSchedule::due`] forgives: the agent asks on ticks of
/// [`WALK_MIN_INTERVAL`], each handled a few milliseconds late or early
/// relative to the one before.
pub const TICK_SLACK: Duration = Duration::from_secs(1);

/// When the agent walks the connection table again: at once for VIPs that
/// changed since the last walk, else after a wait that doubles with each
/// walk that set no flag ([`WALK_MIN_INTERVAL`] to [`WALK_MAX_INTERVAL`]).
#[derive(Debug, Clone)]
pub struct WalkSchedule {
    /// The candidates of the last walk and when it started.
    last: Option<(Vec<(u32, u64)>, Instant)>,
    wait: Duration,
}

impl Default for WalkSchedule {
    fn default() -> Self {
        Self {
            last: None,
            wait: WALK_MIN_INTERVAL,
        }
    }
}

impl WalkSchedule {
    /// Whether a walk for `candidates` (`Balancer::conns_waiting`) is due
    /// at `now`: other candidates than the last walk's, or the wait passed,
    /// less [`TICK_SLACK`].
    pub fn due(&self, candidates: &[(u32, u64)], now: Instant) -> bool {
        match &self.last {
            Some((last, at)) if last == candidates => {
                now.saturating_duration_since(*at) + TICK_SLACK >= self.wait
            }
            _ => true,
        }
    }

    /// Records a walk for `candidates` starting at `now`.
    pub fn started(&mut self, candidates: Vec<(u32, u64)>, now: Instant) {
        if self
            .last
            .as_ref()
            .is_none_or(|(last, _)| *last != candidates)
        {
            self.wait = WALK_MIN_INTERVAL;
        }
        self.last = Some((candidates, now));
    }

    /// Records the end of the walk: whether it set a flag.
    pub fn finished(&mut self, set_any: bool) {
        self.wait = if set_any {
            WALK_MIN_INTERVAL
        } else {
            (self.wait * 2).min(WALK_MAX_INTERVAL)
        };
    }
}

/// When a VIP's flag may be set again by a walk prepared at `now`: its last
/// change was at least [`CONNS_GRACE`] before.
pub(super) fn settled(changed_at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(changed_at) >= CONNS_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks for the same VIPs back off from 10 s to 320 s while they set
    /// nothing; a change (another change count) or a flag set starts over.
    #[test]
    fn walks_back_off_while_they_set_nothing() {
        let t0 = Instant::now();
        let mut s = WalkSchedule::default();
        let web = vec![(1, 3)];
        assert!(s.due(&web, t0));
        let mut at = t0;
        let second = Duration::from_secs(1);
        for wait in [20, 40, 80, 160, 320, 320, 320].map(Duration::from_secs) {
            s.started(web.clone(), at);
            s.finished(false);
            // Due on the tick that ends the wait, even a little early.
            assert!(s.due(&web, at + wait - second / 2), "{wait:?}");
            assert!(!s.due(&web, at + wait - second * 2), "{wait:?}");
            at += wait;
        }
        // web changed again: due at once, and the wait starts over.
        let changed = vec![(1, 4)];
        assert!(s.due(&changed, at));
        s.started(changed.clone(), at);
        s.finished(false);
        assert!(s.due(&changed, at + Duration::from_secs(20)));
        assert!(!s.due(&changed, at + Duration::from_secs(18)));
        // A walk that set a flag: the next is 10 s away.
        s.started(changed.clone(), at);
        s.finished(true);
        assert!(s.due(&changed, at + WALK_MIN_INTERVAL));
    }
}
