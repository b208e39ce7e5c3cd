//! One health check of one backend: a TCP connect, an HTTP GET or a UDP
//! exchange, bounded by the check's timeout, giving its latency or why it
//! failed. Scheduling, rise/fall and state changes live in [`crate::health`].
//!
//! Every probe opens its own socket and closes it when done (or when the
//! timeout drops it), so nothing outlives a check.

use std::{
    error::Error as _,
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::pin,
    time::{Duration, Instant},
};

use http_body_util::Empty;
use hyper::{Request, body::Bytes, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpStream, UdpSocket},
    time,
};

use crate::config::{HealthCheck, HealthCheckKind};

/// Result of one check: its latency, or why it failed.
pub type Probe = Result<Duration, ProbeFailure>;

/// Why a check failed. The `Display` text is the reason logged and shown on
/// `/status`; [`ProbeFailure::label`] is a fixed word for metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// The backend refused: a TCP RST to the SYN, or for UDP an ICMP port
    /// unreachable (reported as `ECONNREFUSED` on a connected socket).
    #[error("connection refused")]
    Refused,
    /// No answer (TCP handshake, HTTP response headers or UDP reply) within
    /// the check's timeout.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// HTTP: an answer with another status than the expected one.
    #[error("status {got}, expected {expected}")]
    WrongStatus {
        /// The status received.
        got: u16,
        /// The check's `expect_status`.
        expected: u16,
    },
    /// The backend reset the connection.
    #[error("connection reset")]
    Reset,
    /// HTTP: the backend closed the connection before the response headers.
    #[error("connection closed before a response")]
    Closed,
    /// HTTP: the answer is not an HTTP/1.x response.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Any other failure, with the step that failed (`connect`, `send`, ...).
    #[error("{step} failed: {message}")]
    Other {
        /// The step: `connect`, `bind`, `send`, `receive` or `request`.
        step: &'static str,
        /// The underlying error's message.
        message: String,
    },
}

impl ProbeFailure {
    /// A fixed lower-case word per variant, for metric labels: `refused`,
    /// `timeout`, `wrong_status`, `reset`, `closed`, `malformed` or `error`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout(_) => "timeout",
            Self::WrongStatus { .. } => "wrong_status",
            Self::Reset => "reset",
            Self::Closed => "closed",
            Self::Malformed(_) => "malformed",
            Self::Other { .. } => "error",
        }
    }

    /// Maps an I/O error of `step` to a failure.
    fn io(step: &'static str, e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Self::Reset,
            io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Other {
                step,
                message: e.to_string(),
            },
        }
    }

    /// Maps a hyper error (of the request or of the connection) to a failure.
    fn http(e: &hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() {
            return Self::Malformed(e.to_string());
        }
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            return Self::Closed;
        }
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                return Self::io("request", io);
            }
            source = s.source();
        }
        Self::Other {
            step: "request",
            message: e.to_string(),
        }
    }
}

/// Runs `check` once against `addr` (the backend's address and the check's
/// port). Kind `none` succeeds at once with a zero latency.
pub async fn probe(check: &HealthCheck, addr: SocketAddr) -> Probe {
    match check.kind {
        HealthCheckKind::Tcp => probe_tcp(addr, check.timeout).await,
        HealthCheckKind::Http => {
            probe_http(addr, &check.path, check.expect_status, check.timeout).await
        }
        HealthCheckKind::Udp => probe_udp(addr, check.payload.as_bytes(), check.timeout).await,
        HealthCheckKind::None => Ok(Duration::ZERO),
    }
}

/// Runs `attempt` under `timeout`, and times it.
async fn timed(
    timeout: Duration,
    attempt: impl Future<Output = Result<(), ProbeFailure>>,
) -> Probe {
    let start = Instant::now();
    match time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(ProbeFailure::Timeout(timeout)),
    }
}

/// TCP check: a connection to `addr` that completes within `timeout`. The
/// connection is closed at once.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Probe {
    timed(timeout, async {
        TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| ProbeFailure::io("connect", &e))
    })
    .await
}

/// HTTP check: `GET path` over HTTP/1.1 with `Host: addr`, a success only
/// when the response status is `expect_status`. `timeout` bounds the connect
/// and the response headers together; the body is never read (the
/// connection is closed after the headers).
///
/// 1xx answers other than 101 are interim responses that the client skips,
/// so only the final status is compared.
pub async fn probe_http(
    addr: SocketAddr,
    path: &str,
    expect_status: u16,
    timeout: Duration,
) -> Probe {
    timed(timeout, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeFailure::io("connect", &e))?;
        // One small request: send it without waiting for Nagle.
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProbeFailure::http(&e))?;
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeFailure::Other {
                step: "request",
                message: e.to_string(),
            })?;
        // The connection future does the I/O; drive it here rather than in a
        // spawned task, so that dropping this future (on timeout) closes the
        // socket. It ends when the connection does: keep polling the request
        // then, which resolves with the reason.
        let mut conn = pin!(conn);
        let mut send = pin!(sender.send_request(request));
        let mut conn_error = None;
        let response = loop {
            tokio::select! {
                response = &mut send => break response,
                ended = &mut conn, if conn_error.is_none() => {
                    conn_error = Some(ended.err());
                }
            }
        };
        let response = response.map_err(|e| match &conn_error {
            // A cancelled request says less than the connection's own error.
            Some(Some(conn_e)) if e.is_canceled() => ProbeFailure::http(conn_e),
            _ => ProbeFailure::http(&e),
        })?;
        let got = response.status().as_u16();
        if got == expect_status {
            Ok(())
        } else {
            Err(ProbeFailure::WrongStatus {
                got,
                expected: expect_status,
            })
        }
    })
    .await
}

/// The `User-Agent` of HTTP checks, so backends can tell them from clients.
pub const USER_AGENT: &str = concat!("lb-health-check/", env!("CARGO_PKG_VERSION"));

/// UDP check: `payload` sent to `addr` from a connected socket, a success on
/// any datagram back from `addr` within `timeout`. An ICMP port unreachable
/// is [`ProbeFailure::Refused`]; silence is [`ProbeFailure::Timeout`].
pub async fn probe_udp(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Probe {
    timed(timeout, async {
        let local: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| ProbeFailure::io("bind", &e))?;
        // Connected, so that the kernel drops datagrams from anyone else and
        // reports an ICMP error for this peer on the next receive.
        socket
            .connect(addr)
            .await
            .map_err(|e| ProbeFailure::io("connect", &e))?;
        socket
            .send(payload)
            .await
            .map_err(|e| ProbeFailure::io("send", &e))?;
        // Any reply counts, even an empty or truncated one.
        let mut buf = [0u8; 512];
        socket
            .recv(&mut buf)
            .await
            .map(drop)
            .map_err(|e| ProbeFailure::io("receive", &e))
    })
    .await
}

#[cfg(test)]
mod tests {
}
