//! The CNI error type: a spec error code, a message and optional details.

use serde_json::json;

/// Error codes of the CNI spec (section "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    PluginNotAvailableLimited = 51,
    /// Plugin-specific failures (the spec reserves 100+ for plugins).
    Plugin = 100,
    /// libcni's `ErrInternal`: what the reference's skel reports for a plain Go error (e.g.
    /// unknown CNI_ARGS).
    Internal = 999,
}

/// An error reported to the caller as the spec's JSON error object.
#[derive(Debug, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(code: Code, msg: impl Into<String>, details: impl ToString) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: Some(details.to_string()),
        }
    }

    pub fn io(msg: impl Into<String>, e: impl ToString) -> Self {
        Self::with_details(Code::Io, msg, e)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, msg)
    }

    pub fn plugin(msg: impl Into<String>) -> Self {
        Self::new(Code::Plugin, msg)
    }

    /// The spec's error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if let Some(d) = &self.details {
            v["details"] = json!(d);
        }
        v
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
