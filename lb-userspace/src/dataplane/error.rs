//! Why an operation on the kernel side failed: [`DataplaneError`]. The agent
//! wraps it (`AgentError::Dataplane`); messages name what was being done and
//! on what.

/// A failed operation on the data plane: a program, a pin, a lock.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A system call or file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what (a file, a directory, a pin).
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object could not be loaded (verifier, permissions, kernel).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be found, loaded, attached or replaced.
    #[error("{op} program {program}: {source}")]
    Program {
        /// What was being done (find, load, attach, ...).
        op: &'static str,
        /// Program name.
        program: &'static str,
        /// aya's error (the verifier's log in it, for a load).
        source: aya::programs::ProgramError,
    },
    /// Another agent holds the interface.
    #[error("another agent is running on {iface} (it holds {lock})")]
    Running {
        /// The interface.
        iface: String,
        /// The lock file.
        lock: String,
    },
}

/// Maps an I/O error of operation `op` on `path` to [`DataplaneError::Io`],
/// for `map_err`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let path = path.into();
    move |source| DataplaneError::Io { op, path, source }
}
