//! Maglev tables and their regions of the Maglev map: a new table is
//! written into a free region, then the VIP is pointed at it (one map
//! update), so a packet sees either table, never a mix.

use super::*;

impl<M: MapStore> Balancer<M> {
    /// A new [`VipState::epoch`].
    pub(super) fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// Whether VIP `i`'s table must be written: its members changed, or (adopted)
    /// the table in its region differs from the one its members give.
    pub(super) fn table_changed(&mut self, i: usize) -> Result<bool, BalancerError> {
        let members = self.vips[i].members();
        match (&self.vips[i].published, self.vips[i].region) {
            (Some(published), _) => Ok(*published != members),
            (None, None) => Ok(!members.is_empty()),
            (None, Some(region)) => {
                let table = self.table(i);
                let current = self.maps.table(self.offset(region), self.table_size)?;
                if table == current {
                    self.vips[i].published = Some(members);
                    return Ok(false);
                }
                Ok(true)
            }
        }
    }

    /// Writes VIP `i`'s map entry for its current region and flags.
    pub(super) fn write_vip(&mut self, i: usize) -> Result<(), BalancerError> {
        let state = &self.vips[i];
        let flags = vip_flags(&state.config);
        let map_flags = if state.conns_match {
            flags | VIP_F_CONNS_MATCH_TABLE
        } else {
            flags
        };
        let value = VipValue {
            vip_id: state.id,
            table_offset: state.region.map_or(0, |r| self.offset(r)),
            table_size: if state.region.is_some() {
                self.table_size
            } else {
                0
            },
            flags: map_flags,
        };
        self.maps.set_vip(&vip_key(&state.config), &value)?;
        self.vips[i].flags = flags;
        Ok(())
    }

    /// The first entry of `region` in the Maglev map. Regions are below the
    /// map's capacity in tables, whose product with the table size was
    /// checked to fit a `u32` when the map was sized
    /// ([`crate::config::sizing::Sizing::new`]); saturating, so a broken invariant
    /// gives an out-of-range offset that the map write refuses, never a
    /// wrapped one that overwrites another table.
    pub(super) fn offset(&self, region: u32) -> u32 {
        region.saturating_mul(self.table_size)
    }

    /// Builds VIP `vip`'s table, writes it into a free region and points the
    /// VIP at it; the old region is freed. Clears the VIP's
    /// [`VIP_F_CONNS_MATCH_TABLE`] first.
    pub(super) fn publish_table(&mut self, vip: usize) -> Result<(), BalancerError> {
        self.conns_changed(vip)?;
        self.write_table(vip)
    }

    /// [`Self::publish_table`] without touching the VIP's flows' flag.
    pub(super) fn write_table(&mut self, vip: usize) -> Result<(), BalancerError> {
        let result = self.write_table_now(vip);
        // The grace before a walk counts from when the table is out.
        self.vips[vip].changed_at = Instant::now();
        result
    }

    pub(super) fn write_table_now(&mut self, vip: usize) -> Result<(), BalancerError> {
        let table = self.table(vip);
        let new_region = if table.is_empty() {
            None
        } else {
            let region = self.regions.take("Maglev table regions")?;
            if let Err(e) = self.maps.write_table(self.offset(region), &table) {
                self.regions.give(region);
                return Err(e.into());
            }
            Some(region)
        };
        let old = std::mem::replace(&mut self.vips[vip].region, new_region);
        if let Err(e) = self.write_vip(vip) {
            self.vips[vip].region = old;
            if let Some(r) = new_region {
                self.regions.give(r);
            }
            return Err(e);
        }
        self.vips[vip].published = Some(self.vips[vip].members());
        // A packet that read the old offset just before the update may still
        // be reading the old region: it goes to the back of the free queue,
        // so every other free region (at least the spares) is written first,
        // each after a table build (milliseconds), before it is rewritten.
        if let Some(old) = old {
            self.regions.give(old);
        }
        Ok(())
    }
}
