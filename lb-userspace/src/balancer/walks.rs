//! The balancer's side of connection-table walks: which VIPs wait for
//! one, what a walk's verdict changes (the SYN shortcut flag), and the
//! flow caches' epoch.

use super::*;

impl<M: MapStore> Balancer<M> {
    /// Records a change to VIP `i` that could make a recorded flow disagree
    /// with its table (a new table, a backend usable again, its flows of a
    /// port back from a removed VIP of that port), and clears its
    /// [`VIP_F_CONNS_MATCH_TABLE`] first: SYNs look their flows up from
    /// now on. Call before the change is written.
    pub(super) fn conns_changed(&mut self, i: usize) -> Result<(), BalancerError> {
        let epoch = self.next_epoch();
        let vip = &mut self.vips[i];
        vip.epoch = epoch;
        vip.changed_at = Instant::now();
        if vip.conns_match {
            vip.conns_match = false;
            if let Err(e) = self.write_vip(i) {
                self.vips[i].conns_match = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// What a walk of the connection table needs to set
    /// [`VIP_F_CONNS_MATCH_TABLE`] again: the VIPs without it whose last
    /// change was at least [`CONNS_GRACE`] before `now`, with their tables.
    /// `None` when there is none.
    pub fn conns_check(&self, now: Instant) -> Option<ConnsCheck> {
        if !self.vips.iter().any(|v| v.waits_for_walk(now)) {
            return None;
        }
        let vips = self
            .vips
            .iter()
            .map(|v| (vip_key(&v.config), v.id))
            .collect();
        // Healthy or not: an entry of an unhealthy backend is usable again
        // once it recovers, which need not change the VIP its flow now
        // matches (a port VIP over the port-0 VIP that recorded it).
        let live = self
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .map(|b| (b.id, self.generations[b.id as usize]))
            .collect();
        let mut check = ConnsCheck::new(vips, live, self.table_size);
        for vip in self.vips.iter().filter(|v| v.waits_for_walk(now)) {
            check.add(vip.id, vip.epoch, vip.table_input());
        }
        Some(check)
    }

    /// The VIPs a walk prepared at `now` would check ([`Self::conns_check`]):
    /// (VIP id, change count), sorted; cheap, for deciding whether a walk
    /// is due ([`WalkSchedule::due`]).
    pub fn conns_waiting(&self, now: Instant) -> Vec<(u32, u64)> {
        let mut waiting: Vec<(u32, u64)> = self
            .vips
            .iter()
            .filter(|v| v.waits_for_walk(now))
            .map(|v| (v.id, v.epoch))
            .collect();
        waiting.sort_unstable();
        waiting
    }

    /// Sets [`VIP_F_CONNS_MATCH_TABLE`] on the VIPs a complete walk found in
    /// agreement, unless they changed since the walk was prepared; returns
    /// the names of those it set.
    ///
    /// # Errors
    /// A map write fails (the flag stays clear).
    pub fn conns_checked(&mut self, verdict: &ConnsVerdict) -> Result<Vec<String>, BalancerError> {
        let mut set = Vec::new();
        if !verdict.complete {
            return Ok(set);
        }
        let due: Vec<usize> = verdict
            .agree
            .iter()
            .filter_map(|&(id, epoch)| {
                let i = self.vips.iter().position(|v| v.id == id)?;
                (self.vips[i].epoch == epoch && !self.vips[i].conns_match).then_some(i)
            })
            .collect();
        if due.is_empty() {
            return Ok(set);
        }
        // The walk read the connection table, not the flow caches' copies:
        // copies made before the walk (of entries gone since) are retired
        // first, so a SYN that skips the table meets no copy that names
        // another backend.
        self.retire_flow_caches()?;
        for i in due {
            self.vips[i].conns_match = true;
            if let Err(e) = self.write_vip(i) {
                self.vips[i].conns_match = false;
                return Err(e);
            }
            set.push(self.vips[i].config.name.clone());
        }
        Ok(set)
    }

    /// Retires every flow-cache copy (`lb_common::FlowCacheEntry`) by moving
    /// the connection-table epoch (`Globals::conns_epoch`) on: the next
    /// packet of each flow reads the connection table. For whoever removes
    /// connection-table entries and must not meet their copies: a walk
    /// before it lets SYNs skip the table, and tests that empty the table.
    ///
    /// # Errors
    /// The globals write fails (the epoch stays).
    pub fn retire_flow_caches(&mut self) -> Result<(), BalancerError> {
        let globals = Globals {
            conns_epoch: self.globals.conns_epoch.wrapping_add(1),
            ..self.globals
        };
        self.maps.set_globals(&globals)?;
        self.globals = globals;
        Ok(())
    }
}
