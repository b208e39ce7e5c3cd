//! Health-check results fed back into the data plane, and the targets the
//! checkers probe.

use super::*;

/// Least time between two log lines about health checks that failed for a
/// local reason.
const LOCAL_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Agent {
    /// Applies one health-check result.
    pub(super) fn on_check(&mut self, result: &CheckResult) {
        self.shared.record_check(result.backend_id, &result.probe);
        if let Err(failure) = &result.probe
            && failure.is_local()
        {
            let now = time::Instant::now();
            if self
                .last_local_error
                .is_none_or(|t| now.duration_since(t) >= LOCAL_ERROR_LOG_INTERVAL)
            {
                self.last_local_error = Some(now);
                warn!(
                    "a health check of backend id {} could not be made ({failure}); backends keep their state (counted in lb_health_check_errors_total, logged at most every {}s)",
                    result.backend_id,
                    LOCAL_ERROR_LOG_INTERVAL.as_secs()
                );
            }
        }
        // The checker owns the backend's health; the maps follow it. A
        // failed write leaves them apart until the next result retries.
        let healthy = result.healthy;
        let balancer = &mut self.plane.balancer;
        let Some((v, b)) = balancer.find_backend(result.backend_id) else {
            return;
        };
        let vip = &balancer.vips()[v];
        if vip.backends[b].healthy == healthy {
            return;
        }
        let (name, address) = (vip.config.name.clone(), vip.backends[b].address);
        let reason = match &result.probe {
            Ok(latency) => format!(
                "check succeeded in {}",
                humantime::format_duration(*latency)
            ),
            Err(failure) => failure.to_string(),
        };
        let retried = if result.change.is_none() {
            " (applied on a retry of the map write)"
        } else {
            ""
        };
        match balancer.set_health(v, b, healthy) {
            Ok(_) if healthy => {
                info!("backend {address} of VIP {name:?} is healthy: {reason}{retried}");
            }
            Ok(_) => warn!("backend {address} of VIP {name:?} is unhealthy: {reason}{retried}"),
            Err(e) => warn!(
                "applying health ({}) of backend {address} of VIP {name:?}: {e}; retried on its next check",
                if healthy { "healthy" } else { "unhealthy" }
            ),
        }
        self.shared.set_vips(self.plane.balancer.vips());
        self.announce();
    }

    /// One health-check target per backend of every VIP, with the
    /// backend's current state as the checker's starting point. The port
    /// checked is `health_check.port` when it differs from the VIP's, else
    /// the backend's own (`[[vip.backend]] port`, which the NAT modes map:
    /// a NAT backend serves on its port, not the VIP's).
    pub(super) fn health_targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        for vip in self.plane.balancer.vips() {
            let c = &vip.config;
            for b in &vip.backends {
                let port = if c.health_check.port != c.port {
                    c.health_check.port
                } else {
                    c.backends
                        .iter()
                        .find(|cb| cb.address == b.address)
                        .map_or(c.port, |cb| cb.port)
                };
                targets.push(Target {
                    backend_id: b.id,
                    addr: SocketAddr::new(b.address, port),
                    check: vip.config.health_check.clone(),
                    healthy: b.healthy,
                });
            }
        }
        targets
    }
}
