//! Program upgrade on adoption: an agent that adopts a pinned data plane
//! loads its own `xdp_lb` against the pinned maps and, when it differs from
//! the program the pinned XDP link runs, swaps it in on that link with one
//! `BPF_LINK_UPDATE` (kernel/bpf/syscall.c, `link_update`): the interface is
//! never without a program, and the maps (connection table, counters,
//! Maglev tables) are the same objects before and after.
//!
//! Programs are compared by their kernel tag (a hash of the instructions
//! with map references masked, kernel/bpf/core.c `bpf_prog_calc_tag`), so
//! the same build loaded twice compares equal and any change of code or
//! constants does not.

use std::{fmt, path::Path};

use aya::{
    EbpfLoader,
    programs::{
        ProgramError, Xdp,
        links::{FdLink, PinnedLink},
        loaded_programs,
        xdp::XdpLink,
    },
};
use serde::{Deserialize, Serialize};

use super::error::DataplaneError;
use crate::dataplane::{object, pins::LINK_PIN};

/// Name of the balancer's program in the object.
pub const PROGRAM: &str = "xdp_lb";

/// A loaded program as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramId {
    /// Kernel program id (`bpftool prog show id N`).
    pub id: u32,
    /// Kernel program tag (8 bytes, shown as 16 hex digits).
    pub tag: u64,
}

impl fmt::Display for ProgramId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id {} tag {:016x}", self.id, self.tag)
    }
}

/// What [`upgrade`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// The program the link ran before.
    pub old: ProgramId,
    /// The program it runs now (`old` when nothing changed).
    pub new: ProgramId,
}

impl Upgrade {
    /// Whether the link's program was replaced.
    pub fn replaced(&self) -> bool {
        self.old.tag != self.new.tag
    }
}

fn program_err(op: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        op,
        program: PROGRAM,
        source,
    }
}

fn link_err(op: &'static str, path: &Path) -> impl FnOnce(String) -> DataplaneError {
    let path = path.display().to_string();
    move |e| DataplaneError::Io {
        op,
        path,
        source: std::io::Error::other(e),
    }
}

/// The id and tag of a loaded program.
///
/// # Errors
/// The kernel does not answer `BPF_OBJ_GET_INFO_BY_FD`.
pub fn program_id(program: &Xdp) -> Result<ProgramId, DataplaneError> {
    let info = program.info().map_err(program_err("inspect"))?;
    Ok(ProgramId {
        id: info.id(),
        tag: info.tag(),
    })
}

/// The id and tag of [`PROGRAM`] once `ebpf` has loaded it.
///
/// # Errors
/// The program is not in the object or not loaded.
pub fn loaded_program(ebpf: &aya::Ebpf) -> Result<ProgramId, DataplaneError> {
    let program: &Xdp = ebpf
        .program(PROGRAM)
        .ok_or(DataplaneError::Program {
            op: "find",
            program: PROGRAM,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(program_err("find"))?;
    program_id(program)
}

/// The program the XDP link pinned at `pin` runs.
///
/// # Errors
/// The pin cannot be opened, or the kernel does not describe the link or
/// its program.
pub fn linked_program(pin: &Path) -> Result<ProgramId, DataplaneError> {
    let link: FdLink = PinnedLink::from_pin(pin)
        .map_err(|e| e.to_string())
        .map_err(link_err("open pinned link", pin))?
        .into();
    program_of_link(&link, pin)
}

fn program_of_link(link: &FdLink, pin: &Path) -> Result<ProgramId, DataplaneError> {
    let id = link
        .info()
        .map_err(|e| e.to_string())
        .map_err(link_err("inspect link", pin))?
        .program_id();
    let tag = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.tag())
        .ok_or_else(|| link_err("find the program of link", pin)(format!("no program {id}")))?;
    Ok(ProgramId { id, tag })
}

/// Loads the embedded `xdp_lb` against the maps pinned in `dir` (every pin
/// but the link's; data sections such as `.rodata` are the new build's own)
/// and, when its tag differs from that of the program the pinned link
/// runs, replaces the link's program atomically.
///
/// # Errors
/// Loading (the verifier), inspecting or updating fails; the link then
/// keeps its program.
pub fn upgrade(dir: &Path) -> Result<Upgrade, DataplaneError> {
    let pin = dir.join(LINK_PIN);
    let link: FdLink = PinnedLink::from_pin(&pin)
        .map_err(|e| e.to_string())
        .map_err(link_err("open pinned link", &pin))?
        .into();
    let old = program_of_link(&link, &pin)?;
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| link_err("list pins in", dir)(e.to_string()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != LINK_PIN && !name.starts_with('.'))
        .collect();
    let mut loader = EbpfLoader::new();
    for name in &names {
        loader.map_pin_path(name, dir.join(name));
    }
    let mut ebpf = loader.load(object::object())?;
    // xdp_lb_v6 first, in the pinned program array: the running xdp_lb
    // hands IPv6 packets to it from now on, as the new xdp_lb will.
    super::object::load_tail_programs(&mut ebpf)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(DataplaneError::Program {
            op: "find",
            program: PROGRAM,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(program_err("find"))?;
    super::object::load_program(program).map_err(program_err("load"))?;
    let new = program_id(program)?;
    if new.tag == old.tag {
        // The same program: keep the running one (this load is freed).
        return Ok(Upgrade { old, new: old });
    }
    let link = XdpLink::try_from(link)
        .map_err(|e| e.to_string())
        .map_err(link_err("open the XDP link", &pin))?;
    let id = program
        .attach_to_link(link)
        .map_err(program_err("swap in on the pinned link"))?;
    // The pin keeps the link, and the link its new program, once this
    // process's handles close.
    drop(program.take_link(id));
    Ok(Upgrade { old, new })
}
