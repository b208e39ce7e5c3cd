//! What the API shows, kept current by the agent: VIPs and backends, last
//! health checks, reloads, the running program; counters are read from the
//! maps at each request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use lb_common::{ConnEvent, Outcome};
use prometheus_client::metrics::{
    counter::Counter as PromCounter,
    family::Family,
    histogram::{Histogram, exponential_buckets},
};

use super::status::{
    BackendStatus, ConnsWalks, LastCheck, NatSummary, Reloads, Status, VipNat, VipStatus,
};
use tokio::sync::watch;

use crate::{
    balancer::VipState,
    bgp::status::BgpStatus,
    dataplane::{stats::StatsReader, upgrade::ProgramId},
    health::probe::{Probe, ProbeFailure},
};

#[derive(Debug, Clone)]
struct BackendView {
    id: u32,
    address: String,
    weight: u32,
    healthy: bool,
    port: u16,
}

#[derive(Debug, Clone)]
struct VipView {
    id: u32,
    name: String,
    address: String,
    protocol: String,
    health_check: String,
    allow: Option<Vec<String>>,
    backends: Vec<BackendView>,
    syn_direct: bool,
    mode: crate::config::VipMode,
    v6: bool,
}

/// The NAT table as the agent's sweeps saw it.
#[derive(Debug, Default)]
struct NatView {
    /// The last sweep.
    last: Option<crate::dataplane::nat::NatSweep>,
    /// Translations removed as expired, over every sweep.
    expired: u64,
    sweeps: u64,
    /// SNAT address x port pairs of each family (IPv4, IPv6).
    capacity: [u64; 2],
}

#[derive(Debug, Default)]
struct View {
    vips: Vec<VipView>,
    /// Metric labels (vip, backend) by backend id, built with `vips`.
    labels: HashMap<u32, Labels>,
    checks: HashMap<u32, (Probe, Instant)>,
    reloads: Reloads,
    walks: ConnsWalks,
    nat: NatView,
}

/// Metric labels of one backend: (name, value) pairs, `vip` then `backend`.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// What the API shows, shared by the agent (writer) and the server.
///
/// The locks are `std::sync::Mutex`, not tokio's, as mini-redis's `Db` is:
/// every critical section is a short copy in or out with no `.await`
/// inside, so a blocking lock is cheaper than an async one and cannot be
/// held across a suspension. Only [`Shared::status`] holds several at once,
/// and takes them in field order (`view`, `stats`, `program`); everything
/// else takes one at a time, so they cannot deadlock: keep that order. A
/// poisoned lock is taken as it is (a panic
/// elsewhere must not stop the API).
pub struct Shared {
    started: Instant,
    interface: String,
    /// VIPs, backends, health, reload and walk figures. Written by the
    /// agent's event loop (start, reload, health change, walk); read by
    /// each `/status` and `/metrics` request.
    view: Mutex<View>,
    /// The pinned counter maps' reader. Locked by each request that reads
    /// counters (a per-CPU map read, well under a millisecond), and by
    /// nothing else.
    stats: Mutex<StatsReader>,
    /// The program the link runs. Written by the agent after a start or an
    /// upgrade; read by `/status`.
    program: Mutex<Option<ProgramId>>,
    /// The BGP speaker's state, published on a watch channel by the speaker
    /// task (no lock here: `borrow` holds the channel's own read lock for
    /// the copy).
    bgp: watch::Receiver<Option<BgpStatus>>,
    /// Health-check latency by VIP and backend; prometheus-client's
    /// families lock internally.
    pub(crate) check_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Health checks that failed for a local reason, by reason.
    pub(crate) check_errors: Family<Labels, PromCounter>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// State for the data plane on `interface`, whose counters `stats` reads.
    pub fn new(
        interface: &str,
        stats: StatsReader,
        bgp: watch::Receiver<Option<BgpStatus>>,
    ) -> Arc<Self> {
        // Every reason of lb_health_check_errors_total starts at 0, so the
        // series exist (for dashboards and alerts) before the first error.
        let check_errors: Family<Labels, PromCounter> = Family::default();
        for reason in ProbeFailure::LOCAL_ERRNOS
            .into_iter()
            .filter_map(ProbeFailure::local_reason)
        {
            let _created = check_errors.get_or_create(&vec![("reason", reason.to_string())]);
        }
        Arc::new(Self {
            started: Instant::now(),
            interface: interface.to_string(),
            view: Mutex::new(View::default()),
            stats: Mutex::new(stats),
            program: Mutex::new(None),
            bgp,
            check_latency: Family::new_with_constructor(latency_histogram),
            check_errors,
        })
    }

    /// Replaces the VIPs and backends shown (after a start, reload or
    /// health change).
    pub fn set_vips(&self, vips: &[VipState]) {
        let views: Vec<VipView> = vips
            .iter()
            .map(|v| VipView {
                id: v.id,
                name: v.config.name.clone(),
                // `[addr]:port` for IPv6 (RFC 3986 section 3.2.2).
                address: std::net::SocketAddr::new(v.config.address, v.config.port).to_string(),
                protocol: v.config.protocol.to_string(),
                health_check: v.config.health_check.kind.to_string(),
                allow: v
                    .config
                    .allow
                    .as_ref()
                    .map(|list| list.iter().map(ToString::to_string).collect()),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        id: b.id,
                        address: b.address.to_string(),
                        weight: b.weight,
                        healthy: b.healthy,
                        port: v
                            .config
                            .backends
                            .iter()
                            .find(|c| c.address == b.address)
                            .map_or(v.config.port, |c| c.port),
                    })
                    .collect(),
                syn_direct: v.conns_match,
                mode: v.config.mode,
                v6: v.config.address.is_ipv6(),
            })
            .collect();
        let labels: HashMap<u32, Labels> = views
            .iter()
            .flat_map(|v| {
                v.backends.iter().map(|b| {
                    let labels = vec![("vip", v.name.clone()), ("backend", b.address.clone())];
                    (b.id, labels)
                })
            })
            .collect();
        let mut view = lock(&self.view);
        view.checks.retain(|id, _| labels.contains_key(id));
        view.vips = views;
        view.labels = labels;
    }

    /// Sets the program the data plane runs (after a start or an upgrade).
    pub fn set_program(&self, program: ProgramId) {
        *lock(&self.program) = Some(program);
    }

    /// Records a health-check result of backend `backend_id`; a local
    /// failure (not a verdict on the backend) is counted in
    /// `lb_health_check_errors_total{reason}`.
    pub fn record_check(&self, backend_id: u32, probe: &Probe) {
        if let Err(ProbeFailure::Local { reason, .. }) = probe {
            self.check_errors
                .get_or_create(&vec![("reason", (*reason).to_string())])
                .inc();
        }
        let mut view = lock(&self.view);
        if let (Ok(latency), Some(labels)) = (probe, view.labels.get(&backend_id)) {
            self.check_latency
                .get_or_create(labels)
                .observe(latency.as_secs_f64());
        }
        view.checks
            .insert(backend_id, (probe.clone(), Instant::now()));
    }

    /// Records a walk of the connection table that took `took`: `Some`
    /// (entries read, whether it read them all, VIPs whose flag it set)
    /// when it could read the table.
    pub fn record_walk(&self, walk: Option<(usize, bool, usize)>, took: std::time::Duration) {
        let walks = &mut lock(&self.view).walks;
        walks.seconds += took.as_secs_f64();
        match walk {
            None => walks.failed += 1,
            Some((entries, complete, set)) => {
                if complete {
                    walks.complete += 1;
                } else {
                    walks.stopped += 1;
                }
                walks.entries += entries as u64;
                walks.flags_set += set as u64;
            }
        }
    }

    /// Sets the SNAT capacity of each family: addresses x ports
    /// (`lb_common::NatSources`).
    pub fn set_snat_capacity(&self, sources: &lb_common::NatSources) {
        let ports = u64::from(sources.port_count);
        lock(&self.view).nat.capacity = [
            u64::from(sources.v4_count) * ports,
            u64::from(sources.v6_count) * ports,
        ];
    }

    /// Records a sweep of the NAT table.
    pub fn record_nat_sweep(&self, sweep: crate::dataplane::nat::NatSweep) {
        let nat = &mut lock(&self.view).nat;
        nat.sweeps += 1;
        nat.expired += sweep.expired;
        nat.last = Some(sweep);
    }

    /// Counts a reload: `Ok` applied, `Err(errors)` rejected.
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut view = lock(&self.view);
        match result {
            Ok(()) => {
                view.reloads.applied += 1;
                view.reloads.last_error = None;
            }
            Err(e) => {
                view.reloads.rejected += 1;
                view.reloads.last_error = Some(e);
            }
        }
    }

    /// Reloads so far.
    pub fn reloads(&self) -> Reloads {
        lock(&self.view).reloads.clone()
    }

    /// The current status, counters read now.
    pub fn status(&self) -> Status {
        let view = lock(&self.view);
        let stats = lock(&self.stats);
        let vips = view
            .vips
            .iter()
            .map(|v| VipStatus {
                name: v.name.clone(),
                address: v.address.clone(),
                protocol: v.protocol.clone(),
                health_check: v.health_check.clone(),
                allow: v.allow.clone(),
                traffic: stats.vip(v.id).into(),
                refused: stats.vip_refused(v.id).into(),
                syn_direct: v.syn_direct,
                mode: v.mode.name().to_string(),
                nat: nat_of(v, &view.nat, &stats),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
                        port: b.port,
                        replies: (v.mode != crate::config::VipMode::Dsr)
                            .then(|| stats.backend_replies(b.id).into()),
                        address: b.address.clone(),
                        weight: b.weight,
                        state: match (b.healthy, b.weight) {
                            (false, _) => "unhealthy",
                            (true, 0) => "draining",
                            (true, _) => "healthy",
                        }
                        .to_string(),
                        last_check: view.checks.get(&b.id).map(|(probe, at)| LastCheck {
                            ok: probe.is_ok(),
                            latency_ms: probe.as_ref().ok().map(|d| d.as_secs_f64() * 1e3),
                            reason: match probe {
                                Ok(_) => "ok".to_string(),
                                Err(e) => e.to_string(),
                            },
                            age_seconds: at.elapsed().as_secs_f64(),
                        }),
                        traffic: stats.backend(b.id).into(),
                    })
                    .collect(),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            interface: self.interface.clone(),
            program: *lock(&self.program),
            vips,
            outcomes: Outcome::ALL
                .iter()
                .map(|&o| (o.name().to_string(), stats.outcome(o).into()))
                .collect(),
            conntrack: ConnEvent::ALL
                .iter()
                .map(|&e| (e.label().to_string(), stats.conn(e).into()))
                .collect(),
            reloads: view.reloads.clone(),
            conntrack_walks: view.walks.clone(),
            bgp: self.bgp.borrow().clone(),
            nat: view
                .vips
                .iter()
                .any(|v| v.mode != crate::config::VipMode::Dsr)
                .then(|| NatSummary {
                    events: lb_common::NatEvent::ALL
                        .iter()
                        .map(|&e| (e.name().to_string(), stats.nat_event(e)))
                        .collect(),
                    expired: view.nat.expired,
                    sweeps: view.nat.sweeps,
                    last_complete: view.nat.last.as_ref().is_some_and(|l| l.complete),
                    entries: view.nat.last.as_ref().map_or(0, |l| l.entries),
                }),
        }
    }
}

/// The NAT side of VIP `v` (`None` in DSR) from the last sweep: its
/// translations, and in `nat` the SNAT ports left toward its busiest
/// backend (a SNAT address and port serve one flow per backend address
/// and port).
fn nat_of(v: &VipView, nat: &NatView, stats: &StatsReader) -> Option<VipNat> {
    use crate::config::VipMode;
    if v.mode == VipMode::Dsr {
        return None;
    }
    let last = nat.last.as_ref();
    let translations = last
        .and_then(|l| l.by_vip.get(&(v.id as u16)))
        .copied()
        .unwrap_or(0);
    let snat_ports_left = (v.mode == VipMode::Nat).then(|| {
        let busiest = v
            .backends
            .iter()
            .map(|b| {
                last.and_then(|l| l.by_backend.get(&b.id))
                    .copied()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        nat.capacity[usize::from(v.v6)].saturating_sub(busiest)
    });
    Some(VipNat {
        translations,
        snat_ports_left,
        replies: stats.vip_replies(v.id).into(),
    })
}
