//! `lb`: the load balancer's command line (SPEC section 5).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use lb_userspace::{
    cli,
    config::{Protocol, XdpModeConfig},
};

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
    /// With `[bgp]`, announce the VIP addresses through BIRD 2 (started and
    /// supervised by the agent); on SIGINT or SIGTERM withdraw them first and
    /// keep forwarding for `bgp.withdraw_delay`.
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
        /// With `[bgp]`, BIRD keeps running with its sessions and
        /// announcements, and the next `lb run` adopts it too.
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
    /// On a backend host: decapsulate IP-in-IP and GUE packets (over IPv4
    /// or IPv6) for these VIPs and
    /// pass the inner packets to the kernel, until SIGINT or SIGTERM.
    Decap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long)]
        iface: String,
        /// A VIP this host serves (configured on its loopback); repeatable.
        /// With none, every packet passes untouched.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
        /// UDP port of GUE packets to decapsulate (the load balancer's
        /// `encap.gue_port`); 0 decapsulates no GUE.
        #[arg(long, default_value_t = lb_userspace::config::DEFAULT_GUE_PORT)]
        gue_port: u16,
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Check { config } => cli::check::command(&config),
        Command::Run {
            config,
            iface,
            keep_attached,
        } => cli::run::command(config, iface, keep_attached),
        Command::Status { api, json } => cli::status::command(api, json),
        Command::Explain {
            config,
            proto,
            src,
            dst,
            iface,
        } => {
            let protocol = match proto {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            };
            cli::explain::command(&config, protocol, src, dst, iface)
        }
        Command::Decap {
            iface,
            vips,
            gue_port,
            xdp_mode,
        } => cli::decap::command(&iface, &vips, gue_port, xdp_mode.into()),
    }
}
