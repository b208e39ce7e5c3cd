//! How big a configuration makes the data plane: the Maglev table map
//! (tables of `maglev.table_size` entries, one region per VIP plus spare
//! regions for replacements), the connection table, and the id spaces. Both
//! `lb check` and `lb run` size the maps with [`Sizing::new`], so a
//! configuration that `check` accepts is one that `run` can start; every
//! product is computed with checked arithmetic in `u64`.
//!
//! Memory is counted as entries x bytes per entry, as the kernel allocates
//! it: arrays are allocated whole at creation (kernel/bpf/arraymap.c), hash
//! maps preallocate every element with an overhead per element
//! (kernel/bpf/hashtab.c, `struct htab_elem`).

use std::fmt;

use lb_common::{
    ConnValue, FLOW_CACHE_SLOTS, FlowCacheEntry, FlowKey, MAX_BACKENDS, MAX_TABLE_SIZE, MAX_VIPS,
};

/// Bytes of one Maglev table entry (a backend id, `u32`).
pub const MAGLEV_ENTRY_BYTES: u64 = 4;
/// Memory budget for Maglev tables that sets the default `maglev.max_vips`:
/// 128 MiB, what Katran preallocates (512 VIPs x 65537 entries x 4 bytes).
pub const DEFAULT_MAGLEV_BUDGET: u64 = 128 << 20;
/// Largest Maglev table map accepted: 4 GiB (and fewer than 2^32 entries,
/// since a BPF array's `max_entries` is a `u32`).
pub const MAX_MAGLEV_BYTES: u64 = 4 << 30;
/// Most spare regions: a table replacement writes into a free region before
/// the VIP is pointed at it, and freed regions are reused first in, first
/// out, so spare regions also delay the reuse of a region that a reader on
/// another CPU may still be reading.
pub const MAX_SPARE_REGIONS: u32 = 16;
/// Largest `conntrack.max_entries` accepted.
pub const MAX_CONNTRACK_ENTRIES: u32 = 1 << 26;
/// Bytes of each CPU's flow cache (`LB_FLOW_CACHE`, a per-CPU array of
/// `FLOW_CACHE_SLOTS` entries of 64 bytes): 512 KiB.
pub const FLOW_CACHE_BYTES_PER_CPU: u64 =
    FLOW_CACHE_SLOTS as u64 * size_of::<FlowCacheEntry>() as u64;
/// Kernel overhead per preallocated hash-map element (`struct htab_elem`
/// and the LRU node, rounded up), in bytes.
pub const HASH_ELEM_OVERHEAD: u64 = 48;

/// The sizes of one data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Entries of one Maglev table (`maglev.table_size`, a prime).
    pub table_size: u32,
    /// Most VIPs the data plane holds (`maglev.max_vips`); reachable by reload.
    pub max_vips: u32,
    /// Tables the Maglev map holds: `max_vips` plus spares.
    pub table_regions: u32,
    /// Entries of the Maglev map: `table_regions x table_size` (< 2^32).
    pub maglev_entries: u32,
    /// Bytes of the Maglev map.
    pub maglev_bytes: u64,
    /// Flows the connection table holds.
    pub conntrack_entries: u32,
    /// Bytes of the connection table (key, value and kernel overhead per flow).
    pub conntrack_bytes: u64,
    /// Entries of the NAT table (`LB_NAT`): two per translation
    /// ([`Sizing::with_nat`]).
    pub nat_entries: u32,
    /// Bytes of the NAT table (key, value and kernel overhead per entry).
    pub nat_bytes: u64,
}

/// Why a configuration does not fit the data plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    /// Too many VIPs for the data plane.
    #[error("{0} is above the data plane's limit of {MAX_VIPS} VIPs")]
    TooManyVips(u64),
    /// The Maglev map would be too large.
    #[error(
        "Maglev tables would take {regions} regions x {table_size} entries x 4 bytes = {bytes} bytes, above the limit of {MAX_MAGLEV_BYTES} bytes: lower maglev.max_vips or maglev.table_size"
    )]
    MaglevTooLarge {
        /// Regions (VIPs and spares).
        regions: u64,
        /// Entries per table.
        table_size: u32,
        /// Bytes it would take.
        bytes: u64,
    },
    /// The connection table would be too large.
    #[error("{0} flows is above the limit of {MAX_CONNTRACK_ENTRIES}")]
    ConntrackTooLarge(u32),
}

/// Regions the Maglev map needs for `max_vips` VIPs: one each, plus as many
/// spares again up to [`MAX_SPARE_REGIONS`].
pub fn table_regions(max_vips: u32) -> u64 {
    u64::from(max_vips) + u64::from(max_vips.min(MAX_SPARE_REGIONS))
}

/// The VIPs a Maglev map of `regions` regions holds (inverse of
/// [`table_regions`]), for a data plane adopted from its pins.
pub fn max_vips_of(regions: u32) -> u32 {
    if regions >= 2 * MAX_SPARE_REGIONS {
        regions - MAX_SPARE_REGIONS
    } else {
        regions / 2
    }
}

/// The default `maglev.max_vips` for `table_size`: the most VIPs whose
/// tables (with spares) fit [`DEFAULT_MAGLEV_BUDGET`], between 1 and
/// [`MAX_VIPS`].
pub fn default_max_vips(table_size: u32) -> u32 {
    let table_bytes = u64::from(table_size.max(1)) * MAGLEV_ENTRY_BYTES;
    let regions = DEFAULT_MAGLEV_BUDGET / table_bytes;
    let fit = if regions >= 2 * u64::from(MAX_SPARE_REGIONS) {
        regions - u64::from(MAX_SPARE_REGIONS)
    } else {
        regions / 2
    };
    fit.clamp(1, u64::from(MAX_VIPS)) as u32
}

impl Sizing {
    /// Sizes a data plane of `max_vips` VIPs with tables of `table_size`
    /// entries and `conntrack_entries` flows.
    ///
    /// # Errors
    /// A [`SizingError`] naming the figure and the limit.
    pub fn new(
        table_size: u32,
        max_vips: u32,
        conntrack_entries: u32,
    ) -> Result<Self, SizingError> {
        if max_vips > MAX_VIPS {
            return Err(SizingError::TooManyVips(max_vips.into()));
        }
        if conntrack_entries > MAX_CONNTRACK_ENTRIES {
            return Err(SizingError::ConntrackTooLarge(conntrack_entries));
        }
        let table_size = table_size.min(MAX_TABLE_SIZE);
        let regions = table_regions(max_vips);
        let entries = regions.checked_mul(table_size.into());
        let bytes = entries.and_then(|e| e.checked_mul(MAGLEV_ENTRY_BYTES));
        let (Some(entries), Some(bytes)) = (entries, bytes) else {
            return Err(SizingError::MaglevTooLarge {
                regions,
                table_size,
                bytes: u64::MAX,
            });
        };
        let maglev_entries = u32::try_from(entries)
            .ok()
            .filter(|_| bytes <= MAX_MAGLEV_BYTES);
        let Some(maglev_entries) = maglev_entries else {
            return Err(SizingError::MaglevTooLarge {
                regions,
                table_size,
                bytes,
            });
        };
        let per_flow = (size_of::<FlowKey>() + size_of::<ConnValue>()) as u64 + HASH_ELEM_OVERHEAD;
        Ok(Self {
            table_size,
            max_vips,
            // At most MAX_VIPS + MAX_SPARE_REGIONS: fits u32.
            table_regions: regions as u32,
            maglev_entries,
            maglev_bytes: bytes,
            conntrack_entries,
            conntrack_bytes: u64::from(conntrack_entries) * per_flow,
            nat_entries: 2,
            nat_bytes: 2 * nat_entry_bytes(),
        })
    }

    /// These sizes with a NAT table of `translations` translations (two
    /// entries each; at most `config::nat::MAX_NAT_ENTRIES`, checked by
    /// the configuration). A configuration with no NAT VIP takes 1: the
    /// table is preallocated, so its size is set when the data plane is
    /// created, and a reload cannot change it.
    pub fn with_nat(self, translations: u32) -> Self {
        let entries = translations.max(1).saturating_mul(2);
        Self {
            nat_entries: entries,
            nat_bytes: u64::from(entries) * nat_entry_bytes(),
            ..self
        }
    }

    /// Most backends (over all VIPs) the data plane holds.
    pub const fn max_backends(&self) -> u32 {
        MAX_BACKENDS
    }
}

/// Bytes of one NAT table entry: key, value and kernel overhead.
fn nat_entry_bytes() -> u64 {
    (size_of::<FlowKey>() + size_of::<lb_common::NatEntry>()) as u64 + HASH_ELEM_OVERHEAD
}

/// `bytes` in the largest binary unit that keeps it above 1 (`128.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Sizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Maglev tables {} regions ({} VIPs + {} spare) x {} entries x {MAGLEV_ENTRY_BYTES} B = {}; connection table {} flows x {} B = {}; flow caches {FLOW_CACHE_SLOTS} slots x {} B = {} per CPU; ",
            self.table_regions,
            self.max_vips,
            self.table_regions - self.max_vips,
            self.table_size,
            human_bytes(self.maglev_bytes),
            self.conntrack_entries,
            self.conntrack_bytes / u64::from(self.conntrack_entries.max(1)),
            human_bytes(self.conntrack_bytes),
            size_of::<FlowCacheEntry>(),
            human_bytes(FLOW_CACHE_BYTES_PER_CPU),
        )?;
        if self.nat_entries <= 2 {
            write!(
                f,
                "NAT table of 1 translation ({}: no VIP in a NAT mode)",
                human_bytes(self.nat_bytes)
            )
        } else {
            write!(
                f,
                "NAT table {} translations x 2 entries x {} B = {}",
                self.nat_entries / 2,
                nat_entry_bytes(),
                human_bytes(self.nat_bytes),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_max_vips_fits_the_budget() {
        for m in [3, 251, 4093, 65537, 1_048_573, MAX_TABLE_SIZE] {
            let v = default_max_vips(m);
            let s = Sizing::new(m, v, 1).expect("the default always fits");
            assert!((1..=MAX_VIPS).contains(&v), "{m}: {v}");
            if v > 1 && v < MAX_VIPS {
                assert!(s.maglev_bytes <= DEFAULT_MAGLEV_BUDGET, "{m}: {s}");
            }
        }
        assert_eq!(default_max_vips(65537), 511 - MAX_SPARE_REGIONS);
        assert_eq!(default_max_vips(251), MAX_VIPS);
    }

    #[test]
    fn regions_and_max_vips_invert() {
        for v in 1..=MAX_VIPS {
            let r = u32::try_from(table_regions(v)).expect("small");
            assert_eq!(max_vips_of(r), v, "{v} VIPs -> {r} regions");
        }
    }

    #[test]
    fn too_large_maglev_map_is_refused_with_the_figure() {
        // The case: 130 VIPs of 16,777,213 entries.
        let err = Sizing::new(MAX_TABLE_SIZE, 130, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Maglev tables would take 146 regions x 16777213 entries x 4 bytes = 9797892392 bytes, above the limit of 4294967296 bytes: lower maglev.max_vips or maglev.table_size"
        );
        assert!(matches!(
            Sizing::new(3, MAX_VIPS + 1, 1),
            Err(SizingError::TooManyVips(_))
        ));
        assert!(matches!(
            Sizing::new(3, 1, MAX_CONNTRACK_ENTRIES + 1),
            Err(SizingError::ConntrackTooLarge(_))
        ));
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(128 << 20), "128.0 MiB");
    }
}
