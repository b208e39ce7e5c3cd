//! Watching the configuration file: every event in its directory makes one
//! `stat` of the path, and a change of what it leads to is a reload trigger.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// What identifies the file a path leads to (symbolic links followed): a
/// change of any part is a change of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileId {
    /// Device, inode, size, modification and change times (ns).
    Present(u64, u64, u64, i64, i64),
    /// The path leads nowhere (or cannot be read).
    Missing(std::io::ErrorKind),
}

fn file_id(path: &Path) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(path) {
        Ok(m) => FileId::Present(
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ),
        Err(e) => FileId::Missing(e.kind()),
    }
}

/// Watches the directory of `path` and sends `()` on `changed` whenever
/// the file `path` leads to is another or has changed: an edit in place,
/// an editor's rename into place, or a Kubernetes ConfigMap update (the
/// `..data` symbolic link replaced by a rename, the file itself a link
/// through it). Every event in the directory makes one `stat` of `path`;
/// events that change nothing it leads to are ignored.
pub fn watch(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let last = std::sync::Mutex::new(file_id(&path));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let now = file_id(&path);
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != now {
            *last = now;
            // Full: a reload is already pending.
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
