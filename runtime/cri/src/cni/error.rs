//! Typed errors of the CNI caller.
//!
//! Three layers: [`ConfigProblem`] says what is wrong with one config file, [`LoadError`] says why
//! a conf dir yields no usable network (naming the dir and every rejected file), and [`CniError`]
//! says why an ADD/DEL/CHECK/STATUS/GC of a network failed. A plugin's own failure is a
//! [`PluginError`]; when the plugin printed the CNI error JSON its fields are kept in an
//! [`ErrorReply`] so the caller can read the well-known code (e.g. 11, "try again later").

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// What is wrong with one network configuration file (or in-memory config).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigProblem {
    #[error("cannot read: {0}")]
    Read(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing \"name\"")]
    MissingName,
    #[error(
        "invalid network name {0:?}: must start with an alphanumeric character, followed by alphanumerics, '_', '.' or '-'"
    )]
    InvalidName(String),
    #[error("missing \"cniVersion\"")]
    MissingVersion,
    #[error("unsupported cniVersion {0:?} (supported: {supported})", supported = crate::cni::config::SUPPORTED_VERSIONS.join(", "))]
    UnsupportedVersion(String),
    #[error("field {field:?}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("no plugins in list")]
    NoPlugins,
    #[error("plugin {index}: missing \"type\"")]
    MissingType { index: usize },
    #[error("missing \"type\" (a single-plugin .conf needs one; is this a .conflist?)")]
    ConfMissingType,
    #[error("plugin {index}: invalid type {plugin_type:?}: must be a file name")]
    InvalidType { index: usize, plugin_type: String },
    #[error("plugin {index}: {reason}")]
    InvalidPlugin { index: usize, reason: String },
    #[error("plugin {index}: binary {plugin_type:?} not found in {path}")]
    MissingBinary {
        index: usize,
        plugin_type: String,
        path: String,
    },
}

/// One config file that config discovery skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedFile {
    pub path: PathBuf,
    pub problem: ConfigProblem,
}

impl fmt::Display for RejectedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

/// Why config discovery found no usable network. Its `Display` is the one-line reason the CRI
/// reports as `NetworkReady=false`.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read CNI config dir {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("no valid network config in {}: {}", dir.display(), join(rejected))]
    NoneValid {
        dir: PathBuf,
        rejected: Vec<RejectedFile>,
    },
}

fn join(rejected: &[RejectedFile]) -> String {
    rejected
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The CNI error object a plugin prints on stdout when it fails
/// (`{"cniVersion", "code", "msg", "details"}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorReply {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

/// Why one plugin invocation failed.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("failed to find plugin {plugin:?} in path {path}")]
    NotFound { plugin: String, path: String },
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O with plugin {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?} and was killed{}", stderr_suffix(stderr))]
    Timeout { timeout: Duration, stderr: String },
    /// The plugin exited non-zero and printed a CNI error object.
    #[error("{reply}{}", stderr_suffix(stderr))]
    Reported { reply: ErrorReply, stderr: String },
    /// The plugin exited non-zero without a parsable CNI error object.
    #[error(
        "netplugin failed ({status}){}{}",
        output_suffix(stdout),
        stderr_suffix(stderr)
    )]
    Failed {
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("produced output larger than {limit} bytes")]
    OutputTooLarge { limit: usize },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {s:?})")
    }
}

fn output_suffix(stdout: &str) -> String {
    let s = stdout.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": output {s:?} is not a CNI error object")
    }
}

impl PluginError {
    /// The CNI error code the plugin reported, if it printed an error object.
    pub fn code(&self) -> Option<u32> {
        match self {
            PluginError::Reported { reply, .. } => Some(reply.code),
            _ => None,
        }
    }
}

/// The CNI operation a [`CniError`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

impl Command {
    /// The value of `CNI_COMMAND`.
    pub fn as_env(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_env().to_ascii_lowercase())
    }
}

/// Why an operation on a network failed.
#[derive(Debug, Error)]
pub enum CniError {
    /// A plugin of the list failed. `rollback` is set when an ADD failed and the DEL that undid
    /// the list failed too.
    #[error(
        "network {network:?}: plugin type={plugin:?} failed ({command}): {error}{}",
        rollback_suffix(rollback)
    )]
    Plugin {
        network: String,
        plugin: String,
        command: Command,
        #[source]
        error: Box<PluginError>,
        rollback: Option<Box<CniError>>,
    },
    /// A plugin succeeded but its stdout is not a usable CNI result.
    #[error(
        "network {network:?}: plugin type={plugin:?} returned an invalid result: {reason}{}",
        rollback_suffix(rollback)
    )]
    InvalidResult {
        network: String,
        plugin: String,
        reason: String,
        rollback: Option<Box<CniError>>,
    },
    /// The attachment parameters are unusable (container id, interface name, CNI_ARGS).
    #[error("invalid attachment: {0}")]
    InvalidAttachment(String),
    /// The result cache could not be written or read.
    #[error("network {network:?}: result cache {}: {reason}{}", path.display(), rollback_suffix(rollback))]
    Cache {
        network: String,
        path: PathBuf,
        reason: String,
        rollback: Option<Box<CniError>>,
    },
    /// CHECK needs cniVersion >= 0.4.0.
    #[error(
        "network {network:?}: configuration version {version:?} does not support the CHECK command"
    )]
    CheckNotSupported { network: String, version: String },
    /// CHECK of an attachment with no cached ADD result.
    #[error(
        "network {network:?}: no cached result for container {container_id:?} interface {ifname:?}: CHECK needs a previous ADD"
    )]
    NotAdded {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// GC found stale attachments whose DEL failed, or a plugin's GC failed.
    #[error("network {network:?}: garbage collection: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Gc {
        network: String,
        errors: Vec<CniError>,
    },
}

fn rollback_suffix(rollback: &Option<Box<CniError>>) -> String {
    match rollback {
        Some(e) => format!("; the DEL that undid the ADD also failed: {e}"),
        None => String::new(),
    }
}

impl CniError {
    /// The CNI error code a plugin reported, if this error comes from one.
    pub fn code(&self) -> Option<u32> {
        match self {
            CniError::Plugin { error, .. } => error.code(),
            _ => None,
        }
    }

    /// The plugin type this error names, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            CniError::Plugin { plugin, .. } | CniError::InvalidResult { plugin, .. } => {
                Some(plugin)
            }
            _ => None,
        }
    }

    pub(crate) fn with_rollback(mut self, failed: Option<CniError>) -> Self {
        if let Some(f) = failed {
            match &mut self {
                CniError::Plugin { rollback, .. }
                | CniError::InvalidResult { rollback, .. }
                | CniError::Cache { rollback, .. } => *rollback = Some(Box::new(f)),
                _ => {}
            }
        }
        self
    }
}
