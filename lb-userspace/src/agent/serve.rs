//! The agent's event loop: every input it waits on gathered in [`Inputs`],
//! each arrival an [`Event`], so the loop reads
//! `loop { match inputs.next().await { ... } }`.

use std::pin::Pin;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::*;
use crate::dataplane::nat::{self, NatSweep};

/// What woke the agent.
enum Event {
    /// The shutdown future completed (SIGINT, SIGTERM, or the caller's).
    Shutdown,
    /// A health check ended.
    Check(CheckResult),
    /// SIGHUP: reload.
    Hangup,
    /// The configuration file (or what its path leads to) changed.
    FileChanged,
    /// The debounced reload is due: read the file (off the loop).
    ReloadDue,
    /// The file was read and validated (or not) for a reload (boxed: a
    /// whole configuration).
    ConfigRead(Box<ReadConfig>),
    /// Time to start a connection-table walk, if a VIP waits for one.
    WalkDue,
    /// A connection-table walk ended.
    WalkDone(ConnsWalk),
    /// Time to retire the flow caches' copies
    /// (`lb_common::FLOW_CACHE_MAX_AGE_SECS`).
    CacheAge,
    /// Time to sweep the NAT table (when a VIP is in a NAT mode).
    SweepDue,
    /// A sweep of the NAT table ended.
    SweepDone(Result<NatSweep, String>),
}

/// The agent's inputs: channels, the SIGHUP stream and timers, with the
/// state that says which of them may fire now (a reload or a walk under
/// way waits for its own answer first).
struct Inputs<S> {
    shutdown: Pin<Box<S>>,
    checks: mpsc::Receiver<CheckResult>,
    hangup: Signal,
    files: mpsc::Receiver<()>,
    reads: mpsc::Receiver<ReadConfig>,
    walks: mpsc::Receiver<ConnsWalk>,
    walk_tick: time::Interval,
    sweeps: mpsc::Receiver<Result<NatSweep, String>>,
    sweep_tick: time::Interval,
    cache_tick: time::Interval,
    /// A sweep of the NAT table is under way.
    sweeping: bool,
    /// Reload triggers waiting out their quiet time.
    debounce: Debounce,
    /// A configuration read is under way.
    reading: bool,
    /// A connection-table walk is under way.
    walking: bool,
}

impl<S: Future<Output = ()>> Inputs<S> {
    /// The next event; an input whose channel has closed is no longer
    /// waited on (the shutdown future always is).
    async fn next(&mut self) -> Event {
        let due = self.debounce.due();
        tokio::select! {
            () = &mut self.shutdown => Event::Shutdown,
            Some(result) = self.checks.recv() => Event::Check(result),
            _ = self.hangup.recv() => Event::Hangup,
            _ = self.walk_tick.tick(), if !self.walking => Event::WalkDue,
            Some(walk) = self.walks.recv() => Event::WalkDone(walk),
            _ = self.sweep_tick.tick(), if !self.sweeping => Event::SweepDue,
            _ = self.cache_tick.tick() => Event::CacheAge,
            Some(sweep) = self.sweeps.recv() => Event::SweepDone(sweep),
            Some(()) = self.files.recv() => Event::FileChanged,
            () = time::sleep_until(due.unwrap_or_else(time::Instant::now)), if due.is_some() && !self.reading => Event::ReloadDue,
            Some(read) = self.reads.recv() => Event::ConfigRead(Box::new(read)),
        }
    }
}

impl Agent {
    /// Starts a sweep of the NAT table in a blocking thread when a VIP is
    /// in a NAT mode (`tcp_timeout` from the configuration); whether it
    /// started.
    fn start_nat_sweep(
        &self,
        done: &mpsc::Sender<Result<NatSweep, String>>,
        stop: &Arc<AtomicBool>,
    ) -> bool {
        if !self
            .config
            .vips
            .iter()
            .any(|v| v.mode != crate::config::VipMode::Dsr)
        {
            return false;
        }
        let timeouts = lb_common::NatTimeouts::new(self.config.nat.tcp_timeout.as_secs());
        let (dir, done, stop) = (self.plane.dir.clone(), done.clone(), stop.clone());
        tokio::spawn(async move {
            let sweep = tokio::task::spawn_blocking(move || {
                nat::sweep_pinned(&dir, &timeouts, &stop).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the sweep's thread ended: {e}")));
            let _ = done.send(sweep).await;
        });
        true
    }

    /// Serves until `shutdown` completes: the API, health checks, reloads,
    /// next hops and connection-table walks; then withdraws the BGP
    /// announcements (unless `--keep-attached`), stops the checks and
    /// empties the next-hop cache.
    ///
    /// # Errors
    /// The API cannot listen, or SIGHUP cannot be handled.
    pub(super) async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let listen = self.config.api_listen;
        let server = api::serve(listen, self.shared.clone(), self.config.api_max_connections)
            .await
            .map_err(io_err("serve the API on", listen.to_string()))?;
        info!(
            "API on http://{listen}: /metrics, /status, /healthz (at most {} connections)",
            self.config.api_max_connections
        );
        let _server = AbortOnDrop(server);
        let (check_tx, checks) = mpsc::channel(1024);
        let mut checkers = Checkers::new();
        checkers.sync(self.health_targets(), &check_tx);
        let hangup =
            signal(SignalKind::hangup()).map_err(io_err("install handler for", "SIGHUP"))?;
        let (file_tx, files) = mpsc::channel(16);
        let _watcher = match watch(&self.options.config_path, file_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "cannot watch {} ({e}); reload with SIGHUP",
                    self.options.config_path.display()
                );
                None
            }
        };
        let (read_tx, reads) = mpsc::channel::<ReadConfig>(1);
        let (targets_tx, targets_rx) =
            tokio::sync::watch::channel(self.plane.balancer.next_hop_targets());
        let next_hops = self.start_next_hops(targets_rx);
        let (walk_tx, walks) = mpsc::channel::<ConnsWalk>(1);
        // Walks of the connection table for VIPs whose TCP SYNs look their
        // flows up (see `balancer::ConnsCheck`), every 10 s at most.
        let mut walk_tick = time::interval(WALK_MIN_INTERVAL);
        walk_tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        // Set when serving ends, so a walk does not hold the runtime's
        // shutdown (which waits for blocking tasks).
        let walk_stop = Arc::new(AtomicBool::new(false));
        let _walk_stop = StopOnDrop(walk_stop.clone());
        let (sweep_tx, sweeps) = mpsc::channel(1);
        let mut sweep_tick = time::interval(nat::SWEEP_INTERVAL);
        sweep_tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        let mut cache_tick =
            time::interval(Duration::from_secs(lb_common::FLOW_CACHE_MAX_AGE_SECS));
        cache_tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        let mut inputs = Inputs {
            shutdown: Box::pin(shutdown),
            checks,
            hangup,
            files,
            reads,
            walks,
            walk_tick,
            sweeps,
            sweep_tick,
            cache_tick,
            sweeping: false,
            debounce: Debounce::default(),
            reading: false,
            walking: false,
        };
        // Attached (or adopted), maps filled, API serving: ready.
        crate::systemd::ready(&self.status_line());
        loop {
            match inputs.next().await {
                Event::Shutdown => break,
                Event::Check(result) => {
                    if checkers.is_current(&result) {
                        self.on_check(&result);
                    }
                }
                Event::Hangup => inputs.debounce.trigger("SIGHUP"),
                Event::FileChanged => inputs.debounce.trigger("file changed"),
                Event::ReloadDue => {
                    inputs.reading = true;
                    crate::systemd::reloading();
                    let why = inputs.debounce.take();
                    read_config(self.options.config_path.clone(), why, read_tx.clone());
                }
                Event::ConfigRead(read) => {
                    let (why, loaded) = *read;
                    inputs.reading = false;
                    self.reload(&why, loaded, &mut checkers, &check_tx).await;
                    crate::systemd::ready(&self.status_line());
                    let now = self.plane.balancer.next_hop_targets();
                    targets_tx.send_if_modified(|targets| {
                        let changed = *targets != now;
                        *targets = now;
                        changed
                    });
                }
                Event::WalkDue => inputs.walking = self.start_conns_walk(&walk_tx, &walk_stop),
                Event::WalkDone(walk) => {
                    inputs.walking = false;
                    self.on_conns_walk(walk);
                }
                Event::CacheAge => {
                    // Every flow's next packet reads its connection-table
                    // entry, which keeps the entries of slow flows in the LRU.
                    if let Err(e) = self.plane.balancer.retire_flow_caches() {
                        warn!("retiring the flow caches' copies: {e}");
                    }
                }
                Event::SweepDue => inputs.sweeping = self.start_nat_sweep(&sweep_tx, &walk_stop),
                Event::SweepDone(sweep) => {
                    inputs.sweeping = false;
                    match sweep {
                        Ok(sweep) => {
                            if sweep.expired > 0 {
                                debug!(
                                    "NAT sweep: {} entries read, {} expired translations removed",
                                    sweep.entries, sweep.expired
                                );
                            }
                            self.shared.record_nat_sweep(sweep);
                        }
                        Err(e) => warn!("sweeping the NAT table: {e}"),
                    }
                }
            }
        }
        crate::systemd::stopping();
        // The withdraw goes first, while the health checks and the
        // next-hop cache still run; withdraw_delay counts from here.
        if !self.options.keep_attached {
            self.bgp.withdraw().await;
        }
        checkers.stop();
        // Closing the targets ends the next-hop task, which empties the
        // cache: no stale next hop outlives the agent that kept it.
        drop(targets_tx);
        if let Some(task) = next_hops
            && time::timeout(Duration::from_secs(2), task).await.is_err()
        {
            warn!(
                "the next-hop task did not end in 2 s; cached next hops may stay in the pinned map"
            );
        }
        Ok(())
    }

    /// Starts the task keeping `LB_NEXTHOPS` current from the kernel's
    /// routes and neighbours; `None` (with a warning) when netlink or the
    /// pinned map cannot be opened, and xdp_lb then looks next hops up per
    /// packet.
    pub(super) fn start_next_hops(
        &self,
        targets: tokio::sync::watch::Receiver<Vec<NextHopTarget>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let started = NextHopWriter::from_pin(&self.plane.dir).and_then(|mut writer| {
            match resolve::connect() {
                Ok((handle, notifications)) => Ok((handle, notifications, writer)),
                Err(e) => {
                    // Entries a killed agent left would be used unwatched.
                    writer.clear();
                    Err(e)
                }
            }
        });
        match started {
            Ok((handle, notifications, writer)) => Some(tokio::spawn(nexthops::maintain(
                handle,
                notifications,
                writer,
                targets,
            ))),
            Err(e) => {
                warn!(
                    "next-hop cache off ({e:#}): xdp_lb looks next hops up per packet (bpf_fib_lookup)"
                );
                None
            }
        }
    }
}
