//! Helpers on the host that the lab rows share: the programs the bench
//! installs, a loaded program's BPF statistics, and pinning to a CPU.

use std::{process::Command, time::Duration};

use anyhow::bail;
use aya::programs::loaded_programs;

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
