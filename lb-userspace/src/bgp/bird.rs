//! The BIRD process: started by the agent in a session of its own (`setsid`:
//! a signal to the agent's process group, or the agent's death, does not
//! reach it), found again by its pid file, stopped by its pid; and
//! `bird -p`, which checks a configuration before the agent takes it.
//!
//! A pid names our BIRD only while that process is alive (not a zombie),
//! is a `bird`, and was started with our control socket (`-s SOCKET` in
//! `/proc/PID/cmdline`): another BIRD (another node's in a test lab,
//! Debian's `bird.service`) that reuses the pid is never adopted nor
//! signalled.

use std::{
    fs::{DirBuilder, OpenOptions, Permissions},
    io::Write as _,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use super::{birdc::birdc, paths::BirdPaths};

/// Longest a new BIRD may take to answer on its control socket, and an
/// adopted one before it is stopped as unresponsive.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a BIRD may take to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `bird -p` (parse a configuration and exit) may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a process may take to be gone after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// A running BIRD, started or adopted by this agent.
#[derive(Debug)]
pub struct Bird {
    /// Its pid.
    pub pid: u32,
    /// The process, when this agent started it (else it was adopted).
    child: Option<Child>,
    /// Its files (its control socket identifies it).
    paths: BirdPaths,
    /// When this agent started or adopted it.
    pub since: Instant,
}

/// The BIRD an earlier agent left, as [`Bird::find`] found it.
#[derive(Debug)]
pub enum Found {
    /// It answers on its control socket: adopt it.
    Answering(Bird),
    /// It runs but did not answer within [`START_TIMEOUT`]: stop it before
    /// starting another (two BIRDs would both announce).
    Silent(Bird),
}

/// Creates BIRD's directory (mode 0700: its configuration and control
/// socket are the agent's alone), or makes an existing one 0700.
///
/// # Errors
/// The directory cannot be created or its mode set.
pub fn make_dir(paths: &BirdPaths) -> std::io::Result<()> {
    let dir = paths.dir();
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// Writes `text` to `path` (mode 0600), replacing it.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Writes `text` to `path` through a temporary file and a rename, so BIRD
/// never reads half a configuration.
///
/// # Errors
/// The directory or the file cannot be written.
pub fn write_config(paths: &BirdPaths, text: &str) -> std::io::Result<()> {
    make_dir(paths)?;
    let tmp = paths.dir().join("bird.conf.new");
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, paths.config())
}

/// Checks that BIRD accepts the configuration `text`: writes it beside the
/// running one (`bird.conf.check`) and runs `bird -p -c FILE` (parse only;
/// nothing starts), at most [`CHECK_TIMEOUT`].
///
/// # Errors
/// BIRD's message (`FILE:LINE:COLUMN reason`) when it refuses the text; the
/// file cannot be written; `bird` cannot be run or takes too long.
pub async fn check_config(paths: &BirdPaths, text: &str) -> Result<(), String> {
    let file = paths.dir().join("bird.conf.check");
    make_dir(paths)
        .and_then(|()| write_private(&file, text))
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    let run = Command::new(super::birdc::program("bird"))
        .arg("-p")
        .arg("-c")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let result = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Err(_) => Err(format!("bird -p took more than {CHECK_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!(
            "cannot run bird: {e} (install Debian's bird2; `cargo xtask setup` does)"
        )),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut why = String::from_utf8_lossy(&out.stderr).into_owned();
            why.push_str(&String::from_utf8_lossy(&out.stdout));
            let why = why.trim().trim_start_matches("bird: ").replace('\n', "; ");
            Err(if why.is_empty() {
                format!("bird -p exited with {}", out.status)
            } else {
                why
            })
        }
    };
    let _ = std::fs::remove_file(&file);
    result
}

/// Whether process `pid` is alive (not a zombie), is a `bird`, and was
/// started with the control socket of `paths` (`-s SOCKET`).
pub fn is_ours(pid: u32, paths: &BirdPaths) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    if !head.ends_with("(bird") || tail.trim_start().starts_with(['Z', 'X']) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let socket = paths.socket();
    let socket = socket.as_os_str().as_bytes();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|w| w[0] == b"-s" && w[1] == socket)
}

/// Whether something accepts connections on the control socket `path`.
async fn socket_in_use(path: &Path) -> bool {
    // A listener that does not accept still completes connects (its
    // backlog); a connect that hangs counts as in use.
    !matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::UnixStream::connect(path)
        )
        .await,
        Ok(Err(_))
    )
}

impl Bird {
    /// The BIRD an earlier agent left running for these files, if its pid
    /// file names a live process that is ours ([`is_ours`]); answering if
    /// it answers on its socket within [`START_TIMEOUT`].
    pub async fn find(paths: &BirdPaths) -> Option<Found> {
        let pid: u32 = std::fs::read_to_string(paths.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !is_ours(pid, paths) {
            return None;
        }
        let bird = Self {
            pid,
            child: None,
            paths: paths.clone(),
            since: Instant::now(),
        };
        let socket = paths.socket();
        let answered = tokio::time::timeout(START_TIMEOUT, async {
            while birdc(&socket, &["show", "status"]).await.is_err() {
                if !is_ours(pid, paths) {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            true
        })
        .await;
        match answered {
            Ok(true) => Some(Found::Answering(bird)),
            // It exited meanwhile.
            Ok(false) => None,
            Err(_) => Some(Found::Silent(bird)),
        }
    }

    /// Starts `bird -f -c CONFIG -s SOCKET -P PIDFILE` in a new session
    /// (umask 077), its output to the log file (truncated), and waits until
    /// it answers.
    ///
    /// # Errors
    /// Something still accepts connections on the control socket (a BIRD
    /// the pid file does not name: it is left alone); BIRD cannot be
    /// started, exits (a configuration error: its log's last lines), or
    /// does not answer within [`START_TIMEOUT`].
    pub async fn start(paths: &BirdPaths) -> Result<Self, String> {
        make_dir(paths).map_err(|e| format!("create {}: {e}", paths.dir().display()))?;
        if socket_in_use(&paths.socket()).await {
            return Err(format!(
                "{} still accepts connections, but {} names no BIRD of this agent's running: stop that BIRD (another one would announce beside it)",
                paths.socket().display(),
                paths.pid_file().display()
            ));
        }
        for stale in [paths.socket(), paths.pid_file()] {
            let _ = std::fs::remove_file(stale);
        }
        let log = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(paths.log())
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
        // SAFETY: setsid and umask are async-signal-safe and touch no
        // memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The socket and pid file BIRD creates: the agent's alone.
                libc::umask(0o077);
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
                    paths: paths.clone(),
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

    /// `None` while it runs; why it is gone once it has exited (an adopted
    /// one: once its pid is no longer our BIRD, [`is_ours`]).
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            None => (!is_ours(self.pid, &self.paths)).then(|| "no longer running".to_string()),
        }
    }

    /// Sends `signal` while the pid is still this BIRD (a child not yet
    /// waited for keeps its pid; an adopted one is checked first).
    fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: signalling the BIRD this agent started or adopted,
            // checked just before to be it.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }

    /// Waits at most `limit` for it to exit; whether it did.
    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.exited().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it by its pid: SIGTERM (BIRD closes its sessions with a Cease
    /// notification, RFC 4486), then SIGKILL after [`STOP_TIMEOUT`]. Never
    /// signals a process that is not this BIRD. Returns how it ended.
    pub async fn stop(mut self) -> String {
        if self.exited().is_some() {
            return "already exited".into();
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(STOP_TIMEOUT).await {
            return "stopped".into();
        }
        self.signal(libc::SIGKILL);
        if let Some(child) = &mut self.child {
            let _ = child.wait().await;
        } else if !self.wait_exit(KILL_TIMEOUT).await {
            return format!("still running {KILL_TIMEOUT:?} after SIGKILL");
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

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::PathBuf};

    use super::*;
    use crate::{
        bgp::conf::{Settings, render},
        config::{BgpConfig, BgpPeer},
    };

    const CONFIG: &str = "router id 192.0.2.1;\nprotocol device lb_device { }\n";

    /// BIRD files in a directory of the temporary directory; its BIRDs
    /// (by pid, if still ours) are killed and the directory removed on
    /// drop.
    struct Scratch {
        paths: BirdPaths,
        pids: Vec<u32>,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir: PathBuf =
                std::env::temp_dir().join(format!("lb-bird-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let paths = BirdPaths { dir };
            write_config(&paths, CONFIG).expect("config written");
            Self {
                paths,
                pids: Vec::new(),
            }
        }

        async fn start(&mut self) -> Bird {
            let bird = Bird::start(&self.paths).await.expect("bird starts");
            self.pids.push(bird.pid);
            bird
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for &pid in &self.pids {
                if is_ours(pid, &self.paths) {
                    // SAFETY: a BIRD this test started, checked to be it.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_dir_all(self.paths.dir());
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn our_bird_is_told_apart_from_other_processes_and_birds() {
        let mut a = Scratch::new("a");
        let mut b = Scratch::new("b");
        let bird_a = a.start().await;
        let bird_b = b.start().await;
        assert!(is_ours(bird_a.pid, &a.paths));
        assert!(!is_ours(bird_a.pid, &b.paths), "another BIRD's pid");
        assert!(!is_ours(std::process::id(), &a.paths), "not a bird");
        assert_eq!(mode(a.paths.dir()), 0o700);
        assert_eq!(mode(&a.paths.config()), 0o600);
        assert_eq!(mode(&a.paths.log()), 0o600);
        assert_eq!(mode(&a.paths.pid_file()) & 0o077, 0);
        match Bird::find(&a.paths).await {
            Some(Found::Answering(found)) => assert_eq!(found.pid, bird_a.pid),
            other => panic!("a's BIRD not adopted: {other:?}"),
        }
        // A pid file naming another BIRD (a reused pid): not ours, and the
        // socket that still answers is not taken over.
        std::fs::write(a.paths.pid_file(), format!("{}\n", bird_b.pid)).expect("pid file");
        assert!(Bird::find(&a.paths).await.is_none());
        let refused = Bird::start(&a.paths)
            .await
            .expect_err("a second BIRD on a's socket");
        assert!(refused.contains("still accepts connections"), "{refused}");
        assert!(is_ours(bird_a.pid, &a.paths), "a's BIRD untouched");
        let pid_a = bird_a.pid;
        assert_eq!(bird_a.stop().await, "stopped");
        assert!(!is_ours(pid_a, &a.paths));
        assert!(is_ours(bird_b.pid, &b.paths), "b's BIRD untouched");
        assert_eq!(bird_b.stop().await, "stopped");
    }

    #[tokio::test]
    async fn a_bird_that_does_not_answer_is_stopped_before_another_starts() {
        let mut s = Scratch::new("silent");
        // Kept (not waited for): once killed it stays a zombie, which
        // counts as dead.
        let first = s.start().await;
        // SAFETY: the BIRD this test just started.
        unsafe { libc::kill(first.pid as libc::pid_t, libc::SIGSTOP) };
        let silent = match Bird::find(&s.paths).await {
            Some(Found::Silent(bird)) => bird,
            other => panic!("a stopped BIRD found as {other:?}"),
        };
        assert!(silent.adopted());
        let how = silent.stop().await;
        assert!(how.starts_with("killed"), "{how}");
        assert!(!is_ours(first.pid, &s.paths), "a zombie is not running");
        let second = s.start().await;
        assert_ne!(second.pid, first.pid);
        assert!(matches!(
            Bird::find(&s.paths).await,
            Some(Found::Answering(b)) if b.pid == second.pid
        ));
        assert_eq!(second.stop().await, "stopped");
        drop(first);
    }

    #[tokio::test]
    async fn bird_checks_a_configuration_before_the_agent_takes_it() {
        let s = Scratch::new("check");
        let peer = |address: &str, remote_as| BgpPeer {
            address: address.parse().expect("address"),
            remote_as,
            port: 179,
        };
        let mut settings = Settings {
            bgp: BgpConfig {
                local_as: 65001,
                router_id: None,
                hold_time: Duration::from_secs(9),
                withdraw_delay: Duration::from_secs(2),
                peers: vec![peer("10.77.0.1", 65000), peer("fd00::1", 65002)],
            },
            router_id: "10.77.0.2".parse().expect("id"),
        };
        let addresses: Vec<IpAddr> = ["10.1.0.1", "fd00:1::1"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        check_config(&s.paths, &render(&settings, &addresses, "eth0"))
            .await
            .expect("BIRD takes a mixed-family configuration");
        // Not a configuration validation lets through (it refuses
        // link-local peers too): BIRD's own refusal, with its message.
        settings.bgp.peers.push(peer("fe80::1", 65003));
        let refused = check_config(&s.paths, &render(&settings, &addresses, "eth0"))
            .await
            .expect_err("BIRD refuses a link-local peer without an interface");
        assert!(
            refused.contains("Link-local addresses require defined interface"),
            "{refused}"
        );
        assert!(!s.paths.dir().join("bird.conf.check").exists());
        assert_eq!(
            std::fs::read_to_string(s.paths.config()).expect("config"),
            CONFIG,
            "the running configuration is untouched"
        );
    }
}
