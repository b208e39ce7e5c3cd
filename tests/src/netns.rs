//! Network namespaces made by a test, removed on drop, and commands run in them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// Runs `ip ARGS` and fails with its stderr when it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

/// Runs a command to completion; `Err` with its output when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out: Output = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace created by `ip netns add`, deleted on drop (with every
/// interface in it).
#[derive(Debug)]
pub struct Netns {
    /// Its name (under /run/netns).
    pub name: String,
}

impl Netns {
    /// Creates namespace `name`, removing a leftover of the same name first,
    /// and brings its loopback up.
    ///
    /// # Errors
    /// `ip netns add` fails.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n NAME ARGS`.
    ///
    /// # Errors
    /// The command fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A sysctl's value in the namespace (`KEY` as `sysctl -n` names it,
    /// for example `net.ipv6.conf.eth0.forwarding`); empty when it cannot
    /// be read.
    pub fn sysctl_value(&self, key: &str) -> String {
        self.command("sysctl")
            .args(["-n", key])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Sets a sysctl in the namespace (`KEY=VALUE`).
    ///
    /// # Errors
    /// The command fails.
    pub fn sysctl(&self, setting: &str) -> anyhow::Result<()> {
        run(self.command("sysctl").args(["-q", "-w", setting]))
    }

    /// A command that runs `program` in this namespace's network only (the
    /// mount namespace stays the caller's, so bpffs pins are shared).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Where an agent in this namespace pins the data plane of `iface`
    /// (`lb_userspace::dataplane::pins::pin_dir` as seen from the agent).
    pub fn pin_dir(&self, iface: &str) -> std::path::PathBuf {
        lb_userspace::dataplane::pins::pin_dir_in(self.key().as_deref(), iface)
    }

    /// The instance lock of an agent on `iface` in this namespace.
    pub fn lock_path(&self, iface: &str) -> std::path::PathBuf {
        lb_userspace::dataplane::pins::lock_path_in(self.key().as_deref(), iface)
    }

    /// Whether `ip link show dev IFACE` in this namespace reports an XDP
    /// program on `iface` (any mode). Panics when `ip` cannot run.
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = self
            .command("ip")
            .args(["link", "show", "dev", iface])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    fn key(&self) -> Option<String> {
        lb_userspace::dataplane::pins::netns_key_of(std::path::Path::new(&format!(
            "/run/netns/{}",
            self.name
        )))
    }

    /// Moves the calling thread into this namespace until the guard drops.
    ///
    /// # Errors
    /// `setns` fails.
    pub fn enter(&self) -> anyhow::Result<EnteredNetns> {
        let original = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name)).context("open netns")?;
        // SAFETY: valid namespace fd; only this thread moves.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(EnteredNetns { original })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The calling thread's stay in another namespace; drop returns it.
pub struct EnteredNetns {
    original: File,
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        // SAFETY: valid namespace fd.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Turns transmit checksum offload off on `iface` of `ns` (what
/// `ethtool -K IFACE tx off` does). A veth hands packets on with the TCP/UDP
/// checksum left partial for the receiver to finish; XDP sees such frames as
/// they are, so forwarded ones would arrive at a backend with a bad checksum.
/// Real NICs put full checksums on the wire, so only labs need this.
///
/// # Errors
/// Entering the namespace, the socket or the ioctl fails.
pub fn disable_tx_checksum(ns: &Netns, iface: &str) -> anyhow::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    // Run on a scratch thread so the caller's namespace never changes.
    let (ns_name, iface) = (ns.name.clone(), iface.to_string());
    std::thread::spawn(move || -> anyhow::Result<()> {
        let ns = Netns { name: ns_name };
        let entered = ns.enter();
        std::mem::forget(ns); // not ours to delete
        let _entered = entered?;
        // SAFETY: plain socket for the ioctl, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        // SAFETY: zeroed ifreq is valid; the name fits (checked).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if iface.len() >= ifr.ifr_name.len() {
            bail!("interface name too long: {iface}");
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: valid fd, ifreq pointing at a live ethtool_value.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut ifr) };
        let err = std::io::Error::last_os_error();
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        if rc != 0 {
            bail!("SIOCETHTOOL ETHTOOL_STXCSUM on {iface}: {err}");
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("checksum thread panicked"))?
}
