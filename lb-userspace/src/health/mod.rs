//! Active health checks: one tokio task per backend (per (VIP, backend)
//! pair), each bounded by its timeout, started with a spread so checks do
//! not fire together, with jitter on every interval. Every result goes to
//! the agent as a [`CheckResult`] (for status and metrics), marked with the
//! backend's new state when it changed.
//!
//! State machine: a backend starts in the state the agent gives it
//! (healthy when new; as the maps say when adopted); its first check result
//! sets its state directly; after that it takes `fall` consecutive failures
//! to become unhealthy and `rise` consecutive successes to become healthy.
//! A check that failed for a reason of this host ([`probe::ProbeFailure::is_local`]:
//! out of file descriptors, buffers or ports) is reported but is not a
//! result: it neither counts toward `fall` nor breaks a streak, so a local
//! shortage never marks a backend down.

use std::{collections::HashMap, net::SocketAddr};

use tokio::{sync::mpsc, task::JoinHandle, time};

pub mod probe;

use crate::config::{HealthCheck, HealthCheckKind};
use probe::Probe;

/// What to check: one backend of one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend's id (index into the backends map).
    pub backend_id: u32,
    /// Address and port to check.
    pub addr: SocketAddr,
    /// How.
    pub check: HealthCheck,
    /// State assumed before the first result.
    pub healthy: bool,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The backend's id.
    pub backend_id: u32,
    /// Which checker sent it (see [`Checkers::is_current`]): results of a
    /// checker stopped by a reload are ignored.
    pub token: u64,
    /// Latency, or why the check failed.
    pub probe: Probe,
    /// `Some(new state)` when this result changed the backend's state.
    pub change: Option<bool>,
    /// The backend's state after this result, as the checker sees it: the
    /// agent makes the maps say it (and retries on the next result when a
    /// map write failed), so checker and data plane never disagree for long.
    pub healthy: bool,
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
    /// A backend assumed `healthy` (or not), not checked yet.
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Self {
        Self {
            healthy,
            checked: false,
            streak: 0,
            rise,
            fall,
        }
    }

    /// The current state.
    pub const fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check's outcome, unless it failed for a local reason
    /// (not a result: see the module's documentation); returns the new
    /// state when it changed.
    pub fn record_probe(&mut self, probe: &Probe) -> Option<bool> {
        match probe {
            Err(failure) if failure.is_local() => None,
            _ => self.record(probe.is_ok()),
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

/// The running checkers, one per backend id, kept across reloads: a
/// backend whose address and check are unchanged keeps its checker (and
/// its rise/fall state).
#[derive(Default)]
pub struct Checkers {
    running: HashMap<u32, (Target, u64, JoinHandle<()>)>,
    next_token: u64,
    seed: u64,
}

impl Checkers {
    /// No checker yet.
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            running: HashMap::new(),
            next_token: 1,
            seed,
        }
    }

    /// Makes the running checkers match `targets`: starts the new ones,
    /// stops those not wanted any more, restarts those whose address or
    /// check changed. Targets of kind `none` get no checker. Returns how
    /// many were started and stopped.
    pub fn sync(
        &mut self,
        targets: Vec<Target>,
        events: &mpsc::Sender<CheckResult>,
    ) -> (usize, usize) {
        let wanted: HashMap<u32, Target> = targets
            .into_iter()
            .filter(|t| t.check.kind != HealthCheckKind::None)
            .map(|t| (t.backend_id, t))
            .collect();
        let mut stopped = 0;
        self.running.retain(|id, (running, _, handle)| {
            let keep = wanted
                .get(id)
                .is_some_and(|t| t.addr == running.addr && t.check == running.check);
            if !keep {
                handle.abort();
                stopped += 1;
            }
            keep
        });
        let mut started = 0;
        for (id, target) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let seed = self.seed.wrapping_add(token.wrapping_mul(0x9e37_79b9));
            let handle = tokio::spawn(check_loop(target.clone(), token, events.clone(), seed));
            self.running.insert(id, (target, token, handle));
            started += 1;
        }
        (started, stopped)
    }

    /// Whether `result` comes from the current checker of its backend.
    pub fn is_current(&self, result: &CheckResult) -> bool {
        self.running
            .get(&result.backend_id)
            .is_some_and(|(_, token, _)| *token == result.token)
    }

    /// Stops every checker.
    pub fn stop(&mut self) {
        for (_, (_, _, handle)) in self.running.drain() {
            handle.abort();
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn check_loop(target: Target, token: u64, events: mpsc::Sender<CheckResult>, seed: u64) {
    let mut jitter = Jitter::new(seed);
    let mut tracker = Tracker::new(target.check.rise, target.check.fall, target.healthy);
    let interval = target.check.interval;
    // Spread the first checks over a tenth of the interval.
    time::sleep(interval.mul_f64(0.1 * jitter.next())).await;
    loop {
        let started = time::Instant::now();
        let probe = probe::probe(&target.check, target.addr).await;
        let change = tracker.record_probe(&probe);
        let result = CheckResult {
            backend_id: target.backend_id,
            token,
            probe,
            change,
            healthy: tracker.is_healthy(),
        };
        if events.send(result).await.is_err() {
            return;
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
        let mut t = Tracker::new(2, 3, true);
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
    fn local_failures_never_mark_a_backend_down() {
        let local: Probe = Err(probe::ProbeFailure::Local {
            step: "connect",
            reason: "emfile",
            message: "Too many open files (os error 24)".into(),
        });
        let mut t = Tracker::new(2, 2, true);
        for _ in 0..100 {
            assert_eq!(t.record_probe(&local), None);
        }
        // Nor do they break a streak: fall 2 counts real failures only.
        let refused: Probe = Err(probe::ProbeFailure::Refused);
        assert_eq!(
            t.record_probe(&refused),
            Some(false),
            "first result decides"
        );
        assert_eq!(t.record_probe(&Ok(std::time::Duration::ZERO)), None);
        assert_eq!(t.record_probe(&local), None);
        assert_eq!(t.record_probe(&Ok(std::time::Duration::ZERO)), Some(true));
    }

    #[test]
    fn first_success_keeps_the_assumed_state() {
        let mut t = Tracker::new(1, 1, true);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }
}
