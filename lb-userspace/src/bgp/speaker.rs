//! The speaker task: keeps BIRD running with the configuration the
//! announcement rule asks for, reads back its sessions and routes for the
//! API, and carries out the agent's stop (withdraw, or leave as is).
//!
//! - Start: a BIRD left by an earlier agent of this namespace and
//!   interface is adopted (the configuration written again, `birdc
//!   configure`: the same routes, so no withdraw-announce flap); else one is
//!   started.
//! - Every change of the wanted configuration (health, reload): written and
//!   applied with `birdc configure`, which keeps sessions up.
//! - Every second: BIRD restarted if it died (backing off to 30 s), its
//!   sessions and routes read; session state changes logged once.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{error, info, warn};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    bird::{Bird, Found, write_config},
    birdc::birdc,
    conf::{self, Settings, protocol_name},
    parse,
    paths::BirdPaths,
    rule::{Decision, announced},
    status::{AddressStatus, BgpStatus, PeerStatus},
};

/// Time between two looks at BIRD (alive, sessions, routes).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait before starting a BIRD that died again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the agent wants announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// `[bgp]` and the router id; `None`: no BGP (a BIRD left running is
    /// stopped).
    pub settings: Option<Settings>,
    /// The rule's decision for every VIP address.
    pub decisions: Vec<Decision>,
}

enum Command {
    /// Withdraw every announcement (sessions stay up); answer when BIRD
    /// has taken the configuration.
    Withdraw(oneshot::Sender<Result<usize, String>>),
    /// Stop BIRD and end.
    Stop(oneshot::Sender<String>),
    /// End, leaving BIRD as it is.
    Leave(oneshot::Sender<()>),
}

/// The agent's handle on the speaker task.
pub struct Speaker {
    wanted: watch::Sender<Wanted>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// Set by [`Speaker::withdraw`]: the end of `bgp.withdraw_delay`.
    forward_until: Option<tokio::time::Instant>,
}

impl Speaker {
    /// Starts the task for the agent of `iface`, with `wanted` first; the
    /// task publishes the announcement's state on `status` after each look
    /// at BIRD (`None`: no `[bgp]`), which the API reads.
    pub fn start(iface: &str, wanted: Wanted, status: watch::Sender<Option<BgpStatus>>) -> Self {
        let (wanted_tx, wanted_rx) = watch::channel(wanted);
        let (commands, commands_rx) = mpsc::channel(4);
        let task = Task {
            paths: BirdPaths::of(iface),
            iface: iface.to_string(),
            published: status,
            bird: None,
            applied: None,
            withdrawn: false,
            status: BgpStatus {
                speaker: "starting".into(),
                ..BgpStatus::default()
            },
            peer_states: HashMap::new(),
            backoff: Duration::from_secs(1),
            next_start: Instant::now(),
        };
        Self {
            wanted: wanted_tx,
            commands,
            task: tokio::spawn(task.run(wanted_rx, commands_rx)),
            forward_until: None,
        }
    }

    /// Asks for `wanted`; a no-op when nothing changed.
    pub fn set(&self, wanted: Wanted) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }

    /// The first step of the agent's stop without `--keep-attached`
    ///, taken as soon as the signal arrives: withdraws every
    /// announcement (sessions stay up) and starts the `bgp.withdraw_delay`
    /// during which the data plane keeps forwarding while the routers move
    /// flows away. Does nothing without `[bgp]` or when done already.
    pub async fn withdraw(&mut self) {
        if self.forward_until.is_some() {
            return;
        }
        let Some(delay) = self
            .wanted
            .borrow()
            .settings
            .as_ref()
            .map(|s| s.bgp.withdraw_delay)
        else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let withdrawn = match self.commands.send(Command::Withdraw(tx)).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("speaker task ended".into())),
            Err(_) => Err("speaker task ended".into()),
        };
        self.forward_until = Some(tokio::time::Instant::now() + delay);
        match withdrawn {
            Ok(n) => info!(
                "withdrew every VIP address ({n} were announced); forwarding for {} (bgp.withdraw_delay) before detaching",
                humantime::format_duration(delay)
            ),
            Err(e) => warn!(
                "withdrawing the VIP addresses failed ({e}); stopping BIRD after {} closes the sessions instead",
                humantime::format_duration(delay)
            ),
        }
    }

    /// The agent's stop. With `keep_attached`, BIRD and its announcements
    /// stay as they are (the next agent adopts them). Otherwise every
    /// announcement is withdrawn ([`Speaker::withdraw`], if not done
    /// already), the data plane keeps forwarding until `bgp.withdraw_delay`
    /// after the withdraw, then BIRD is stopped (its sessions close).
    pub async fn shutdown(mut self, keep_attached: bool) {
        if keep_attached {
            let (tx, rx) = oneshot::channel();
            if self.commands.send(Command::Leave(tx)).await.is_ok() {
                let _ = rx.await;
            }
            if self.wanted.borrow().settings.is_some() {
                info!(
                    "--keep-attached: BIRD keeps running with its announcements; the next `lb run` adopts it"
                );
            }
            return;
        }
        self.withdraw().await;
        if let Some(until) = self.forward_until {
            tokio::time::sleep_until(until).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_ok()
            && let Ok(how) = rx.await
        {
            info!("BIRD {how}");
        }
        let _ = self.task.await;
    }
}

/// What `/status` shows of each address of `decisions`, given the
/// addresses BIRD holds (`None`: not all could be read), whether a session
/// with an IPv4 and with an IPv6 peer is established (`[v4, v6]`), and
/// whether the agent withdrew everything for its stop. An address is
/// announced when BIRD holds it and a session of its family is up.
fn address_status(
    decisions: &[Decision],
    held: Option<&BTreeSet<IpAddr>>,
    [up_v4, up_v6]: [bool; 2],
    withdrawn: bool,
) -> Vec<AddressStatus> {
    decisions
        .iter()
        .map(|d| {
            let held = held.is_some_and(|h| h.contains(&d.address));
            let session = if d.address.is_ipv4() { up_v4 } else { up_v6 };
            AddressStatus {
                address: d.address.to_string(),
                wanted: d.announce && !withdrawn,
                announced: held && session,
                reason: if withdrawn {
                    "withdrawn: the agent is stopping".into()
                } else if held && !session {
                    format!(
                        "{}; no session with an {} peer is established",
                        d.reason,
                        if d.address.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                } else {
                    d.reason.clone()
                },
            }
        })
        .collect()
}

struct Task {
    paths: BirdPaths,
    iface: String,
    /// Where the announcement's state is published for the API.
    published: watch::Sender<Option<BgpStatus>>,
    bird: Option<Bird>,
    /// The configuration BIRD runs (as written and configured).
    applied: Option<String>,
    /// Every announcement withdrawn for the stop.
    withdrawn: bool,
    status: BgpStatus,
    /// Last BGP state logged per peer protocol.
    peer_states: HashMap<String, String>,
    backoff: Duration,
    next_start: Instant,
}

impl Task {
    async fn run(
        mut self,
        mut wanted: watch::Receiver<Wanted>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let current = wanted.borrow_and_update().clone();
        match (Bird::find(&self.paths).await, current.settings.is_some()) {
            (Some(Found::Answering(bird)), true) => {
                info!(
                    "adopted BIRD (pid {}) running for {}: its sessions and announcements are kept, its configuration brought up to date",
                    bird.pid, self.iface
                );
                self.bird = Some(bird);
            }
            (Some(Found::Silent(bird)), _) => {
                let pid = bird.pid;
                warn!(
                    "the BIRD (pid {pid}) an earlier agent left for {} runs but did not answer on {} within {:?}: stopping it before starting another (two would both announce)",
                    self.iface,
                    self.paths.socket().display(),
                    super::bird::START_TIMEOUT
                );
                let how = bird.stop().await;
                info!("BIRD (pid {pid}) {how}");
                if current.settings.is_none() {
                    let _ = std::fs::remove_dir_all(self.paths.dir());
                }
            }
            (Some(Found::Answering(bird)), false) => {
                info!(
                    "no [bgp] in the configuration: stopping the BIRD (pid {}) an earlier agent left running (its sessions close)",
                    bird.pid
                );
                bird.stop().await;
                let _ = std::fs::remove_dir_all(self.paths.dir());
            }
            (None, _) => {}
        }
        self.reconcile(&current).await;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = wanted.borrow_and_update().clone();
                    self.reconcile(&current).await;
                }
                _ = tick.tick() => {
                    let current = wanted.borrow().clone();
                    self.supervise(&current).await;
                }
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Leave(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Withdraw(done)) => {
                        self.withdrawn = true;
                        let before = self.status.addresses.iter().filter(|a| a.announced).count();
                        let current = wanted.borrow().clone();
                        self.reconcile(&current).await;
                        let result = if self.applied.as_deref() == Some(self.config_text(&current).as_str()) {
                            Ok(before)
                        } else {
                            Err(self.status.last_error.clone().unwrap_or_else(|| "BIRD is not running".into()))
                        };
                        let _ = done.send(result);
                    }
                    Some(Command::Stop(done)) => {
                        let how = match self.bird.take() {
                            Some(bird) => {
                                let pid = bird.pid;
                                format!("(pid {pid}) {}", bird.stop().await)
                            }
                            None => "was not running".into(),
                        };
                        let _ = std::fs::remove_dir_all(self.paths.dir());
                        self.status.speaker = "stopped".into();
                        self.status.pid = None;
                        self.published.send_replace(Some(self.status.clone()));
                        let _ = done.send(how);
                        return;
                    }
                },
            }
        }
    }

    /// BIRD's configuration for `wanted` (no route once withdrawn).
    fn config_text(&self, wanted: &Wanted) -> String {
        let Some(settings) = &wanted.settings else {
            return String::new();
        };
        let addresses = if self.withdrawn {
            Vec::new()
        } else {
            announced(&wanted.decisions)
        };
        conf::render(settings, &addresses, &self.iface)
    }

    fn record_error(&mut self, e: String) {
        self.status.errors += 1;
        self.status.last_error = Some(e);
    }

    /// Brings BIRD to `wanted`: started (or stopped when `[bgp]` went
    /// away), configured when its configuration differs.
    async fn reconcile(&mut self, wanted: &Wanted) {
        if wanted.settings.is_none() {
            if let Some(bird) = self.bird.take() {
                info!(
                    "[bgp] removed from the configuration: stopping BIRD (pid {}); its sessions close",
                    bird.pid
                );
                bird.stop().await;
                let _ = std::fs::remove_dir_all(self.paths.dir());
            }
            self.applied = None;
            self.published.send_replace(None);
            return;
        }
        let text = self.config_text(wanted);
        if self.bird.is_none() {
            if Instant::now() < self.next_start {
                return;
            }
            if let Err(e) = write_config(&self.paths, &text) {
                self.record_error(format!("writing {}: {e}", self.paths.config().display()));
                return;
            }
            match Bird::start(&self.paths).await {
                Ok(bird) => {
                    info!(
                        "BIRD started (pid {}) for {}: configuration {}, control socket {}",
                        bird.pid,
                        self.iface,
                        self.paths.config().display(),
                        self.paths.socket().display()
                    );
                    self.bird = Some(bird);
                    self.applied = Some(text.clone());
                    self.log_announcements(wanted, None);
                }
                Err(e) => {
                    error!(
                        "BIRD could not be started: {e}; trying again in {}",
                        humantime::format_duration(self.backoff)
                    );
                    self.record_error(e);
                    self.status.speaker = "down".into();
                    self.next_start = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.publish(wanted);
                    return;
                }
            }
        } else if self.applied.as_deref() != Some(text.as_str()) {
            let before = self.applied.take();
            let result = match write_config(&self.paths, &text) {
                Ok(()) => {
                    let path = self.paths.config().display().to_string();
                    birdc(&self.paths.socket(), &["configure", &format!("\"{path}\"")])
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("writing {}: {e}", self.paths.config().display())),
            };
            match result {
                Ok(_) => {
                    self.applied = Some(text.clone());
                    self.log_announcements(wanted, before.as_deref());
                }
                Err(e) => {
                    error!("configuring BIRD failed: {e}; retried in a second");
                    self.record_error(e);
                    self.applied = before;
                }
            }
        }
        self.poll(wanted).await;
    }

    /// Logs what the configuration just applied announces, against `before`.
    fn log_announcements(&self, wanted: &Wanted, before: Option<&str>) {
        if self.withdrawn {
            return;
        }
        let was: BTreeSet<IpAddr> = before
            .map(|text| {
                wanted
                    .decisions
                    .iter()
                    .map(|d| d.address)
                    .filter(|a| text.contains(&format!(" {a}/")))
                    .collect()
            })
            .unwrap_or_default();
        for d in &wanted.decisions {
            match (was.contains(&d.address), d.announce) {
                (false, true) => info!("BGP: announcing {} ({})", d.address, d.reason),
                (true, false) => warn!("BGP: withdrawing {} ({})", d.address, d.reason),
                _ => {}
            }
        }
    }

    /// Restarts a BIRD that died, applies what is pending, reads BIRD.
    async fn supervise(&mut self, wanted: &Wanted) {
        if let Some(bird) = &mut self.bird
            && let Some(why) = bird.exited()
        {
            let pid = bird.pid;
            let lived = bird.since.elapsed();
            self.bird = None;
            self.applied = None;
            self.status.restarts += 1;
            if lived > MAX_BACKOFF * 2 {
                self.backoff = Duration::from_secs(1);
            }
            self.next_start = Instant::now() + self.backoff;
            warn!(
                "BIRD (pid {pid}) exited ({why}): its sessions are down; starting it again in {}; its log: {}",
                humantime::format_duration(self.backoff),
                super::bird::log_tail(&self.paths.log())
            );
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            self.status.speaker = "down".into();
            self.publish(wanted);
            return;
        }
        self.reconcile(wanted).await;
    }

    /// Reads BIRD's sessions and routes into the status, logging session
    /// state changes.
    async fn poll(&mut self, wanted: &Wanted) {
        let Some(settings) = &wanted.settings else {
            return;
        };
        let Some(bird) = &self.bird else {
            self.publish(wanted);
            return;
        };
        self.status.pid = Some(bird.pid);
        let socket = self.paths.socket();
        let sessions = match birdc(&socket, &["show", "protocols", "all"]).await {
            Ok(text) => {
                // Running: it answered.
                self.status.speaker = "running".into();
                let p = parse::protocols(&text);
                if p.unreadable > 0 {
                    self.record_error(format!(
                        "{} unreadable lines in `show protocols all`",
                        p.unreadable
                    ));
                }
                Some(p.items)
            }
            Err(e) => {
                self.status.speaker = "not answering".into();
                self.record_error(e.to_string());
                None
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut peers = Vec::new();
        for peer in &settings.bgp.peers {
            let name = protocol_name(peer);
            let session = sessions
                .as_ref()
                .and_then(|all| all.iter().find(|s| s.name == name));
            let state = session
                .and_then(|s| s.bgp_state.clone())
                .unwrap_or_else(|| "unknown".into());
            let logged = self.peer_states.insert(name.clone(), state.clone());
            if sessions.is_some() && logged.as_deref() != Some(state.as_str()) {
                let last = session
                    .and_then(|s| s.last_error.as_deref())
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                let line = format!(
                    "BGP session with {} (AS {}): {} -> {state}{last}",
                    peer.address,
                    peer.remote_as,
                    logged.as_deref().unwrap_or("new")
                );
                if state == "Established" {
                    info!("{line}");
                } else {
                    warn!("{line}");
                }
            }
            let established = session.is_some_and(parse::Session::established);
            peers.push(PeerStatus {
                address: peer.address.to_string(),
                remote_as: peer.remote_as,
                uptime_seconds: session
                    .and_then(|s| s.since)
                    .filter(|_| established)
                    .map(|since| now.saturating_sub(since) as f64),
                exported_routes: session.and_then(|s| s.exported),
                last_error: session.and_then(|s| s.last_error.clone()),
                state,
            });
        }
        let up = |v4: bool| {
            settings
                .bgp
                .peers
                .iter()
                .zip(&peers)
                .any(|(peer, status)| peer.address.is_ipv4() == v4 && status.established())
        };
        let (up_v4, up_v6) = (up(true), up(false));
        self.status.peers = peers;
        let mut held = BTreeSet::new();
        let mut read_all = true;
        for protocol in [conf::STATIC_V4, conf::STATIC_V6] {
            match birdc(&socket, &["show", "route", "protocol", protocol]).await {
                Ok(text) => {
                    let r = parse::routes(&text);
                    if r.unreadable > 0 {
                        self.record_error(format!(
                            "{} unreadable lines in `show route protocol {protocol}`",
                            r.unreadable
                        ));
                    }
                    held.extend(r.items.into_iter().map(|n| n.addr()));
                }
                Err(e) => {
                    read_all = false;
                    self.record_error(e.to_string());
                }
            }
        }
        let held = read_all.then_some(&held);
        self.status.addresses =
            address_status(&wanted.decisions, held, [up_v4, up_v6], self.withdrawn);
        self.published.send_replace(Some(self.status.clone()));
    }

    /// Publishes the status without reading BIRD (it is not running).
    fn publish(&mut self, wanted: &Wanted) {
        self.status.pid = None;
        for p in &mut self.status.peers {
            p.state = "unknown".into();
            p.uptime_seconds = None;
        }
        self.status.addresses = wanted
            .decisions
            .iter()
            .map(|d| AddressStatus {
                address: d.address.to_string(),
                wanted: d.announce,
                announced: false,
                reason: format!("BIRD is not running; {}", d.reason),
            })
            .collect();
        self.published.send_replace(Some(self.status.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_announced_only_while_bird_holds_it_and_a_session_of_its_family_is_up() {
        let decision = |address: &str, announce| Decision {
            address: address.parse().expect("address"),
            announce,
            reason: "web: 1 of 1 backends usable".into(),
        };
        let decisions = [
            decision("10.1.0.1", true),
            decision("fd00:1::1", true),
            decision("10.1.0.2", false),
        ];
        let held: BTreeSet<IpAddr> = ["10.1.0.1", "fd00:1::1"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        let announced = |held, up, withdrawn| -> Vec<bool> {
            address_status(&decisions, held, up, withdrawn)
                .iter()
                .map(|a| a.announced)
                .collect()
        };
        assert_eq!(
            announced(Some(&held), [true, true], false),
            [true, true, false]
        );
        // Only an IPv4 session: the IPv6 address reaches no one.
        assert_eq!(
            announced(Some(&held), [true, false], false),
            [true, false, false]
        );
        let s = address_status(&decisions, Some(&held), [true, false], false);
        assert!(
            s[1].wanted
                && s[1]
                    .reason
                    .ends_with("no session with an IPv6 peer is established")
        );
        // No session up, or BIRD's routes unread: nothing is announced.
        assert_eq!(announced(Some(&held), [false, false], false), [false; 3]);
        assert_eq!(announced(None, [true, true], false), [false; 3]);
        let stopping = address_status(&decisions, Some(&held), [true, true], true);
        assert!(stopping.iter().all(|a| !a.wanted));
        assert_eq!(stopping[0].reason, "withdrawn: the agent is stopping");
    }
}
