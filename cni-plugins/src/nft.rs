//! nftables through the `nft` binary: scripts as one transaction, and rules found and deleted
//! by their comment.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{CniError, Code, Result};

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| CniError::io("failed to run nft", e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            Code::Plugin,
            "nft failed",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an nft script as one transaction.
pub fn run(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io("failed to run nft", e))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(script.as_bytes())
            .map_err(|e| CniError::io("failed to write to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io("failed to wait for nft", e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            Code::Plugin,
            "nft failed",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// (chain, handle) of every rule tagged `tag`.
pub fn tagged_rules(family: &str, table: &str, tag: &str) -> Result<Vec<(String, u64)>> {
    let out = match output(Command::new("nft").args(["-j", "list", "table", family, table])) {
        Ok(o) => o,
        // No table: nothing of ours exists.
        Err(e)
            if e.details
                .as_deref()
                .is_some_and(|d| d.contains("No such file")) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| CniError::with_details(Code::Plugin, "cannot parse nft output", e))?;
    let mut found = Vec::new();
    for item in v
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if rule.get("comment").and_then(Value::as_str) != Some(tag) {
            continue;
        }
        if let (Some(chain), Some(handle)) = (
            rule.get("chain").and_then(Value::as_str),
            rule.get("handle").and_then(Value::as_u64),
        ) {
            found.push((chain.to_string(), handle));
        }
    }
    Ok(found)
}

pub fn delete_tagged(family: &str, table: &str, tag: &str) -> Result<()> {
    let rules = tagged_rules(family, table, tag)?;
    if rules.is_empty() {
        return Ok(());
    }
    let script: String = rules
        .iter()
        .map(|(chain, h)| format!("delete rule {family} {table} {chain} handle {h}\n"))
        .collect();
    run(&script)
}

/// FNV-1a, stable across builds, for rule comments.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
