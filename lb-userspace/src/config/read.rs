//! Reading a configuration file without ever blocking or growing without
//! bound on what is not a small regular file.

use std::path::Path;

use super::ConfigError;

/// Reads a configuration file of at most `limit` bytes without blocking on
/// what is not a regular file: it is opened non-blocking (so a FIFO without
/// a writer does not hang the open), refused unless `fstat` says regular
/// file, and read up to `limit + 1` bytes (so a file growing while read is
/// caught too). Symbolic links are followed (a Kubernetes ConfigMap's file
/// is one).
///
/// # Errors
/// [`ConfigError::Read`] (open or read failed, or not UTF-8),
/// [`ConfigError::NotRegular`], [`ConfigError::TooLarge`].
pub fn read_file(path: &Path, limit: u64) -> Result<String, ConfigError> {
    use std::{
        io::Read as _,
        os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    };
    let shown = || path.display().to_string();
    let read_err = |source| ConfigError::Read {
        path: shown(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else if kind.is_dir() {
            "directory"
        } else if kind.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(ConfigError::NotRegular {
            path: shown(),
            kind,
        });
    }
    if meta.len() > limit {
        return Err(ConfigError::TooLarge {
            path: shown(),
            size: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(ConfigError::TooLarge {
            path: shown(),
            size: bytes.len() as u64,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}
