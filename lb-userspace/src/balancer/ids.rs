//! Id allocation for VIPs, backends and Maglev table regions.

use std::collections::{HashSet, VecDeque};

use super::BalancerError;

/// Allocator of ids `0..capacity`, lowest first at the start. A freed id
/// is handed out next (ids: keeps them compact; a reused backend id gets a
/// new generation), or, for a first-in-first-out pool, last: for Maglev
/// regions that is what keeps a reader safe, since a region just freed
/// (that a packet on another CPU may still be reading) is written again only
/// after every other free region has been used.
#[derive(Debug)]
pub(super) struct IdPool {
    pub(super) free: VecDeque<u32>,
    pub(super) capacity: u32,
    fifo: bool,
}

impl IdPool {
    /// Every id free except those in `used`; freed ids are reused first.
    pub(super) fn new(capacity: u32, used: &HashSet<u32>) -> Self {
        Self {
            free: (0..capacity).filter(|id| !used.contains(id)).collect(),
            capacity,
            fifo: false,
        }
    }

    /// Every id free except those in `used`; freed ids are reused last.
    pub(super) fn fifo(capacity: u32, used: &HashSet<u32>) -> Self {
        Self {
            fifo: true,
            ..Self::new(capacity, used)
        }
    }

    pub(super) fn take(&mut self, what: &'static str) -> Result<u32, BalancerError> {
        self.free.pop_front().ok_or(BalancerError::Capacity {
            what,
            capacity: self.capacity,
        })
    }

    pub(super) fn give(&mut self, id: u32) {
        if self.fifo {
            self.free.push_back(id);
        } else {
            self.free.push_front(id);
        }
    }
}
