//! Writing and reading sysctls under `/proc/sys` (net.* ones act on the calling thread's netns).

use crate::error::{CniError, Result};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Writes `value` to the sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`; interface names with
/// dots are not supported).
pub fn set(key: &str, value: &str) -> Result<()> {
    std::fs::write(path(key), value)
        .map_err(|e| CniError::io(format!("failed to set sysctl {key}={value}"), e))
}

pub fn get(key: &str) -> Result<String> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| CniError::io(format!("failed to read sysctl {key}"), e))
}
