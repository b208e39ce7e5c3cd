//! Active health checks: one tokio task per (VIP, backend), each bounded by
//! its timeout, started with a spread so checks do not fire together, with
//! jitter on every interval. Results go to the agent as [`HealthEvent`]s,
//! only when a backend's state changes.
//!
//! State machine: a backend starts healthy (so a restarted agent forwards at
//! once); its first check result sets its state directly; after that it
//! takes `fall` consecutive failures to become unhealthy and `rise`
//! consecutive successes to become healthy again.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle, time};

use crate::config::{HealthCheck, HealthCheckKind};

/// What to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index of the VIP in the running configuration.
    pub vip: usize,
    /// Index of the backend in that VIP.
    pub backend: usize,
    /// Address and port to check.
    pub addr: SocketAddr,
    /// How.
    pub check: HealthCheck,
}

/// A backend changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// Index of the VIP.
    pub vip: usize,
    /// Index of the backend in that VIP.
    pub backend: usize,
    /// The new state.
    pub healthy: bool,
    /// The last check's result: latency on success, failure reason otherwise.
    pub reason: String,
}

/// Result of one check: its latency, or why it failed.
pub type Probe = Result<Duration, String>;

/// Runs one TCP check: a connection to `addr` that completes within `timeout`.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Probe {
    let start = Instant::now();
    match time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(start.elapsed()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err("connection refused".into())
        }
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
        Err(_) => Err(format!(
            "timeout after {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Rise/fall bookkeeping of one backend.
#[derive(Debug, Clone)]
pub struct Tracker {
    healthy: bool,
    checked: bool,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Tracker {
    /// A backend assumed healthy, not checked yet.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            healthy: true,
            checked: false,
            streak: 0,
            rise,
            fall,
        }
    }

    /// Records one result; returns the new state when it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if !self.checked {
            self.checked = true;
            self.streak = 0;
            if success != self.healthy {
                self.healthy = success;
                return Some(success);
            }
            return None;
        }
        if success == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if success { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = success;
            self.streak = 0;
            return Some(success);
        }
        None
    }
}

/// A small xorshift generator for jitter: no need for a cryptographic source.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A fraction in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Starts a checker task per target; each sends [`HealthEvent`]s on `events`
/// and ends when the receiver is dropped or the task is aborted. Targets of
/// kind `none` get no task.
pub fn spawn(targets: Vec<Target>, events: &mpsc::Sender<HealthEvent>) -> Vec<JoinHandle<()>> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    targets
        .into_iter()
        .filter(|t| t.check.kind != HealthCheckKind::None)
        .enumerate()
        .map(|(i, target)| {
            tokio::spawn(check_loop(
                target,
                events.clone(),
                seed.wrapping_add(i as u64 * 0x9e37_79b9),
            ))
        })
        .collect()
}

async fn check_loop(target: Target, events: mpsc::Sender<HealthEvent>, seed: u64) {
    let mut jitter = Jitter::new(seed);
    let mut tracker = Tracker::new(target.check.rise, target.check.fall);
    let interval = target.check.interval;
    // Spread the first checks over a tenth of the interval.
    time::sleep(interval.mul_f64(0.1 * jitter.next())).await;
    loop {
        let started = time::Instant::now();
        let probe = match target.check.kind {
            HealthCheckKind::Tcp => probe_tcp(target.addr, target.check.timeout).await,
            // Rejected by validation until implemented; never spawned for None.
            HealthCheckKind::Http | HealthCheckKind::Udp | HealthCheckKind::None => return,
        };
        if let Some(healthy) = tracker.record(probe.is_ok()) {
            let reason = match &probe {
                Ok(latency) => format!(
                    "check succeeded in {}",
                    humantime::format_duration(*latency)
                ),
                Err(reason) => reason.clone(),
            };
            let event = HealthEvent {
                vip: target.vip,
                backend: target.backend,
                healthy,
                reason,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
        // Next check one interval after this one started, ±5%.
        let next = interval.mul_f64(0.95 + 0.1 * jitter.next());
        time::sleep_until(started + next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_rise_and_fall_apply() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(
            t.record(false),
            Some(false),
            "first failure marks down at once"
        );
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None, "a failure resets the rise streak");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true), "two successes in a row: up");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(
            t.record(false),
            Some(false),
            "three failures in a row: down"
        );
    }

    #[test]
    fn first_success_keeps_the_assumed_state() {
        let mut t = Tracker::new(1, 1);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }

    #[tokio::test]
    async fn tcp_probe_tells_success_from_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        assert!(probe_tcp(open, Duration::from_secs(1)).await.is_ok());
        drop(listener);
        let refused = probe_tcp(open, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(refused, "connection refused");
    }
}
