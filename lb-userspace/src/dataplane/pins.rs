//! Where a data plane lives: its pin directory and instance lock, keyed by
//! interface and network namespace, and the pinning and unpinning of maps.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use lb_common::{
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_CONN_BUCKET, MAP_CONNS, MAP_GLOBALS, MAP_ICMP_BUCKET,
    MAP_MAGLEV, MAP_NEXTHOPS, MAP_PROGS, MAP_SRC_ALLOW_V4, MAP_SRC_ALLOW_V6, MAP_SRC_ALLOW_VIP4,
    MAP_SRC_ALLOW_VIP6, MAP_SRC_ALLOW4_16, MAP_SRC_ALLOW6_16, MAP_STATS, MAP_VIP_ADDRS,
    MAP_VIP_BLOOM, MAP_VIP_DROPS, MAP_VIP_FLAGS, MAP_VIP_STATS, MAP_VIPS,
};
use log::warn;

use super::error::{DataplaneError, io_err};

/// Root of the agent's pins: `PIN_ROOT/<interface>/<map name>` in the
/// host's network namespace, `PIN_ROOT/netns-<inode>/<interface>/...` in
/// another (see [`pin_dir`]).
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb";
/// Where bpffs is expected to be mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Directory of the agents' instance locks (see [`lock_path`]).
pub const LOCK_ROOT: &str = "/run/lb";

/// Every map the agent opens when it adopts a pinned data plane.
pub const ADOPTED_MAPS: [&str; 25] = [
    MAP_VIPS,
    MAP_VIP_ADDRS,
    MAP_MAGLEV,
    MAP_BACKENDS,
    MAP_SRC_ALLOW_V4,
    MAP_GLOBALS,
    MAP_STATS,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_CONNS,
    MAP_VIP_BLOOM,
    MAP_SRC_ALLOW4_16,
    MAP_SRC_ALLOW6_16,
    MAP_VIP_FLAGS,
    MAP_SRC_ALLOW_VIP4,
    MAP_VIP_DROPS,
    MAP_ICMP_BUCKET,
    MAP_SRC_ALLOW_V6,
    MAP_SRC_ALLOW_VIP6,
    MAP_NEXTHOPS,
    MAP_CONN_BUCKET,
    MAP_PROGS,
    lb_common::MAP_NAT,
    lb_common::MAP_NAT_SOURCES,
    lb_common::MAP_BACKEND_PORTS,
];

/// The network namespace this process runs in, as a path component:
/// `None` in the host's, else `netns-<inode of /proc/self/ns/net>`.
/// Interfaces of two namespaces may share a name (every container has an
/// `eth0`), so pins and locks are keyed by both.
pub fn netns_key() -> Option<String> {
    netns_key_of(Path::new("/proc/self/ns/net"))
}

/// [`netns_key`] of the namespace file `ns` (`/proc/PID/ns/net`, or
/// `/run/netns/NAME` for a namespace made by `ip netns add`). A namespace is
/// the host's unless it differs from PID 1's or, when PID 1's cannot be
/// read (a sandbox may deny it even to root), it is one of the named
/// namespaces in `/run/netns`.
pub fn netns_key_of(ns: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata(ns).ok()?;
    let same = |m: &std::fs::Metadata| m.ino() == own.ino() && m.dev() == own.dev();
    let other = match std::fs::metadata("/proc/1/ns/net") {
        Ok(init) => !same(&init),
        Err(_) => std::fs::read_dir("/run/netns").is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| same(&m)))
        }),
    };
    other.then(|| netns_component(own.ino()))
}

/// The path component of the network namespace of inode `ino`.
pub fn netns_component(ino: u64) -> String {
    format!("netns-{ino}")
}

/// Where the data plane of `iface` in namespace `netns` ([`netns_key`]) is
/// pinned: `/sys/fs/bpf/lb/<iface>`, or `/sys/fs/bpf/lb/<netns>/<iface>`.
pub fn pin_dir_in(netns: Option<&str>, iface: &str) -> PathBuf {
    let mut dir = PathBuf::from(PIN_ROOT);
    dir.extend(netns);
    dir.join(iface)
}

/// Where the data plane of `iface` in this process's namespace is pinned.
pub fn pin_dir(iface: &str) -> PathBuf {
    pin_dir_in(netns_key().as_deref(), iface)
}

/// The instance lock of `iface` in namespace `netns`:
/// `/run/lb/<iface>.lock`, or `/run/lb/<netns>/<iface>.lock`.
pub fn lock_path_in(netns: Option<&str>, iface: &str) -> PathBuf {
    let mut path = PathBuf::from(LOCK_ROOT);
    path.extend(netns);
    path.join(format!("{iface}.lock"))
}

/// Name of the pinned XDP link in a pin directory.
pub const LINK_PIN: &str = "link";

/// Pins every map of `ebpf` under `dir` (created empty).
pub fn pin_maps(ebpf: &Ebpf, dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir.display().to_string()))?;
    for (name, map) in ebpf.maps() {
        map.pin(dir.join(name)).map_err(|e| DataplaneError::Io {
            op: "pin map in",
            path: dir.join(name).display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// Removes the pins of `dir`, then its parents up to `PIN_ROOT` when
/// nothing else is left in them.
pub fn unpin(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!("removing pins in {}: {e}", dir.display());
    }
    for parent in dir.ancestors().skip(1) {
        if !parent.starts_with(PIN_ROOT) || std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
}

/// Holds the interface's lock ([`lock_path_in`]) while the agent runs, so
/// two agents never drive one data plane.
///
/// The lock file is never removed: a holder that unlinked it on exit would
/// let the next agent lock a new file of the same name while a third, which
/// had opened the old one, locks that one too (two holders).
pub struct InstanceLock {
    _file: std::fs::File,
}

impl InstanceLock {
    /// Takes the lock of `iface` in this namespace.
    ///
    /// # Errors
    /// [`DataplaneError::Running`] when another agent holds it.
    pub fn take(iface: &str) -> Result<Self, DataplaneError> {
        Self::take_at(&lock_path_in(netns_key().as_deref(), iface), iface)
    }

    /// [`InstanceLock::take`] with the lock file at `path`.
    fn take_at(path: &Path, iface: &str) -> Result<Self, DataplaneError> {
        let path = path.to_path_buf();
        let dir = path.parent().unwrap_or(Path::new(LOCK_ROOT));
        std::fs::create_dir_all(dir).map_err(io_err("create", dir.display().to_string()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", path.display().to_string()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(DataplaneError::Running {
                iface: iface.to_string(),
                lock: path.display().to_string(),
            });
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_lock_file_stays() {
        /// Removes the test's directory, even when an assertion fails.
        struct Dir(PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = Dir(std::env::temp_dir().join(format!("lb-lock-test-{}", std::process::id())));
        let path = dir.0.join("eth9.lock");
        let first = InstanceLock::take_at(&path, "eth9").expect("the first takes it");
        assert!(
            matches!(
                InstanceLock::take_at(&path, "eth9"),
                Err(DataplaneError::Running { .. })
            ),
            "a second is refused while the first holds it"
        );
        drop(first);
        assert!(path.exists(), "the lock file stays after its holder");
        let again = InstanceLock::take_at(&path, "eth9").expect("free again");
        drop(again);
    }

    #[test]
    fn pins_and_locks_are_keyed_by_namespace() {
        assert_eq!(pin_dir_in(None, "eth0"), Path::new("/sys/fs/bpf/lb/eth0"));
        let ns = netns_component(4026532001);
        assert_eq!(
            pin_dir_in(Some(&ns), "eth0"),
            Path::new("/sys/fs/bpf/lb/netns-4026532001/eth0")
        );
        assert_eq!(lock_path_in(None, "eth0"), Path::new("/run/lb/eth0.lock"));
        assert_eq!(
            lock_path_in(Some(&ns), "eth0"),
            Path::new("/run/lb/netns-4026532001/eth0.lock")
        );
    }
}
