//! Helpers on the host that the lab rows share: the programs the bench
//! installs, a loaded program's BPF statistics, pinning threads and NAPI
//! kthreads to CPUs with real-time priority, their CPU time and schedule
//! statistics, and an interface's ethtool counters.

use std::{collections::HashMap, process::Command, time::Duration};

use anyhow::{Context as _, bail, ensure};
use aya::programs::loaded_programs;
use lb_tests::netns::Netns;

/// (run count, run time) of program `id`; needs BPF stats enabled.
///
/// # Errors
/// No loaded program has that id.
pub fn prog_stats(id: u32) -> anyhow::Result<(u64, Duration)> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok((info.run_count(), info.run_time()));
        }
    }
    bail!("no program with id {id}")
}

/// Installs the Debian packages of `programs` that are missing.
///
/// # Errors
/// apt-get fails.
pub fn ensure_programs(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(p, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {missing:?} from the distribution's packages (the bench uses them)");
    crate::lab::output(Command::new("apt-get").args(["update", "-q"]))?;
    crate::lab::output(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

/// Pins thread or process `pid` (0: the calling thread) to `cpu`
/// ([`lb_tests::pin_to_cpu`]).
///
/// # Errors
/// `sched_setaffinity` fails (no such CPU, no such task).
pub fn set_affinity(pid: i32, cpu: usize) -> anyhow::Result<()> {
    lb_tests::pin_to_cpu(pid, cpu)
        .map_err(|e| anyhow::anyhow!("sched_setaffinity(pid {pid}, cpu {cpu}): {e}"))
}

/// Real-time priority (SCHED_FIFO 50) for thread `pid` (0: the calling
/// thread) so that other work on the machine does not share its CPU while a
/// row runs; the kernel's RT throttling still leaves 5% of each CPU to
/// others.
///
/// # Errors
/// `sched_setscheduler` fails.
pub fn set_fifo(pid: i32) -> anyhow::Result<()> {
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: valid sched_param.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "sched_setscheduler(pid {pid}, SCHED_FIFO): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Turns on threaded NAPI for `iface` of `ns` (its receive work then runs in
/// kthreads named `napi/IFACE-ID` instead of the softirq of whichever CPU
/// scheduled it) and pins those kthreads to `cpu`. A veth has NAPI only while
/// an XDP program is attached, so call this after attaching, again after
/// each re-attach. Returns the kthreads' pids.
///
/// # Errors
/// The sysfs write fails, or no such kthread is found.
pub fn pin_napi(ns: &Netns, iface: &str, cpu: usize) -> anyhow::Result<Vec<i32>> {
    // `ip netns exec` mounts the namespace's own sysfs.
    crate::lab::output(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{iface}/threaded"),
    ]))
    .with_context(|| format!("threaded NAPI on {iface}"))?;
    // The kernel names them "napi/IFACE-ID", cut to 15 bytes.
    let full = format!("napi/{iface}-");
    let want = &full[..full.len().min(15)];
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(want) {
            set_affinity(pid, cpu)?;
            set_fifo(pid)?;
            pids.push(pid);
        }
    }
    ensure!(!pids.is_empty(), "no NAPI kthread {want}* for {iface}");
    Ok(pids)
}

/// Time thread `pid` has run on a CPU (`/proc/PID/schedstat`, first field,
/// ns).
///
/// # Errors
/// The file cannot be read or parsed.
pub fn thread_cpu(pid: i32) -> anyhow::Result<Duration> {
    Ok(schedstat(pid)?.0)
}

/// `/proc/PID/schedstat`: time on a CPU, time runnable but waiting for one.
///
/// # Errors
/// The file cannot be read or parsed.
pub fn schedstat(pid: i32) -> anyhow::Result<(Duration, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().context("schedstat"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(v.len() >= 2, "schedstat of {pid}: {text}");
    Ok((Duration::from_nanos(v[0]), Duration::from_nanos(v[1])))
}

/// `ethtool -S iface` in `ns`: veth's per-queue XDP counters by name.
///
/// # Errors
/// ethtool fails.
pub fn ethtool_stats(ns: &Netns, iface: &str) -> anyhow::Result<HashMap<String, u64>> {
    let text = crate::lab::output(ns.command("ethtool").args(["-S", iface]))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Change of counter `key` between two `ethtool -S` readings (0 if absent).
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after
        .get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}
