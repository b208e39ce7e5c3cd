//! Connection-table walks: started off the event loop when a VIP waits for
//! one, and their verdicts applied (the SYN shortcut set again).

use super::*;

/// A walk of the connection table as it ended, with how long it took.
pub(super) type ConnsWalk = (Result<ConnsVerdict, String>, Duration);

/// Sets a stop flag when dropped.
pub(super) struct StopOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Agent {
    /// Starts a walk of the connection table in a blocking thread when a
    /// VIP waits for one; whether it started.
    pub(super) fn start_conns_walk(
        &mut self,
        done: &mpsc::Sender<ConnsWalk>,
        stop: &Arc<AtomicBool>,
    ) -> bool {
        let now = std::time::Instant::now();
        let waiting = self.plane.balancer.conns_waiting(now);
        if waiting.is_empty() || !self.walks.due(&waiting, now) {
            return false;
        }
        let Some(check) = self.plane.balancer.conns_check(now) else {
            return false;
        };
        self.walks.started(waiting, now);
        let (dir, done, stop) = (self.plane.dir.clone(), done.clone(), stop.clone());
        // A task that always reports, so a walk that failed in any way
        // never leaves the agent waiting for it.
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let verdict = tokio::task::spawn_blocking(move || {
                conns::walk_pinned(&dir, &check, &stop).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the walk's thread ended: {e}")));
            let _ = done.send((verdict, started.elapsed())).await;
        });
        true
    }

    /// Sets the flag of the VIPs a walk found in agreement.
    pub(super) fn on_conns_walk(&mut self, (verdict, took): ConnsWalk) {
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(e) => {
                self.walks.finished(false);
                self.shared.record_walk(None, took);
                warn!("walking the connection table: {e}");
                return;
            }
        };
        let checked = self.plane.balancer.conns_checked(&verdict);
        let set = checked.as_ref().map_or(0, Vec::len);
        self.walks.finished(set > 0);
        self.shared
            .record_walk(Some((verdict.entries, verdict.complete, set)), took);
        match checked {
            Ok(set) if !set.is_empty() => {
                self.shared.set_vips(self.plane.balancer.vips());
                info!(
                    "recorded flows agree with the Maglev table again ({} connection-table entries read in {} ms): TCP SYNs take the table's choice without a connection-table lookup for VIP {}",
                    verdict.entries,
                    took.as_millis(),
                    set.join(", ")
                );
            }
            Ok(_) => debug!(
                "connection-table walk: {} entries in {} ms, {}",
                verdict.entries,
                took.as_millis(),
                if verdict.complete {
                    "no VIP in agreement yet"
                } else {
                    "stopped early"
                }
            ),
            Err(e) => warn!("setting the SYN flag of VIPs after a connection-table walk: {e}"),
        }
    }
}
