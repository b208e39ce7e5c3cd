//! Test support: network namespaces, veth pairs and processes that clean up
//! after themselves, shared by the packet tests, the integration tests and
//! `cargo xtask demo`.

pub mod bgp_lab;
pub mod dashboard;
pub mod flows;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod proc;
pub mod topology;
pub mod xdp;

/// Fails the test unless it runs as root (network namespaces, XDP, BPF
/// maps). Such tests are `#[ignore = "needs root: cargo xtask test"]`, so a
/// plain `cargo test` reports them as ignored instead of passing them
/// without doing anything; `cargo xtask test` runs as root with
/// `--include-ignored`. Run alone without root, a test says why it fails.
///
/// # Panics
/// When the effective user is not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "needs root (network namespaces and XDP): run `cargo xtask test` as root"
    );
}

/// Pins thread or process `pid` (0: the calling thread) to CPU `cpu`: the
/// one CPU-pinning helper of the tests and the bench (per-CPU state such as
/// token buckets and flow caches is then the same on every run).
///
/// # Errors
/// `sched_setaffinity` fails (no such CPU, no such task).
///
/// # Panics
/// `cpu` is past what a `cpu_set_t` holds (1024).
pub fn pin_to_cpu(pid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET indexes the set with a bounds check (it panics past it).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Polls `check` every `every` until it answers `Some`, for at most `limit`
/// (and once more when the time is up): the tests' one bounded polling
/// loop, bounded in time and so in count. `None` when time runs out.
pub fn wait_until<T>(
    limit: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(every.min(left));
    }
}
