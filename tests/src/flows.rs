//! Long-lived TCP connections through the lab's `echo` VIP: each greets with
//! its backend's name, then exchanges a line every 100 ms on its own thread,
//! recording the first failure (error, wrong reply, close, or a reply later
//! than [`STALL`]). Tests use them to show that flows survive a change.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::lab::{ECHO_PORT, VIP};

/// Time between two exchanges of one connection.
pub const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
/// A reply later than this is a stall, and fails the connection.
pub const STALL: Duration = Duration::from_secs(1);
/// Longest a connection thread runs.
const LIFETIME: Duration = Duration::from_secs(600);

/// The echo VIP's address.
pub fn echo_addr() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("VIP"), ECHO_PORT)
}

/// Connects to the echo VIP (from the calling thread's namespace) and reads
/// the greeting: the backend's name.
///
/// # Errors
/// The connection or the greeting fails, as text.
pub fn connect() -> Result<(BufReader<TcpStream>, String), String> {
    connect_to(echo_addr())
}

/// [`connect`] to another VIP of the echo servers (a NAT VIP in front of
/// them).
///
/// # Errors
/// The connection or the greeting fails, as text.
pub fn connect_to(addr: SocketAddr) -> Result<(BufReader<TcpStream>, String), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(STALL))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .map_err(|e| format!("greeting: {e}"))?;
    Ok((reader, greeting.trim().to_string()))
}

/// Opens `n` short connections; returns how many each backend took and
/// how many failed.
pub fn spread(n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut per_backend = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match connect() {
            Ok((_, name)) => *per_backend.entry(name).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    (per_backend, failed)
}

/// One long-lived connection, driven by its own thread.
#[derive(Debug)]
pub struct Conn {
    /// The backend that greeted it.
    pub backend: String,
    /// Its local (client) address.
    pub local: SocketAddr,
    failure: Mutex<Option<String>>,
    exchanges: AtomicU64,
}

impl Conn {
    /// Its first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("lock").clone()
    }

    /// Exchanges completed.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }
}

fn drive(conn: &Conn, mut reader: BufReader<TcpStream>, id: usize, stop: &AtomicBool) {
    let fail = |why: String| *conn.failure.lock().expect("lock") = Some(why);
    let mut seq = 0u64;
    let deadline = Instant::now() + LIFETIME;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        seq += 1;
        let line = format!("{id} {seq}\n");
        let sent = Instant::now();
        if let Err(e) = reader.get_mut().write_all(line.as_bytes()) {
            return fail(format!("send #{seq}: {e}"));
        }
        let mut reply = String::new();
        match reader.read_line(&mut reply) {
            Ok(0) => return fail(format!("closed by peer at #{seq}")),
            Ok(_) if reply != line => return fail(format!("reply {reply:?} to {line:?}")),
            Ok(_) => {}
            Err(e) => return fail(format!("receive #{seq}: {e}")),
        }
        if sent.elapsed() > STALL {
            return fail(format!("stalled {:?} at #{seq}", sent.elapsed()));
        }
        conn.exchanges.fetch_add(1, Ordering::Relaxed);
        thread::sleep(EXCHANGE_EVERY.saturating_sub(sent.elapsed()));
    }
}

/// A set of long-lived connections; dropping it stops and joins them.
#[derive(Debug)]
pub struct LongLived {
    /// The connections.
    pub conns: Vec<Arc<Conn>>,
    threads: Vec<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl LongLived {
    /// Opens `n` connections to the echo VIP (from the calling thread's
    /// namespace) and starts their exchanges.
    ///
    /// # Errors
    /// A connection cannot be opened.
    pub fn open(n: usize) -> Result<Self, String> {
        Self::open_to(echo_addr(), n)
    }

    /// [`LongLived::open`] to `addr`, another VIP of the echo servers.
    ///
    /// # Errors
    /// A connection cannot be opened.
    pub fn open_to(addr: SocketAddr, n: usize) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = Self {
            conns: Vec::new(),
            threads: Vec::new(),
            stop,
        };
        for id in 0..n {
            let (reader, backend) = connect_to(addr)?;
            let local = reader.get_ref().local_addr().map_err(|e| e.to_string())?;
            let conn = Arc::new(Conn {
                backend,
                local,
                failure: Mutex::new(None),
                exchanges: AtomicU64::new(0),
            });
            let (c, s) = (conn.clone(), set.stop.clone());
            set.threads
                .push(thread::spawn(move || drive(&c, reader, id, &s)));
            set.conns.push(conn);
        }
        Ok(set)
    }

    /// Connections without a failure so far.
    pub fn survivors(&self) -> usize {
        self.conns.iter().filter(|c| c.failure().is_none()).count()
    }

    /// Exchanges completed by all connections.
    pub fn exchanges(&self) -> u64 {
        self.conns.iter().map(|c| c.exchanges()).sum()
    }

    /// Every failure so far.
    pub fn failures(&self) -> Vec<String> {
        self.conns.iter().filter_map(|c| c.failure()).collect()
    }

    /// Connections per greeting backend.
    pub fn per_backend(&self) -> BTreeMap<&str, usize> {
        let mut on = BTreeMap::new();
        for c in &self.conns {
            *on.entry(c.backend.as_str()).or_default() += 1;
        }
        on
    }

    /// Stops the exchanges and waits for the threads.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.finish();
    }
}
