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
//! Entries disagree while flows that a table change moved are alive (they
//! keep their backend) and for a while after they end (an LRU entry stays
//! until it is evicted).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lb_common::{ConnValue, FlowKey, VipKey, flow_hash, maglev_slot, rules::match_vip};

/// Least time between a change of a VIP's table or backends and the start
/// of a walk that may set its flag again: a packet that read the VIP's old
/// table (its program runs for microseconds) has recorded its flow by then.
pub const CONNS_GRACE: Duration = Duration::from_secs(1);

/// A VIP whose flag is clear, as it was when the walk was prepared.
#[derive(Debug, Clone)]
struct Candidate {
    /// [`super::VipState`]'s change count when prepared.
    epoch: u64,
    /// Its Maglev table (backend ids), empty when no backend is usable.
    table: Vec<u32>,
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
    /// Usable backends (in a VIP's set and healthy): id -> generation.
    usable: HashMap<u32, u32>,
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
    pub(super) fn new(vips: HashMap<VipKey, u32>, usable: HashMap<u32, u32>) -> Self {
        Self {
            vips,
            candidates: HashMap::new(),
            usable,
        }
    }

    pub(super) fn add(&mut self, vip_id: u32, epoch: u64, table: Vec<u32>) {
        self.candidates.insert(vip_id, Candidate { epoch, table });
    }

    /// Whether no VIP is under check.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The VIP id of an entry that disagrees with its VIP's table, if the
    /// VIP is under check: the entry is usable (its backend usable, same
    /// generation), and the table names another backend for the flow (or
    /// none: a SYN would find no backend where its flow has one).
    fn disagreeing(&self, key: &FlowKey, entry: &ConnValue) -> Option<u32> {
        if self.usable.get(&entry.backend_id) != Some(&entry.generation) {
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
        let candidate = self.candidates.get(&vip_id)?;
        let hash = flow_hash(
            key.family, &key.src, &key.dst, key.sport, key.dport, key.proto,
        );
        let choice = u32::try_from(candidate.table.len())
            .ok()
            .filter(|&size| size > 0)
            .and_then(|size| candidate.table.get(maglev_slot(hash, size) as usize));
        (choice != Some(&entry.backend_id)).then_some(vip_id)
    }

    /// Walks `entries` (the connection table as read), reading at most
    /// `bound` of them: which VIPs under check have no disagreeing entry.
    /// Stops early once every VIP under check disagrees.
    pub fn walk(
        &self,
        entries: impl IntoIterator<Item = (FlowKey, ConnValue)>,
        bound: usize,
    ) -> ConnsVerdict {
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
            if let Some(vip_id) = self.disagreeing(&key, &entry) {
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

/// When a VIP's flag may be set again by a walk prepared at `now`: its last
/// change was at least [`CONNS_GRACE`] before.
pub(super) fn settled(changed_at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(changed_at) >= CONNS_GRACE
}
