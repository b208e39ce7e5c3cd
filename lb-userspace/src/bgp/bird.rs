//! The BIRD process: started by the agent in a session of its own (`setsid`:
//! a signal to the agent's process group, or the agent's death, does not
//! reach it), found again by its pid file, stopped by its pid.

use std::{
    io::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use super::{birdc::birdc, paths::BirdPaths};

/// Longest a new BIRD may take to answer on its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a BIRD may take to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running BIRD, started or adopted by this agent.
#[derive(Debug)]
pub struct Bird {
    /// Its pid.
    pub pid: u32,
    /// The process, when this agent started it (else it was adopted).
    child: Option<Child>,
    /// When this agent started or adopted it.
    pub since: Instant,
}

/// Writes `text` to `path` through a temporary file and a rename, so BIRD
/// never reads half a configuration.
///
/// # Errors
/// The directory or the file cannot be written.
pub fn write_config(paths: &BirdPaths, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(paths.dir())?;
    let tmp = paths.dir().join("bird.conf.new");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, paths.config())
}

/// Whether process `pid` runs (not a zombie) and is a `bird`.
fn is_bird(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    head.ends_with("(bird") && !tail.trim_start().starts_with(['Z', 'X'])
}

impl Bird {
    /// The BIRD an earlier agent left running for these files, if its pid
    /// file names a live `bird` that answers on the socket.
    pub async fn find(paths: &BirdPaths) -> Option<Self> {
        let pid: u32 = std::fs::read_to_string(paths.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !is_bird(pid) {
            return None;
        }
        birdc(&paths.socket(), &["show", "status"]).await.ok()?;
        Some(Self {
            pid,
            child: None,
            since: Instant::now(),
        })
    }

    /// Starts `bird -f -c CONFIG -s SOCKET -P PIDFILE` in a new session,
    /// its output to the log file (truncated), and waits until it answers.
    ///
    /// # Errors
    /// BIRD cannot be started, exits (a configuration error: its log's
    /// last lines), or does not answer within [`START_TIMEOUT`].
    pub async fn start(paths: &BirdPaths) -> Result<Self, String> {
        std::fs::create_dir_all(paths.dir())
            .map_err(|e| format!("create {}: {e}", paths.dir().display()))?;
        for stale in [paths.socket(), paths.pid_file()] {
            let _ = std::fs::remove_file(stale);
        }
        let log = std::fs::File::create(paths.log())
            .map_err(|e| format!("create {}: {e}", paths.log().display()))?;
        let stdout = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(super::birdc::program("bird"));
        cmd.arg("-f")
            .arg("-c")
            .arg(paths.config())
            .arg("-s")
            .arg(paths.socket())
            .arg("-P")
            .arg(paths.pid_file())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe and touches no memory of the
        // parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot start bird: {e} (install Debian's bird2; `cargo xtask setup` does)")
        })?;
        let pid = child.id().ok_or("bird exited at once")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "bird exited at start ({status}): {}",
                    log_tail(&paths.log())
                ));
            }
            if birdc(&paths.socket(), &["show", "status"]).await.is_ok() {
                return Ok(Self {
                    pid,
                    child: Some(child),
                    since: Instant::now(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!(
                    "bird did not answer on {} within {START_TIMEOUT:?}",
                    paths.socket().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether this agent started it (else adopted it).
    pub fn adopted(&self) -> bool {
        self.child.is_none()
    }

    /// `None` while it runs; why it is gone once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            None => (!is_bird(self.pid)).then(|| "no longer running".to_string()),
        }
    }

    /// Stops it by its pid: SIGTERM (BIRD closes its sessions with a Cease
    /// notification, RFC 4486), then SIGKILL after [`STOP_TIMEOUT`]. Returns
    /// how it ended.
    pub async fn stop(mut self) -> String {
        let pid = self.pid as libc::pid_t;
        if self.exited().is_some() {
            return "already exited".into();
        }
        // SAFETY: signalling the BIRD this agent started or adopted.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return "stopped".into();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(child) = &mut self.child {
            let _ = child.wait().await;
        }
        format!("killed (no exit within {STOP_TIMEOUT:?} of SIGTERM)")
    }
}

/// The last lines of BIRD's log, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
