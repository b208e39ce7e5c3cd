//! Reloads: coalescing triggers (file changes, SIGHUP), reading the
//! configuration off the event loop, and every rule of what cannot change
//! by reload.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use log::{error, info, warn};
use tokio::{sync::mpsc, time};

use super::{Agent, AgentError, encap_source};
use crate::{
    balancer::{BalancerError, Changes},
    bgp::BgpError,
    config::{Config, Loaded},
    health::{CheckResult, Checkers},
};

/// Why a reload was refused: the running configuration stays in force, and
/// `/status` shows the reason.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read in time, or its configuration is invalid
    /// (every error, with its key).
    #[error("{0}")]
    Read(String),
    /// The configuration has no VIP while VIPs run, without `allow_empty`.
    #[error(
        "the configuration has no VIP and would remove the {running} VIPs of the running data plane: refused (set allow_empty = true if that is meant)"
    )]
    Empty {
        /// VIPs running.
        running: usize,
    },
    /// A setting that sizes the maps or the API changed
    /// ([`immutable_change`]'s message).
    #[error("{0}")]
    Immutable(String),
    /// No outer source address can be chosen for the new configuration.
    #[error(transparent)]
    Source(Box<AgentError>),
    /// BIRD refuses what the new `[bgp]` gives it.
    #[error(transparent)]
    Bgp(#[from] BgpError),
    /// The data plane cannot take the difference (capacity, a map write).
    #[error(transparent)]
    Balancer(#[from] BalancerError),
}

/// Quiet time after a change of the configuration file or a SIGHUP before
/// the file is read: several quick writes or signals give one reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a burst of changes or signals may delay a reload.
pub const RELOAD_MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest the configuration file may take to read and validate; past it
/// the reload is refused (the read goes on in a blocking thread, never in
/// the event loop).
pub const RELOAD_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Coalesces reload triggers: a reload is due [`RELOAD_DEBOUNCE`] after the
/// last trigger, and at most [`RELOAD_MAX_DELAY`] after the first.
#[derive(Debug, Default)]
pub struct Debounce {
    first: Option<time::Instant>,
    last: Option<time::Instant>,
    reasons: Vec<&'static str>,
}

impl Debounce {
    /// Records a trigger.
    pub fn trigger(&mut self, why: &'static str) {
        let now = time::Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        if !self.reasons.contains(&why) {
            self.reasons.push(why);
        }
    }

    /// When the pending reload is due, if one is.
    pub fn due(&self) -> Option<time::Instant> {
        Some((self.last? + RELOAD_DEBOUNCE).min(self.first? + RELOAD_MAX_DELAY))
    }

    /// Takes the pending reload's reasons (`SIGHUP`, `file changed`).
    pub fn take(&mut self) -> String {
        self.first = None;
        self.last = None;
        std::mem::take(&mut self.reasons).join(", ")
    }
}

/// A configuration read (off the event loop) for a reload.
pub type ReadConfig = (String, Result<Loaded, String>);

/// Reads and validates `path` in a blocking thread, within
/// [`RELOAD_READ_TIMEOUT`], and sends the result with `why` on `done`.
pub fn read_config(path: PathBuf, why: String, done: mpsc::Sender<ReadConfig>) {
    tokio::spawn(async move {
        let shown = path.display().to_string();
        let read = tokio::task::spawn_blocking(move || Config::load(&path));
        let result = match time::timeout(RELOAD_READ_TIMEOUT, read).await {
            Ok(Ok(loaded)) => loaded.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("reading {shown}: {e}")),
            Err(_) => Err(format!(
                "reading {shown} took longer than {}",
                humantime::format_duration(RELOAD_READ_TIMEOUT)
            )),
        };
        let _ = done.send((why, result)).await;
    });
}

/// Why `new` cannot replace `old` by reload: the first setting that sizes
/// the maps or the API and changed, with its old and new value; `None`
/// when every such setting is the same. `iface` is the interface the agent
/// runs on; `iface_from_cli` whether `--iface` chose it (then `interface`
/// in the file does not matter).
pub fn immutable_change(
    old: &Config,
    new: &Config,
    iface: &str,
    iface_from_cli: bool,
) -> Option<String> {
    let immutable = [
        (
            "interface",
            new.interface.is_some() && new.interface.as_deref() != Some(iface) && !iface_from_cli,
            format!("{:?} -> {:?}", old.interface, new.interface),
        ),
        (
            "xdp_mode",
            new.xdp_mode != old.xdp_mode,
            format!("{:?} -> {:?}", old.xdp_mode, new.xdp_mode),
        ),
        (
            "conntrack.max_entries",
            new.conntrack_entries != old.conntrack_entries,
            format!("{} -> {}", old.conntrack_entries, new.conntrack_entries),
        ),
        (
            "the NAT table's size (nat.max_entries, or a first NAT VIP: the table is preallocated when the data plane starts)",
            new.sizing.nat_entries != old.sizing.nat_entries,
            format!(
                "{} -> {} translations",
                old.sizing.nat_entries / 2,
                new.sizing.nat_entries / 2
            ),
        ),
        (
            "api.listen",
            new.api_listen != old.api_listen,
            format!("{} -> {}", old.api_listen, new.api_listen),
        ),
        (
            "api.max_connections",
            new.api_max_connections != old.api_max_connections,
            format!("{} -> {}", old.api_max_connections, new.api_max_connections),
        ),
        (
            "maglev.max_vips",
            new.sizing.max_vips != old.sizing.max_vips,
            format!("{} -> {}", old.sizing.max_vips, new.sizing.max_vips),
        ),
        (
            "maglev.table_size",
            new.table_size != old.table_size,
            format!("{} -> {}", old.table_size, new.table_size),
        ),
    ];
    immutable
        .into_iter()
        .find(|(_, changed, _)| *changed)
        .map(|(key, _, change)| {
            format!("{key} cannot change by reload ({change}): restart the agent")
        })
}

impl Agent {
    /// Applies a configuration read for a reload, as a difference; a
    /// configuration with any error is rejected whole and nothing changes.
    pub(super) async fn reload(
        &mut self,
        why: &str,
        loaded: Result<Loaded, String>,
        checkers: &mut Checkers,
        events: &mpsc::Sender<CheckResult>,
    ) {
        let path = self.options.config_path.clone();
        let (vips_before, backends_before) = (
            self.plane.balancer.vips().len(),
            self.plane
                .balancer
                .vips()
                .iter()
                .map(|v| v.backends.len())
                .sum::<usize>(),
        );
        let result = match loaded {
            Ok(loaded) => self.try_reload(&path, loaded).await,
            Err(e) => Err(ReloadError::Read(e)),
        };
        match result {
            Ok(None) => {
                self.shared.record_reload(Ok(()));
                info!(
                    "configuration reloaded ({why}): {} unchanged",
                    path.display()
                );
            }
            Ok(Some(changes)) => {
                self.shared.record_reload(Ok(()));
                self.shared.set_vips(self.plane.balancer.vips());
                self.announce();
                let (started, stopped) = checkers.sync(self.health_targets(), events);
                info!(
                    "configuration reloaded ({why}) from {}: {changes}; health checkers +{started} -{stopped}",
                    path.display()
                );
                if changes.vips_removed * 2 > vips_before
                    || changes.backends_removed * 2 > backends_before
                {
                    warn!(
                        "this reload removed more than half of the data plane: {} of {vips_before} VIPs and {} of {backends_before} backends",
                        changes.vips_removed, changes.backends_removed
                    );
                }
            }
            Err(e) => {
                self.shared.record_reload(Err(e.to_string()));
                // A map write that failed part way leaves what was written:
                // the API shows the balancer's state as it is, and the
                // health checkers follow it (a backend id given to another
                // backend on the way gets a checker of its own, not the old
                // backend's results).
                self.shared.set_vips(self.plane.balancer.vips());
                let (started, stopped) = checkers.sync(self.health_targets(), events);
                error!(
                    "configuration rejected ({why}), the running one stays in force: {e}; health checkers +{started} -{stopped}"
                );
            }
        }
    }

    pub(super) async fn try_reload(
        &mut self,
        path: &Path,
        loaded: Loaded,
    ) -> Result<Option<Changes>, ReloadError> {
        for warning in &loaded.warnings {
            warn!("{}: warning: {warning}", path.display());
        }
        let new = loaded.config;
        if new == self.config {
            return Ok(None);
        }
        let running = self.plane.balancer.vips().len();
        if new.vips.is_empty() && !new.allow_empty && running > 0 {
            return Err(ReloadError::Empty { running });
        }
        if let Some(change) = immutable_change(
            &self.config,
            &new,
            &self.iface,
            self.options.iface.is_some(),
        ) {
            return Err(ReloadError::Immutable(change));
        }
        let source =
            encap_source(&new, &self.iface).map_err(|e| ReloadError::Source(Box::new(e)))?;
        // Checked before anything changes: BIRD refusing it rejects the
        // whole configuration.
        crate::bgp::check(&new, source.v4, &self.iface).await?;
        let changes = self.plane.balancer.apply(&new, source)?;
        if new.uses_ipv6() && !self.config.uses_ipv6() {
            super::ipv6_forwarding_if_needed(&new, &self.iface);
        }
        self.shared.set_snat_capacity(&source.nat);
        self.config = new;
        self.source = source;
        Ok(Some(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debounce_coalesces_a_burst_and_bounds_the_delay() {
        let mut d = Debounce::default();
        assert_eq!(d.due(), None, "nothing pending");
        let start = time::Instant::now();
        d.trigger("SIGHUP");
        assert_eq!(d.due(), Some(start + RELOAD_DEBOUNCE));
        // A trigger every 100 ms for 5 s: one reload due, 2 s after the first.
        for _ in 0..50 {
            time::advance(Duration::from_millis(100)).await;
            d.trigger("SIGHUP");
            d.trigger("file changed");
        }
        assert_eq!(d.due(), Some(start + RELOAD_MAX_DELAY));
        assert_eq!(d.take(), "SIGHUP, file changed");
        assert_eq!(d.due(), None);
    }

    #[test]
    fn settings_that_size_the_maps_cannot_change_by_reload() {
        let old = Config::parse("interface = \"eth0\"\n", "t")
            .expect("valid")
            .config;
        assert_eq!(immutable_change(&old, &old, "eth0", false), None);
        let new = Config::parse("interface = \"eth0\"\n[maglev]\nmax_vips = 10\n", "t")
            .expect("valid")
            .config;
        assert_eq!(
            immutable_change(&old, &new, "eth0", false).as_deref(),
            Some("maglev.max_vips cannot change by reload (495 -> 10): restart the agent")
        );
        let other = Config::parse("interface = \"eth1\"\n", "t")
            .expect("valid")
            .config;
        assert!(immutable_change(&old, &other, "eth0", false).is_some());
        assert_eq!(
            immutable_change(&old, &other, "eth0", true),
            None,
            "--iface wins"
        );
    }
}
