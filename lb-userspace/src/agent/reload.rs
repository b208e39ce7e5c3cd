//! Reloads: coalescing triggers (file changes, SIGHUP), reading the
//! configuration off the event loop, and every rule of what cannot change
//! by reload.

use std::{path::PathBuf, time::Duration};

use tokio::{sync::mpsc, time};

use crate::config::{Config, Loaded};

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
