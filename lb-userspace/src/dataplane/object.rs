//! The embedded object: loading it with maps sized for a configuration, and
//! loading and attaching one of its programs.

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLink},
};
use lb_common::{MAP_CONNS, MAP_MAGLEV, MAP_NAT, MAP_PROGS, TAIL_PROGRAMS};

use super::error::DataplaneError;
use crate::config::{Config, XdpModeConfig};

/// The embedded object, aligned as aya needs.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"))
}

/// The benchmark's own object (`lb-ebpf`'s `lb-bench` binary: baselines
/// and the frame-restoring wrapper), embedded for `lb-bench` only; the
/// agent never loads it.
pub fn bench_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench"))
}

/// Loads the embedded object with its maps sized for `config`
/// ([`Config::sizing`]: the Maglev map, the connection table and the NAT
/// table); programs
/// are not loaded into the kernel yet.
///
/// # Errors
/// aya's error when the kernel refuses a map (memory, permissions).
pub fn load_object(config: &Config) -> Result<Ebpf, aya::EbpfError> {
    EbpfLoader::new()
        .map_max_entries(MAP_MAGLEV, config.sizing.maglev_entries)
        .map_max_entries(MAP_CONNS, config.sizing.conntrack_entries)
        .map_max_entries(MAP_NAT, config.sizing.nat_entries)
        .load(object())
}

/// Loads the programs `xdp_lb` and `xdp_lb_v6` tail-call
/// (`lb_common::TAIL_PROGRAMS`: `xdp_lb_v6`, the NAT programs) and puts
/// each in its slot of `LB_PROGS`: done before `xdp_lb` is attached or
/// swapped in, so that no packet meets an empty slot. Replacing a slot's
/// program is one map update: a packet runs the old program or the new one.
///
/// # Errors
/// A program is missing or refused by the verifier, or the map update
/// fails.
pub fn load_tail_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let mut fds = Vec::with_capacity(TAIL_PROGRAMS.len());
    for (name, slot) in TAIL_PROGRAMS {
        let program = load_named(ebpf, name)?;
        let fd = program
            .fd()
            .map_err(|source| DataplaneError::Program {
                op: "take the fd of",
                program: name,
                source,
            })?
            .try_clone()
            .map_err(|source| DataplaneError::Io {
                op: "duplicate the fd of",
                path: name.to_string(),
                source,
            })?;
        fds.push((name, slot, fd));
    }
    let map = ebpf.map_mut(MAP_PROGS).ok_or(DataplaneError::Io {
        op: "find map",
        path: MAP_PROGS.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let mut progs: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(|e| DataplaneError::Io {
            op: "open map",
            path: MAP_PROGS.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    for (name, slot, fd) in &fds {
        progs.set(*slot, fd, 0).map_err(|e| DataplaneError::Io {
            op: "set a program in",
            path: format!("{MAP_PROGS} (slot {slot}, {name})"),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// Times a program load is tried when the verifier gives up with `EAGAIN`,
/// as libbpf does (`PROG_LOAD_ATTEMPTS`).
const LOAD_ATTEMPTS: usize = 5;

/// Loads `program` into the kernel (the verifier runs), trying again up to
/// [`LOAD_ATTEMPTS`] times in all when the kernel answers `EAGAIN`: the
/// verifier stops when a signal arrives for the loading thread
/// (`signal_pending` in `do_check`, kernel/bpf/verifier.c), and `xdp_lb`
/// takes it long enough that a SIGCHLD or SIGHUP can land meanwhile.
///
/// # Errors
/// aya's error of the last attempt (the verifier's log in it).
pub fn load_program(program: &mut Xdp) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// aya's attach mode for a configured mode.
pub fn xdp_mode(mode: XdpModeConfig) -> XdpMode {
    match mode {
        XdpModeConfig::Auto => XdpMode::Default,
        XdpModeConfig::Native => XdpMode::Driver,
        XdpModeConfig::Generic => XdpMode::Skb,
    }
}

/// Finds XDP program `name` of `ebpf` and loads it into the kernel
/// ([`load_program`]).
///
/// # Errors
/// [`DataplaneError::Program`]: the program is missing, not XDP, or
/// refused by the verifier.
fn load_named<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let err = |op| {
        move |source| DataplaneError::Program {
            op,
            program: name,
            source,
        }
    };
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(ProgramError::NotLoaded)
        .map_err(err("find"))?
        .try_into()
        .map_err(err("find"))?;
    load_program(program).map_err(err("load"))?;
    Ok(program)
}

/// Loads and attaches program `name` of `ebpf` to `iface`; returns the link.
///
/// # Errors
/// [`DataplaneError::Program`] when the verifier or the attach refuses it.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<XdpLink, DataplaneError> {
    let program = load_named(ebpf, name)?;
    let err = |op| {
        move |source| DataplaneError::Program {
            op,
            program: name,
            source,
        }
    };
    let id = program.attach(iface, mode).map_err(err("attach"))?;
    program.take_link(id).map_err(err("take link of"))
}
