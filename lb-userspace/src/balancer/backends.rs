//! Operations on one backend: health ([`Balancer::set_health`]), weight
//! and removal.

use super::*;

impl<M: MapStore> Balancer<M> {
    /// Records a health-check result for backend `backend` of VIP `vip`
    /// (indices into [`Self::vips`] and its backends). When the state
    /// changes, writes the backend's flags and republishes the VIP's table.
    /// Returns whether anything changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_health(
        &mut self,
        vip: usize,
        backend: usize,
        healthy: bool,
    ) -> Result<bool, BalancerError> {
        let b = &self.vips[vip].backends[backend];
        if b.healthy == healthy {
            return Ok(false);
        }
        let (id, address, vip_id) = (b.id, b.address, self.vips[vip].id);
        // A backend usable again brings back its recorded flows.
        self.conns_changed(vip)?;
        let mut flags = BACKEND_F_ACTIVE;
        if healthy {
            flags |= BACKEND_F_HEALTHY;
        }
        self.vips[vip].backends[backend].healthy = healthy;
        let result = self
            .maps
            .set_backend(
                id,
                &backend_value(address, flags, self.generations[id as usize], vip_id),
            )
            .map_err(BalancerError::from)
            .and_then(|()| {
                if self.table_changed(vip)? {
                    self.publish_table(vip)?;
                }
                Ok(())
            });
        if result.is_err() {
            self.vips[vip].backends[backend].healthy = !healthy;
        }
        result.map(|()| true)
    }

    /// Sets the weight of backend `backend` of VIP `vip` and republishes the
    /// VIP's table. Weight 0 drains: the backend takes no new flow, and flows
    /// in the connection table stay on it. Returns whether it changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_weight(
        &mut self,
        vip: usize,
        backend: usize,
        weight: u32,
    ) -> Result<bool, BalancerError> {
        let old = std::mem::replace(&mut self.vips[vip].backends[backend].weight, weight);
        if old == weight {
            return Ok(false);
        }
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends[backend].weight = old;
            return Err(e);
        }
        Ok(true)
    }

    /// Removes backend `backend` from VIP `vip`: the VIP's table is
    /// republished without it, then its entry is marked inactive (so flows
    /// in the connection table are hashed again) and its id freed.
    ///
    /// # Errors
    /// A map write fails.
    pub fn remove_backend(&mut self, vip: usize, backend: usize) -> Result<(), BalancerError> {
        let removed = self.vips[vip].backends.remove(backend);
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends.insert(backend, removed);
            return Err(e);
        }
        let vip_id = self.vips[vip].id;
        self.retire_backend(&removed, vip_id)
    }
}
