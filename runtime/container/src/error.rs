//! Typed errors of the engine. The CLI turns them into runc-style messages.

use std::path::PathBuf;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container does not exist")]
    NotExist,
    #[error("container with given ID already exists")]
    Exists,
    #[error("invalid container id format: {0:?}")]
    InvalidId(String),
    #[error("bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config.json: {0}")]
    Config(String),
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("container not running")]
    NotRunning,
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartState(String),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: String },
    #[error("cgroup {path}: {msg}")]
    Cgroup { path: PathBuf, msg: String },
    /// A failure inside the container's setup processes, as they reported it.
    #[error("{0}")]
    Init(String),
    #[error("unable to start container process: {0}")]
    StartProcess(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys { context: String, source: nix::Error },
    #[error("{0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach a description of what was being done to an I/O or syscall error.
pub trait Context<T> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context().into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::Sys {
            context: context().into(),
            source,
        })
    }
}
