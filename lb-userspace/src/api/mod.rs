//! The agent's HTTP API, read-only, on `api.listen` (loopback
//! by default): `/metrics` ([`metrics`]), `/status` as JSON ([`status`]),
//! `/healthz`. Counters are read from the per-CPU maps (summed over CPUs)
//! at each request; the rest comes from what the agent keeps current in
//! [`Shared`]. The server bounds its clients: `api.max_connections` at
//! once, header and idle timeouts, a lifetime per connection.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::get};
use prometheus_client::registry::Registry;

pub mod bgp;
pub mod metrics;
pub mod shared;
pub mod status;

pub use shared::Shared;
pub use status::{
    BackendStatus, LastCheck, Reloads, Status, Traffic, VipStatus, fetch_status, render_table,
};

/// What the API's handlers share: the agent's view and the reload record.
pub(crate) struct Api {
    shared: Arc<Shared>,
    registry: Registry,
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
    registry.register_collector(Box::new(metrics::LbCollector(shared.clone())));
    let api = Arc::new(Api { shared, registry });
    let router = Router::new()
        .route("/metrics", get(metrics::metrics))
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
