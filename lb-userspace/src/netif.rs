//! What the agent asks of the host's network configuration: interface
//! indices and addresses, IPv4 forwarding, and the bpffs mount.

use std::{
    ffi::{CStr, CString},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

/// Magic number of bpffs in `statfs.f_type` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Index of interface `name`, or `None` when there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// IPv4 addresses of interface `name`, or of every interface when `None`,
/// in the order the kernel lists them.
///
/// # Errors
/// `getifaddrs` fails.
pub fn ipv4_addresses(name: Option<&str>) -> io::Result<Vec<Ipv4Addr>> {
    Ok(addresses(name)?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Global IPv6 addresses (not link-local, not loopback) of interface
/// `name`, or of every interface when `None`, in the kernel's order.
///
/// # Errors
/// `getifaddrs` fails.
pub fn ipv6_addresses(name: Option<&str>) -> io::Result<Vec<Ipv6Addr>> {
    Ok(addresses(name)?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) if !a.is_loopback() && !a.is_unicast_link_local() => Some(a),
            _ => None,
        })
        .collect())
}

/// Every address of interface `name` (or of every interface).
fn addresses(name: Option<&str>) -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string.
        let ifname = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.is_some_and(|n| ifname.to_bytes() != n.as_bytes()) {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says what it points to.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::from(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))));
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            out.push(IpAddr::from(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
        }
    }
    // SAFETY: list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Turns IPv4 forwarding on for interface `name` when it is off; returns
/// whether it changed anything. `bpf_fib_lookup` answers "forwarding
/// disabled" for packets arriving on an interface without it, and the kernel
/// forwards the packets the program passes to it while a neighbour resolves.
///
/// # Errors
/// The sysctl file cannot be read or written.
pub fn enable_ipv4_forwarding(name: &str) -> io::Result<bool> {
    enable_forwarding(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"))
}

fn enable_forwarding(path: &str) -> io::Result<bool> {
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1")?;
    Ok(true)
}

/// Mounts bpffs on `dir` unless one is there already (as inside a fresh mount
/// namespace); returns whether it mounted.
///
/// # Errors
/// `statfs` or `mount` fails.
pub fn ensure_bpffs(dir: &Path) -> io::Result<bool> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(false);
    }
    let fstype = c"bpf";
    // SAFETY: all strings are NUL-terminated; no data argument.
    if unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}
