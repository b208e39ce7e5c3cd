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
    /// The check could not be made for a reason of this host, not of the
    /// backend: out of file descriptors (`EMFILE`, `ENFILE`), of socket
    /// buffers or memory (`ENOBUFS`, `ENOMEM`), of local ports
    /// (`EADDRNOTAVAIL`). Not a verdict on the backend: it does not count
    /// toward `fall` (see [`crate::health`]).
    #[error("local error, not a verdict on the backend: {step} failed: {message}")]
    Local {
        /// The step: `connect`, `bind`, `send`, `receive` or `request`.
        step: &'static str,
        /// [`ProbeFailure::local_reason`] word for the errno.
        reason: &'static str,
        /// The underlying error's message.
        message: String,
    },
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
            Self::Local { .. } => "local",
            Self::Other { .. } => "error",
        }
    }

    /// Whether the failure is this host's, not the backend's.
    pub const fn is_local(&self) -> bool {
        matches!(self, Self::Local { .. })
    }

    /// The errnos that are local failures ([`ProbeFailure::local_reason`]).
    pub const LOCAL_ERRNOS: [i32; 5] = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
    ];

    /// The errno word (`emfile`, `enfile`, `enobufs`, `enomem`,
    /// `eaddrnotavail`) of a local failure (for the `reason` label of
    /// `lb_health_check_errors_total`), `None` for any other.
    pub fn local_reason(errno: i32) -> Option<&'static str> {
        Some(match errno {
            libc::EMFILE => "emfile",
            libc::ENFILE => "enfile",
            libc::ENOBUFS => "enobufs",
            libc::ENOMEM => "enomem",
            libc::EADDRNOTAVAIL => "eaddrnotavail",
            _ => return None,
        })
    }

    /// Maps an I/O error of `step` to a failure.
    fn io(step: &'static str, e: &io::Error) -> Self {
        if let Some(reason) = e.raw_os_error().and_then(Self::local_reason) {
            return Self::Local {
                step,
                reason,
                message: e.to_string(),
            };
        }
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
    //! Every probe against real servers on 127.0.0.1, started by the test,
    //! that answer correctly, wrongly, slowly or not at all. Every wait is
    //! bounded: the probes by their timeout, and each test by [`bounded`].

    use std::net::Ipv4Addr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc,
        task::{JoinHandle, JoinSet},
    };

    use super::*;

    /// The checks' timeout in these tests.
    const TIMEOUT: Duration = Duration::from_millis(300);
    /// How much later than its timeout a probe may give up, on a loaded machine.
    const MARGIN: Duration = Duration::from_millis(400);
    /// Longer than any test may wait.
    const TEST_LIMIT: Duration = Duration::from_secs(10);

    /// A server task, stopped (with every connection it holds) when dropped.
    struct Server {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// What an HTTP test server does once it has read a request's head.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Waits, writes these bytes, then holds the connection open.
        After(Duration, &'static str),
        /// Closes the connection (FIN).
        Close,
        /// Resets the connection (RST, by `SO_LINGER` 0).
        Reset,
    }

    /// An HTTP server on 127.0.0.1 that answers each request with `answer`
    /// and sends each request's head on the returned channel.
    async fn http_server(answer: Answer) -> (Server, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Owned by the task: aborting the task drops every connection.
            let mut connections = JoinSet::new();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let heads = heads.clone();
                connections.spawn(async move {
                    let head = read_head(&mut stream).await;
                    let _ = heads.send(head);
                    match answer {
                        Answer::After(delay, bytes) => {
                            time::sleep(delay).await;
                            stream.write_all(bytes.as_bytes()).await.unwrap();
                            // Hold the connection, as a server sending a
                            // long body would.
                            time::sleep(TEST_LIMIT).await;
                        }
                        Answer::Close => drop(stream),
                        Answer::Reset => {
                            stream.set_zero_linger().unwrap();
                            drop(stream);
                        }
                    }
                });
            }
        });
        (Server { addr, task }, rx)
    }

    /// Reads up to the blank line that ends a request's head.
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A UDP server on 127.0.0.1 that sends each datagram it receives on the
    /// returned channel and, when `reply` is given, answers it with that.
    async fn udp_server(
        reply: Option<&'static [u8]>,
    ) -> (Server, mpsc::UnboundedReceiver<Vec<u8>>) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (datagrams, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                let _ = datagrams.send(buf[..n].to_vec());
                if let Some(reply) = reply {
                    socket.send_to(reply, from).await.unwrap();
                }
            }
        });
        (Server { addr, task }, rx)
    }

    /// An address on 127.0.0.1 where nothing listens (for `udp`: nothing is
    /// bound, so the kernel answers with an ICMP port unreachable).
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Runs a probe, failing the test if it outlives [`TEST_LIMIT`]; returns
    /// its result and how long it took.
    async fn bounded(probe: impl Future<Output = Probe>) -> (Probe, Duration) {
        let start = Instant::now();
        let result = time::timeout(TEST_LIMIT, probe)
            .await
            .expect("the probe ignored its timeout");
        (result, start.elapsed())
    }

    /// Asserts a probe timed out, and gave up close to its timeout.
    #[track_caller]
    fn assert_timed_out(result: &Probe, took: Duration) {
        assert_eq!(result, &Err(ProbeFailure::Timeout(TIMEOUT)));
        assert_eq!(
            result.clone().unwrap_err().to_string(),
            "timeout after 300ms"
        );
        assert!(
            took >= TIMEOUT && took < TIMEOUT + MARGIN,
            "gave up after {took:?}"
        );
    }

    fn check(kind: HealthCheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            port: 0,
            path: "/healthz".into(),
            expect_status: 200,
            payload: "are you there?".into(),
            interval: Duration::from_secs(1),
            timeout: TIMEOUT,
            rise: 1,
            fall: 1,
        }
    }

    const OK_WITH_LONG_BODY: &str =
        "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nthe first bytes of a long body";

    #[tokio::test]
    async fn http_success_on_the_expected_status_without_reading_the_body() {
        let (server, mut heads) =
            http_server(Answer::After(Duration::ZERO, OK_WITH_LONG_BODY)).await;
        let (result, took) =
            bounded(probe_http(server.addr, "/healthz?deep=1", 200, TIMEOUT)).await;
        let latency = result.expect("success");
        assert!(latency <= took && took < TIMEOUT, "{latency:?} {took:?}");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /healthz?deep=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: {}\r\n", server.addr)),
            "{head}"
        );
        assert!(head.contains("\r\nuser-agent: lb-health-check/"), "{head}");
    }

    #[tokio::test]
    async fn http_wrong_status() {
        let (server, _heads) = http_server(Answer::After(
            Duration::ZERO,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let (result, _) = bounded(probe_http(server.addr, "/", 200, TIMEOUT)).await;
        let failure = result.unwrap_err();
        assert_eq!(
            failure,
            ProbeFailure::WrongStatus {
                got: 500,
                expected: 200
            }
        );
        assert_eq!(failure.to_string(), "status 500, expected 200");

        // A success status is wrong too when another one is expected.
        let (server, _heads) = http_server(Answer::After(Duration::ZERO, OK_WITH_LONG_BODY)).await;
        let (result, _) = bounded(probe_http(server.addr, "/", 204, TIMEOUT)).await;
        assert_eq!(
            result,
            Err(ProbeFailure::WrongStatus {
                got: 200,
                expected: 204
            })
        );
    }

    #[tokio::test]
    async fn http_slow_answer_times_out() {
        let (server, _heads) =
            http_server(Answer::After(Duration::from_secs(2), OK_WITH_LONG_BODY)).await;
        let (result, took) = bounded(probe_http(server.addr, "/", 200, TIMEOUT)).await;
        assert_timed_out(&result, took);
    }

    #[tokio::test]
    async fn http_no_server_is_refused() {
        let addr = closed_port().await;
        let (result, _) = bounded(probe_http(addr, "/", 200, TIMEOUT)).await;
        assert_eq!(result, Err(ProbeFailure::Refused));
        assert_eq!(result.unwrap_err().to_string(), "connection refused");
    }

    #[tokio::test]
    async fn http_connection_closed_or_reset_without_an_answer() {
        let (server, _heads) = http_server(Answer::Close).await;
        let (result, _) = bounded(probe_http(server.addr, "/", 200, TIMEOUT)).await;
        assert_eq!(result, Err(ProbeFailure::Closed));
        assert_eq!(
            result.unwrap_err().to_string(),
            "connection closed before a response"
        );

        let (server, _heads) = http_server(Answer::Reset).await;
        let (result, _) = bounded(probe_http(server.addr, "/", 200, TIMEOUT)).await;
        assert_eq!(result, Err(ProbeFailure::Reset));
        assert_eq!(result.unwrap_err().to_string(), "connection reset");
    }

    #[tokio::test]
    async fn http_malformed_answer() {
        let (server, _heads) =
            http_server(Answer::After(Duration::ZERO, "SSH-2.0-OpenSSH_9.6\r\n")).await;
        let (result, _) = bounded(probe_http(server.addr, "/", 200, TIMEOUT)).await;
        let failure = result.unwrap_err();
        assert!(matches!(failure, ProbeFailure::Malformed(_)), "{failure:?}");
        assert!(
            failure.to_string().starts_with("malformed response: "),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn udp_success_on_any_reply() {
        let (server, mut datagrams) = udp_server(Some(b"pong")).await;
        let (result, took) = bounded(probe_udp(server.addr, b"ping", TIMEOUT)).await;
        let latency = result.expect("success");
        assert!(latency <= took && took < TIMEOUT, "{latency:?} {took:?}");
        assert_eq!(datagrams.recv().await.unwrap(), b"ping");

        // Even an empty datagram is a reply.
        let (server, _datagrams) = udp_server(Some(b"")).await;
        let (result, _) = bounded(probe_udp(server.addr, b"ping", TIMEOUT)).await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn udp_silence_times_out() {
        let (server, mut datagrams) = udp_server(None).await;
        let (result, took) = bounded(probe_udp(server.addr, b"ping", TIMEOUT)).await;
        assert_timed_out(&result, took);
        assert_eq!(
            datagrams.recv().await.unwrap(),
            b"ping",
            "the server got it"
        );
    }

    #[tokio::test]
    async fn udp_port_unreachable_is_refused() {
        let addr = closed_port().await;
        let (result, took) = bounded(probe_udp(addr, b"ping", TIMEOUT)).await;
        assert_eq!(result, Err(ProbeFailure::Refused));
        assert!(took < TIMEOUT, "the ICMP error ends the check: {took:?}");
    }

    #[tokio::test]
    async fn tcp_success_and_refusal() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let open = listener.local_addr().unwrap();
        assert!(bounded(probe_tcp(open, TIMEOUT)).await.0.is_ok());
        drop(listener);
        let (result, _) = bounded(probe_tcp(open, TIMEOUT)).await;
        assert_eq!(result, Err(ProbeFailure::Refused));
    }

    #[tokio::test]
    async fn probe_dispatches_on_the_kind() {
        let (http, mut heads) = http_server(Answer::After(Duration::ZERO, OK_WITH_LONG_BODY)).await;
        let (udp, mut datagrams) = udp_server(Some(b"yes")).await;
        let closed = closed_port().await;

        assert!(
            bounded(probe(&check(HealthCheckKind::Tcp), http.addr))
                .await
                .0
                .is_ok()
        );
        assert!(
            bounded(probe(&check(HealthCheckKind::Http), http.addr))
                .await
                .0
                .is_ok()
        );
        // The TCP check's connection sent no request; the HTTP check's did.
        let head = heads.recv().await.unwrap();
        let head = if head.is_empty() {
            heads.recv().await.unwrap()
        } else {
            head
        };
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            bounded(probe(&check(HealthCheckKind::Udp), udp.addr))
                .await
                .0
                .is_ok()
        );
        assert_eq!(datagrams.recv().await.unwrap(), b"are you there?");
        let mut http_check = check(HealthCheckKind::Http);
        http_check.expect_status = 503;
        assert_eq!(
            bounded(probe(&http_check, http.addr)).await.0,
            Err(ProbeFailure::WrongStatus {
                got: 200,
                expected: 503
            })
        );
        assert_eq!(
            bounded(probe(&check(HealthCheckKind::None), closed))
                .await
                .0,
            Ok(Duration::ZERO),
            "kind none never touches the network"
        );
    }

    #[test]
    fn failure_labels_are_fixed_words() {
        let all = [
            (ProbeFailure::Refused, "refused", "connection refused"),
            (
                ProbeFailure::Timeout(Duration::from_millis(1500)),
                "timeout",
                "timeout after 1s 500ms",
            ),
            (
                ProbeFailure::WrongStatus {
                    got: 404,
                    expected: 200,
                },
                "wrong_status",
                "status 404, expected 200",
            ),
            (ProbeFailure::Reset, "reset", "connection reset"),
            (
                ProbeFailure::Closed,
                "closed",
                "connection closed before a response",
            ),
            (
                ProbeFailure::Malformed("invalid HTTP version parsed".into()),
                "malformed",
                "malformed response: invalid HTTP version parsed",
            ),
            (
                ProbeFailure::Other {
                    step: "bind",
                    message: "Address in use".into(),
                },
                "error",
                "bind failed: Address in use",
            ),
        ];
        for (failure, label, text) in all {
            assert_eq!(
                (failure.label(), failure.to_string().as_str()),
                (label, text)
            );
        }
    }

    #[test]
    fn local_shortages_are_not_the_backends_fault() {
        for (errno, word) in [
            (libc::EMFILE, "emfile"),
            (libc::ENFILE, "enfile"),
            (libc::ENOBUFS, "enobufs"),
            (libc::EADDRNOTAVAIL, "eaddrnotavail"),
        ] {
            let failure = ProbeFailure::io("connect", &io::Error::from_raw_os_error(errno));
            assert!(failure.is_local(), "{failure:?}");
            assert_eq!(failure.label(), "local");
            assert!(matches!(failure, ProbeFailure::Local { reason, .. } if reason == word));
            assert!(
                failure
                    .to_string()
                    .starts_with("local error, not a verdict on the backend: connect failed: ")
            );
        }
        let refused =
            ProbeFailure::io("connect", &io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(refused, ProbeFailure::Refused);
        assert!(!refused.is_local());
    }
}
