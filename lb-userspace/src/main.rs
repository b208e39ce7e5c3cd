//! `lb`: the load balancer's command line (SPEC section 5).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    agent,
    config::{Config, ConfigError, Protocol, XdpModeConfig},
    decap, explain,
};
use log::{error, warn};

/// An internal layer-4 load balancer on XDP: Maglev hashing, IP-in-IP
/// encapsulation, direct server return.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the balancer (or adopt the one pinned for the
    /// interface), fill its maps, health-check backends; reload on SIGHUP and
    /// when the configuration file changes; detach on SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Interface to attach to; overrides `interface` in the configuration.
        #[arg(long)]
        iface: Option<String>,
        /// On exit, leave the data plane attached and its maps and link
        /// pinned under /sys/fs/bpf/lb/IFACE: it goes on forwarding with the
        /// last state, and the next `lb run` adopts it without dropping a flow.
        #[arg(long)]
        keep_attached: bool,
    },
    /// Validate a configuration: exit 0 with a summary, or 1 with every error.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a running agent's VIPs, backends (health, weight, last check),
    /// counters and reloads, from its API.
    Status {
        /// Address of the agent's API (`api.listen`).
        #[arg(long, default_value = "127.0.0.1:9470")]
        api: SocketAddr,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which backend a flow goes to, and why: VIP, flow hash, Maglev slot,
    /// backend; with a running agent, the live table and the connection table.
    Explain {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Protocol of the flow.
        #[arg(long, value_enum)]
        proto: Proto,
        /// Client address and port, e.g. 10.1.2.3:40000.
        #[arg(long)]
        src: SocketAddr,
        /// VIP address and port, e.g. 10.10.0.100:80.
        #[arg(long)]
        dst: SocketAddr,
        /// Interface of the running data plane to consult; overrides
        /// `interface` in the configuration.
        #[arg(long)]
        iface: Option<String>,
    },
    /// On a backend host: decapsulate IP-in-IP packets for these VIPs and
    /// pass the inner packets to the kernel, until SIGINT or SIGTERM.
    Decap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long)]
        iface: String,
        /// A VIP this host serves (configured on its loopback); repeatable.
        /// With none, every packet passes untouched.
        #[arg(long = "vip")]
        vips: Vec<Ipv4Addr>,
        /// Attach mode.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: Mode,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

impl From<Mode> for XdpModeConfig {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => Self::Auto,
            Mode::Native => Self::Native,
            Mode::Generic => Self::Generic,
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now (so a signal that comes
/// while the data plane is being set up is not fatal), and returns a future
/// that completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ConfigError> {
    let loaded = Config::load(path)?;
    for warning in &loaded.warnings {
        warn!("{}: warning: {warning}", path.display());
    }
    Ok(loaded.config)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    println!("warning: {warning}");
                }
                let c = &loaded.config;
                println!(
                    "{}: OK: {} VIPs, {} backends, Maglev table size {}",
                    config.display(),
                    c.vips.len(),
                    c.backend_count(),
                    c.table_size
                );
                println!("data plane memory: {}", c.sizing);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: config_path,
            iface,
            keep_attached,
        } => report(runtime().and_then(|rt| {
            rt.block_on(async {
                let shutdown = shutdown_signal();
                let config = load_config(&config_path)?;
                let options = agent::RunOptions {
                    config_path,
                    iface,
                    keep_attached,
                };
                agent::run(config, options, shutdown)
                    .await
                    .context("lb run")
            })
        })),
        Command::Status { api, json } => report(runtime().and_then(|rt| {
            rt.block_on(async {
                let status =
                    lb_userspace::api::fetch_status(api, std::time::Duration::from_secs(5)).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", lb_userspace::api::render_table(&status));
                }
                Ok(())
            })
        })),
        Command::Explain {
            config,
            proto,
            src,
            dst,
            iface,
        } => {
            let config = match Config::load(&config) {
                Ok(loaded) => loaded.config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let protocol = match proto {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            };
            let pins = iface
                .or_else(|| config.interface.clone())
                .map(|i| agent::pin_dir(&i))
                .filter(|dir| dir.join(agent::LINK_PIN).exists());
            match explain::explain(&config, protocol, src, dst, pins.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Decap {
            iface,
            vips,
            xdp_mode,
        } => report(runtime().and_then(|rt| {
            rt.block_on(async {
                let shutdown = shutdown_signal();
                decap::run(&iface, &vips, xdp_mode.into(), shutdown)
                    .await
                    .context("lb decap")
            })
        })),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Logs an error with its chain of causes, each once: a cause whose text
/// its parent already shows (`{op} {path}: {source}`) is not repeated.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = String::new();
            let mut shown = String::new();
            for cause in e.chain() {
                let line = cause.to_string();
                if !shown.contains(&line) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&line);
                }
                shown = line;
            }
            error!("{text}");
            ExitCode::FAILURE
        }
    }
}
