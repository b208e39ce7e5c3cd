//! The Maglev map through a shared memory mapping.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{MapData, MapError};
use lb_common::{MAGLEV_MAP_FLAGS, MAP_MAGLEV};

use crate::balancer::store::{MapStoreError, wrap};

/// The Maglev map, written and read through a shared memory mapping
/// (`BPF_F_MMAPABLE`, see [`lb_common::MAGLEV_MAP_FLAGS`]): a table of
/// 65 537 entries is one pass over memory instead of 65 537 system calls.
/// The kernel lays array elements out every 8 bytes (`round_up(value_size,
/// 8)`), so entry `i` is the `u32` at byte `8 * i`.
pub struct MaglevMap {
    ptr: std::ptr::NonNull<u32>,
    pub(crate) entries: usize,
    mapped_len: usize,
    // Keeps the map alive as long as the mapping.
    _data: MapData,
}

/// `u32`s per array element in the mapping: elements are 8-byte aligned.
const ELEM_STRIDE: usize = 2;

// SAFETY: the mapping is owned by this value and only reached through `&self`
// / `&mut self`; the kernel side reads it concurrently by design.
unsafe impl Send for MaglevMap {}
// SAFETY: as for Send: shared access only reads through `&self`.
unsafe impl Sync for MaglevMap {}

impl MaglevMap {
    /// Maps `data`, which must be the memory-mappable Maglev array.
    ///
    /// # Errors
    /// The map was not created memory-mappable (another layout), or mmap fails.
    pub fn new(data: MapData) -> Result<Self, MapStoreError> {
        let info = data.info().map_err(wrap(MAP_MAGLEV, "inspect"))?;
        let err = |msg: String| MapStoreError {
            map: MAP_MAGLEV,
            op: "mmap",
            source: MapError::IoError(std::io::Error::other(msg)),
        };
        if info.map_flags() & MAGLEV_MAP_FLAGS != MAGLEV_MAP_FLAGS || info.value_size() != 4 {
            return Err(err(format!(
                "flags {:#x} and value size {}: not a memory-mappable array of u32",
                info.map_flags(),
                info.value_size()
            )));
        }
        let entries = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mapped_len = (entries * ELEM_STRIDE * 4).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, of the size the
        // kernel allows for it (rounded up to pages); checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error().to_string()));
        }
        Ok(Self {
            ptr: std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| err("null mapping".into()))?,
            entries,
            mapped_len,
            _data: data,
        })
    }

    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, MapStoreError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.entries => Ok(start..end),
            _ => Err(MapStoreError {
                map: MAP_MAGLEV,
                op: "index",
                source: MapError::OutOfBounds {
                    index: offset,
                    max_entries: self.entries as u32,
                },
            }),
        }
    }

    /// The mapping as `u32`s: entry `i` at `ELEM_STRIDE * i`.
    fn as_slice(&self) -> &[u32] {
        // SAFETY: `entries` elements of 8 bytes are mapped at `ptr` for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.entries * ELEM_STRIDE) }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as above, and `&mut self` makes this the only userspace view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.entries * ELEM_STRIDE) }
    }

    /// Copies `entries` to index `offset` on.
    ///
    /// # Errors
    /// The range is outside the map.
    pub fn write(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapStoreError> {
        let range = self.range(offset, entries.len())?;
        let slots = &mut self.as_mut_slice()[range.start * ELEM_STRIDE..range.end * ELEM_STRIDE];
        for (slot, id) in slots.chunks_exact_mut(ELEM_STRIDE).zip(entries) {
            slot[0] = *id;
        }
        // Order the table before the VIP update that publishes it (that
        // update is a system call, itself a full barrier; this is belt and
        // braces).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// `len` entries from index `offset`.
    ///
    /// # Errors
    /// The range is outside the map.
    pub fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapStoreError> {
        let range = self.range(offset, len as usize)?;
        Ok(
            self.as_slice()[range.start * ELEM_STRIDE..range.end * ELEM_STRIDE]
                .iter()
                .step_by(ELEM_STRIDE)
                .copied()
                .collect(),
        )
    }
}

impl Drop for MaglevMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.mapped_len);
        }
    }
}
