//! `lb`: the load balancer's command line.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use clap::{CommandFactory as _, Parser, Subcommand};
use lb_userspace::{
    cli,
    config::{Protocol, XdpModeConfig},
};

/// An internal layer-4 load balancer on XDP: Maglev hashing, IP-in-IP
/// encapsulation, direct server return.
#[derive(Parser)]
#[command(name = "lb", version, about)]
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
        /// A prefix the load balancers' outer source addresses are in;
        /// repeatable. Tunnels from other sources are dropped and counted
        /// (`drop_decap_source`). Default: the private ranges
        /// (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10,
        /// fc00::/7).
        #[arg(long = "lb")]
        lbs: Vec<ipnet::IpNet>,
        /// UDP port of GUE packets to decapsulate (the load balancer's
        /// `encap.gue_port`); 0 decapsulates no GUE.
        #[arg(long, default_value_t = lb_userspace::config::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Attach mode.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: Mode,
    },
    /// Stop a data plane left running by `lb run --keep-attached` (as the
    /// systemd unit runs it): with `[bgp]`, stop the BIRD the agent left
    /// (the routers withdraw the VIP addresses) and keep forwarding for
    /// `bgp.withdraw_delay`; then remove its pins, so the kernel detaches
    /// xdp_lb and drops its connection table. Refused while an agent runs
    /// on the interface.
    Detach {
        /// Configuration file (TOML) naming the interface.
        #[arg(long, short, required_unless_present = "iface")]
        config: Option<PathBuf>,
        /// Interface to detach from; overrides `interface` in the configuration.
        #[arg(long)]
        iface: Option<String>,
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
    if let Some(code) = cli::generate::intercept(std::env::args_os(), Cli::command) {
        return code;
    }
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
            lbs,
            gue_port,
            xdp_mode,
        } => cli::decap::command(&iface, &vips, &lbs, gue_port, xdp_mode.into()),
        Command::Detach { config, iface } => cli::detach::command(config.as_deref(), iface),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use lb_userspace::cli::generate;

    use super::Cli;

    /// The commands, and `detach`.
    const COMMANDS: [&str; 6] = ["run", "check", "status", "explain", "decap", "detach"];

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        let mut visible: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name())
            .collect();
        visible.sort_unstable();
        let mut expected = COMMANDS;
        expected.sort_unstable();
        assert_eq!(visible, expected);
    }

    #[test]
    fn completions_offer_every_command_and_its_flags() {
        let cmd = Cli::command();
        for (shell, _) in generate::SHELLS {
            let script = String::from_utf8(generate::completion(&cmd, shell)).expect("UTF-8");
            for command in COMMANDS {
                assert!(script.contains(command), "{shell}: no {command}");
            }
            for flag in [
                "keep-attached",
                "config",
                "iface",
                "vip",
                "gue-port",
                "json",
            ] {
                assert!(script.contains(flag), "{shell}: no --{flag}");
            }
            assert!(
                !script.contains("generate"),
                "{shell}: hidden command offered"
            );
        }
    }

    #[test]
    fn every_command_has_a_man_page_with_its_flags() {
        let pages = generate::man_pages(&Cli::command()).expect("man pages");
        let page = |name: &str| -> String {
            let (_, page) = pages
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no page {name}"));
            String::from_utf8(page.clone()).expect("UTF-8")
        };
        let top = page("lb.1");
        assert!(top.starts_with(".ie") || top.contains(".TH lb 1"), "{top}");
        for command in COMMANDS {
            assert!(top.contains(command), "lb.1 lists no {command}");
            let sub = page(&format!("lb-{command}.1"));
            assert!(sub.contains(&format!(".TH lb-{command} 1")), "{sub}");
        }
        // Roff escapes dashes: --keep-attached reads \-\-keep\-attached.
        assert!(page("lb-run.1").contains("keep\\-attached"));
        assert!(page("lb-decap.1").contains("gue\\-port"));
        assert_eq!(
            pages.len(),
            COMMANDS.len() + 1,
            "{:?}",
            pages.iter().map(|p| &p.0).collect::<Vec<_>>()
        );
    }
}
