//! Traffic for the lab: the backends' HTTP server, wrk runs, and CPU-time
//! readings (the packet-rate generator is [`crate::livegen`]).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Body size of the HTTP server's answer.
pub const BODY_LEN: usize = 1024;

/// `lb-bench serve-http`: answers every GET with `BODY_LEN` bytes, keeping
/// the connection open unless the request says `Connection: close`. One
/// thread per connection; runs until killed.
///
/// # Errors
/// The port cannot be bound.
pub fn serve_http(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind :{port}"))?;
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve_conn(stream));
    }
    Ok(())
}

fn serve_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let body = vec![b'x'; BODY_LEN];
    let mut buf = vec![0u8; 8192];
    let mut have = 0;
    loop {
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return;
            }
            match stream.read(&mut buf[have..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let close = head.contains("connection: close");
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\nContent-Type: text/plain\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        reply.extend_from_slice(&body);
        if stream.write_all(&reply).is_err() || close {
            return;
        }
        buf.copy_within(end + 4..have, 0);
        have -= end + 4;
    }
}

/// One wrk run's results.
#[derive(Debug, Default, Clone)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers, as wrk reports them.
    pub errors: String,
}

fn ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = value.split_at(split);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => num / 1e3,
        "ms" => num,
        "s" => num * 1e3,
        "m" => num * 60e3,
        _ => return None,
    })
}

/// Parses wrk's output (run with `--latency`).
///
/// # Errors
/// A figure is missing.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut errors = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
        } else if words.len() >= 2 && words[0] == "50%" {
            r.p50_ms = ms(words[1]).context("p50")?;
        } else if words.len() >= 2 && words[0] == "99%" {
            r.p99_ms = ms(words[1]).context("p99")?;
        } else if words.len() >= 3 && words[1] == "requests" && words[2] == "in" {
            r.requests = words[0].parse().context("requests")?;
        } else if t.starts_with("Socket errors") || t.starts_with("Non-2xx") {
            errors.push(t.to_string());
        }
    }
    if r.rps == 0.0 || r.p50_ms == 0.0 {
        bail!("wrk printed no results:\n{text}");
    }
    r.errors = errors.join("; ");
    Ok(r)
}

/// Total CPU time (user + system) of process `pid` so far.
///
/// # Errors
/// /proc/PID/stat cannot be read or parsed.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses): utime is the
    // 14th field of the line, stime the 15th.
    let rest = text.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz.max(1)))
}

/// Softirq and busy (non-idle) time of all CPUs so far, from /proc/stat.
///
/// # Errors
/// /proc/stat cannot be read or parsed.
pub fn system_cpu() -> anyhow::Result<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    // SAFETY: plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let to = |t: u64| Duration::from_millis(t * 1000 / hz.max(1));
    let busy: u64 = f.iter().take(8).sum::<u64>() - f[3] - f[4];
    Ok((to(f[6]), to(busy)))
}
