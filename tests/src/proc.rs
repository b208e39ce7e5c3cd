//! Processes a lab starts in its namespaces: output to a log file, ended by
//! pid (SIGTERM, then SIGKILL after 5 s) when dropped.

use std::{
    fs,
    path::Path,
    process::{Child, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::Netns;

/// A process started by a lab, ended by its pid on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `program ARGS` in `ns`, its output appended to `log`.
    ///
    /// # Errors
    /// The log cannot be opened or the process cannot be started.
    pub fn spawn(ns: &Netns, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = ns
            .command(&program.display().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { child })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// SIGKILL, then waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(5));
    }

    /// SIGTERM, up to `limit` to exit (a program whose normal stop takes
    /// longer than 5 s), then SIGKILL.
    pub fn stop_within(&mut self, limit: Duration) {
        if self.exited() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let exited = crate::wait_until(limit, Duration::from_millis(20), || {
            self.exited().then_some(())
        });
        if exited.is_none() {
            self.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
