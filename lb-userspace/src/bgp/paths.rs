//! Where the agent keeps BIRD's files: one directory per network namespace
//! and interface, like the pins and locks ([`crate::dataplane::pins`]), so
//! agents in two namespaces of one host (two nodes of a test lab) each run
//! their own BIRD.

use std::path::{Path, PathBuf};

use crate::dataplane::pins::{LOCK_ROOT, netns_key};

/// BIRD's files for the agent of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdPaths {
    /// The directory: `/run/lb/bird-<iface>` in the host's namespace,
    /// `/run/lb/netns-<inode>/bird-<iface>` in another.
    pub dir: PathBuf,
}

impl BirdPaths {
    /// The files of `iface` in namespace `netns` ([`netns_key`]).
    pub fn in_netns(netns: Option<&str>, iface: &str) -> Self {
        let mut dir = PathBuf::from(LOCK_ROOT);
        dir.extend(netns);
        Self {
            dir: dir.join(format!("bird-{iface}")),
        }
    }

    /// The files of `iface` in this process's namespace.
    pub fn of(iface: &str) -> Self {
        Self::in_netns(netns_key().as_deref(), iface)
    }

    /// The configuration the agent writes (`bird -c`).
    pub fn config(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// BIRD's control socket (`bird -s`, `birdc -s`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// BIRD's pid file (`bird -P`): how a restarted agent finds the BIRD
    /// it adopts, and stops it by pid.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("bird.pid")
    }

    /// BIRD's own log (its standard error), started afresh with each BIRD.
    pub fn log(&self) -> PathBuf {
        self.dir.join("bird.log")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_keyed_by_namespace_and_interface() {
        let host = BirdPaths::in_netns(None, "eth0");
        assert_eq!(host.config(), Path::new("/run/lb/bird-eth0/bird.conf"));
        assert_eq!(host.socket(), Path::new("/run/lb/bird-eth0/bird.ctl"));
        let other = BirdPaths::in_netns(Some("netns-4026532001"), "eth0");
        assert_eq!(
            other.pid_file(),
            Path::new("/run/lb/netns-4026532001/bird-eth0/bird.pid")
        );
        assert_ne!(host, other);
    }
}
