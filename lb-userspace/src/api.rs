//! The agent's HTTP API (SPEC 4, 7), read-only, on `api.listen` (loopback
//! by default): `/metrics` in Prometheus text format, `/status` as JSON,
//! `/healthz`. Counters are read from the per-CPU maps (summed over CPUs)
//! at each request; the rest comes from a [`Status`] snapshot the agent
//! keeps current.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use lb_common::{ConnEvent, Counter, Outcome};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter as PromCounter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::VipState,
    dataplane::{stats::StatsReader, upgrade::ProgramId},
    health::probe::{Probe, ProbeFailure},
};

/// Packets and bytes, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// The last health check of a backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastCheck {
    /// Whether it succeeded.
    pub ok: bool,
    /// Latency in milliseconds, on success.
    pub latency_ms: Option<f64>,
    /// Why it failed (`refused`, `timeout after 250ms`, `status 500,
    /// expected 200`, ...), or "ok".
    pub reason: String,
    /// Seconds since it completed.
    pub age_seconds: f64,
}

/// A backend on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Address.
    pub address: String,
    /// Weight (0: draining).
    pub weight: u32,
    /// `healthy`, `unhealthy` or `draining` (healthy, weight 0).
    pub state: String,
    /// Last health check, if any ran.
    pub last_check: Option<LastCheck>,
    /// Traffic sent to it.
    pub traffic: Traffic,
}

/// A VIP on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    /// Name.
    pub name: String,
    /// `address:port` (port 0: every port).
    pub address: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Health-check kind.
    pub health_check: String,
    /// Traffic to it.
    pub traffic: Traffic,
    /// Its backends, in configuration order.
    pub backends: Vec<BackendStatus>,
}

/// Reloads so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reloads {
    /// Applied (unchanged files included).
    pub applied: u64,
    /// Rejected (invalid, or not applicable); the running config stayed.
    pub rejected: u64,
    /// Errors of the last rejected configuration, until one is applied.
    pub last_error: Option<String>,
}

/// `/status`: the running configuration's VIPs and backends with state, last
/// check and counters; per-outcome and connection-table counters; reloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// Interface the data plane is attached to.
    pub interface: String,
    /// The `xdp_lb` program the interface's link runs.
    pub program: Option<ProgramId>,
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// Packets and bytes per outcome (`forwarded_tx`, `drop_source_filter`, ...).
    pub outcomes: BTreeMap<String, Traffic>,
    /// Connection-table events: `hit`, `miss`, `rehash`.
    pub conntrack: BTreeMap<String, Traffic>,
    /// Reloads.
    pub reloads: Reloads,
}

#[derive(Debug, Clone)]
struct BackendView {
    id: u32,
    address: String,
    weight: u32,
    healthy: bool,
}

#[derive(Debug, Clone)]
struct VipView {
    id: u32,
    name: String,
    address: String,
    protocol: String,
    health_check: String,
    backends: Vec<BackendView>,
}

#[derive(Debug, Default)]
struct View {
    vips: Vec<VipView>,
    /// Metric labels (vip, backend) by backend id, built with `vips`.
    labels: HashMap<u32, Labels>,
    checks: HashMap<u32, (Probe, Instant)>,
    reloads: Reloads,
}

type Labels = Vec<(&'static str, String)>;

/// What the API shows, shared by the agent (writer) and the server.
pub struct Shared {
    started: Instant,
    interface: String,
    view: Mutex<View>,
    stats: Mutex<StatsReader>,
    program: Mutex<Option<ProgramId>>,
    check_latency: Family<Labels, Histogram, fn() -> Histogram>,
    check_errors: Family<Labels, PromCounter>,
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
    pub fn new(interface: &str, stats: StatsReader) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            interface: interface.to_string(),
            view: Mutex::new(View::default()),
            stats: Mutex::new(stats),
            program: Mutex::new(None),
            check_latency: Family::new_with_constructor(latency_histogram),
            check_errors: Family::default(),
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
                address: format!("{}:{}", v.config.address, v.config.port),
                protocol: v.config.protocol.to_string(),
                health_check: v.config.health_check.kind.to_string(),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        id: b.id,
                        address: b.address.to_string(),
                        weight: b.weight,
                        healthy: b.healthy,
                    })
                    .collect(),
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
                traffic: stats.vip(v.id).into(),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
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
            conntrack: [
                ("hit", ConnEvent::Hit),
                ("miss", ConnEvent::Miss),
                ("rehash", ConnEvent::Rehash),
            ]
            .into_iter()
            .map(|(name, e)| (name.to_string(), stats.conn(e).into()))
            .collect(),
            reloads: view.reloads.clone(),
        }
    }
}

/// The scrape-time collector of everything but the latency histogram.
#[derive(Debug)]
struct LbCollector(Arc<Shared>);

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One value per backend, labelled (vip, backend).
fn per_backend<T>(s: &Status, f: impl Fn(&BackendStatus) -> T) -> Vec<(Labels, T)> {
    s.vips
        .iter()
        .flat_map(|v| {
            v.backends.iter().map(|b| {
                (
                    vec![("vip", v.name.clone()), ("backend", b.address.clone())],
                    f(b),
                )
            })
        })
        .collect()
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();
        let e = &mut encoder;
        let each = |f: fn(&Traffic) -> u64| -> Vec<(Labels, u64)> {
            s.outcomes
                .iter()
                .map(|(o, t)| (vec![("outcome", o.clone())], f(t)))
                .collect()
        };
        counters(
            e,
            "lb_packets",
            "Packets by outcome in xdp_lb, summed over CPUs.",
            &each(|t| t.packets),
        )?;
        counters(
            e,
            "lb_bytes",
            "Bytes by outcome in xdp_lb, summed over CPUs.",
            &each(|t| t.bytes),
        )?;
        let conn: Vec<(Labels, u64)> = s
            .conntrack
            .iter()
            .map(|(ev, t)| (vec![("event", ev.clone())], t.packets))
            .collect();
        counters(
            e,
            "lb_conntrack_events",
            "Connection-table lookups: hit, miss, rehash.",
            &conn,
        )?;
        let vip = |f: fn(&Traffic) -> u64| -> Vec<(Labels, u64)> {
            s.vips
                .iter()
                .map(|v| (vec![("vip", v.name.clone())], f(&v.traffic)))
                .collect()
        };
        counters(
            e,
            "lb_vip_packets",
            "Packets forwarded per VIP.",
            &vip(|t| t.packets),
        )?;
        counters(
            e,
            "lb_vip_bytes",
            "Bytes forwarded per VIP.",
            &vip(|t| t.bytes),
        )?;
        counters(
            e,
            "lb_backend_packets",
            "Packets sent per backend.",
            &per_backend(&s, |b| b.traffic.packets),
        )?;
        counters(
            e,
            "lb_backend_bytes",
            "Bytes sent per backend.",
            &per_backend(&s, |b| b.traffic.bytes),
        )?;
        gauges(
            e,
            "lb_backend_healthy",
            "1 when the backend passes its health check.",
            &per_backend(&s, |b| i64::from(b.state != "unhealthy")),
        )?;
        gauges(
            e,
            "lb_backend_weight",
            "Configured weight (0: draining).",
            &per_backend(&s, |b| i64::from(b.weight)),
        )?;
        counters(
            e,
            "lb_reloads",
            "Configuration reloads by result.",
            &[
                (vec![("result", "applied".into())], s.reloads.applied),
                (vec![("result", "rejected".into())], s.reloads.rejected),
            ],
        )?;
        gauges(
            e,
            "lb_uptime_seconds",
            "Seconds since the agent started.",
            &[(vec![], s.uptime_seconds as i64)],
        )?;
        gauges(
            e,
            "lb_build_info",
            "The agent's version.",
            &[(vec![("version", s.version.clone())], 1)],
        )?;
        Ok(())
    }
}

struct Api {
    shared: Arc<Shared>,
    registry: Registry,
}

/// Content type of the OpenMetrics text format (OpenMetrics 1.0).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics: it names
/// `application/openmetrics-text` with a quality above 0 and at least that
/// of `text/plain` (Prometheus sends both, OpenMetrics first).
pub fn wants_openmetrics(accept: &str) -> bool {
    let quality = |wanted: &str| -> Option<f32> {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next()?;
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts
                    .find_map(|p| p.strip_prefix("q="))
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .reduce(f32::max)
    };
    match (
        quality("application/openmetrics-text"),
        quality("text/plain"),
    ) {
        (Some(om), Some(text)) => om > 0.0 && om >= text,
        (Some(om), None) => om > 0.0,
        _ => false,
    }
}

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the
/// Prometheus text format 0.0.4: a counter family is named by its samples
/// (`x_total`), `# UNIT` and `# EOF` lines go, `unknown` becomes `untyped`.
/// Sample lines are the same in both formats.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let tail = if *prefix == "# TYPE " && tail == "unknown" {
                "untyped"
            } else {
                tail
            };
            let suffix = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            Some(format!("{prefix}{name}{suffix} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn metrics(State(api): State<Arc<Api>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(wants_openmetrics);
    match prometheus_client::encoding::text::encode(&mut body, &api.registry) {
        Ok(()) if openmetrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        ),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            openmetrics_to_prometheus(&body),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding failed\n".to_string(),
        ),
    }
}

async fn status(State(api): State<Arc<Api>>) -> Json<Status> {
    Json(api.shared.status())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Longest a client may take to send a request's headers, and longest a
/// kept-alive connection may stay idle between requests (hyper's
/// `header_read_timeout` runs whenever the server waits for a request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one API connection may live, whatever it does (a client that
/// never reads its answer included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The answer to a client over `api.max_connections`, written once without
/// waiting before the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 37\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many API connections, retry later\n";

/// Binds `listen` and serves the API in a task until it is aborted, with at
/// most `max_connections` connections at once: a client over the limit gets
/// a 503 (written without waiting) and is closed; a client that sends no
/// complete request headers within [`HEADER_READ_TIMEOUT`] (idle keep-alive
/// included) is closed; no connection lives longer than
/// [`CONNECTION_LIFETIME`]. When accepting fails (out of file descriptors),
/// the server waits 100 ms and tries again, logging it at most once a
/// second.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    shared: Arc<Shared>,
    max_connections: u32,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut registry = Registry::default();
    registry.register(
        "lb_health_check_duration_seconds",
        "Latency of successful health checks per backend.",
        shared.check_latency.clone(),
    );
    registry.register(
        "lb_health_check_errors",
        "Health checks that could not be made for a local reason (out of file descriptors, buffers or ports), by errno; not counted against backends.",
        shared.check_errors.clone(),
    );
    registry.register_collector(Box::new(LbCollector(shared.clone())));
    let api = Arc::new(Api { shared, registry });
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
    Ok(tokio::spawn(accept_loop(listener, router, slots)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    slots: Arc<tokio::sync::Semaphore>,
) {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let mut last_logged: Option<Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    log::warn!("API: accepting a connection failed: {e}; retrying in 100 ms");
                    last_logged = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: answer once if the socket takes it at once, then close.
            let _ = stream.try_write(BUSY);
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

/// Fetches `/status` from an agent's API at `api` (for `lb status`).
///
/// # Errors
/// No answer within `timeout`, a status other than 200, or a body that is
/// not a [`Status`].
pub async fn fetch_status(api: SocketAddr, timeout: Duration) -> anyhow::Result<Status> {
    use anyhow::Context as _;
    use http_body_util::{BodyExt as _, Empty};
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(api)
            .await
            .with_context(|| format!("connecting to the agent's API at {api}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/status")
            .header(hyper::header::HOST, api.to_string())
            .body(Empty::<hyper::body::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let code = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        conn.abort();
        anyhow::ensure!(
            code == hyper::StatusCode::OK,
            "{api}/status answered {code}"
        );
        serde_json::from_slice(&body).context("parsing /status")
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {api} within {timeout:?}"))?
}

/// `lb status` as a table: VIPs, backends with state, weight, traffic and
/// last check; outcomes with packets; reloads.
pub fn render_table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lb {} on {}, up {:.0}s; reloads: {} applied, {} rejected",
        s.version, s.interface, s.uptime_seconds, s.reloads.applied, s.reloads.rejected
    );
    if let Some(p) = &s.program {
        let _ = writeln!(out, "program xdp_lb {p}");
    }
    if let Some(e) = &s.reloads.last_error {
        let _ = writeln!(out, "last rejected configuration: {e}");
    }
    for v in &s.vips {
        let _ = writeln!(
            out,
            "\nVIP {} {} {} (check {}): {} packets, {} bytes",
            v.name, v.address, v.protocol, v.health_check, v.traffic.packets, v.traffic.bytes
        );
        let _ = writeln!(
            out,
            "  {:<40} {:<10} {:>6} {:>12} {:>14}  last check",
            "backend", "state", "weight", "packets", "bytes"
        );
        for b in &v.backends {
            let check = b.last_check.as_ref().map_or_else(
                || "-".to_string(),
                |c| match c.latency_ms {
                    Some(ms) => format!("ok in {ms:.1} ms"),
                    None => c.reason.clone(),
                },
            );
            let _ = writeln!(
                out,
                "  {:<40} {:<10} {:>6} {:>12} {:>14}  {check}",
                b.address, b.state, b.weight, b.traffic.packets, b.traffic.bytes
            );
        }
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>14}", "outcome", "packets", "bytes");
    for (name, t) in &s.outcomes {
        if t.packets > 0 {
            let _ = writeln!(out, "{name:<24} {:>12} {:>14}", t.packets, t.bytes);
        }
    }
    let c = |k: &str| s.conntrack.get(k).map_or(0, |t| t.packets);
    let _ = writeln!(
        out,
        "connection table: {} hits, {} misses, {} rehashes",
        c("hit"),
        c("miss"),
        c("rehash")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_picks_the_format() {
        // What Prometheus 2.x sends: OpenMetrics first.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }

    #[test]
    fn openmetrics_becomes_the_0_0_4_text_format() {
        let openmetrics = "# HELP lb_packets Packets.\n# TYPE lb_packets counter\nlb_packets_total{outcome=\"pass\"} 3\n# HELP lb_up Up.\n# TYPE lb_up gauge\n# UNIT lb_up seconds\nlb_up 1\n# HELP lb_x X.\n# TYPE lb_x unknown\nlb_x 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(openmetrics),
            "# HELP lb_packets_total Packets.\n# TYPE lb_packets_total counter\nlb_packets_total{outcome=\"pass\"} 3\n# HELP lb_up Up.\n# TYPE lb_up gauge\nlb_up 1\n# HELP lb_x X.\n# TYPE lb_x untyped\nlb_x 2\n"
        );
    }
}
