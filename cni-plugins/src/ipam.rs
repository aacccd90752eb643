//! Executing the IPAM plugin named in a config's `ipam.type`, found through `CNI_PATH`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::error::{CniError, Code, Result};
use crate::skel::Args;
use crate::types::CniResult;

/// The IPAM plugin's executable.
pub fn find(args: &Args, conf: &Value) -> Result<PathBuf> {
    let ty = conf
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| CniError::config("ipam.type is missing or invalid"))?;
    args.path
        .iter()
        .map(|d| d.join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("failed to find plugin {ty:?} in path {:?}", args.path),
            )
        })
}

/// A started IPAM plugin: the caller does other work while it runs, then [`Pending::wait`]s.
pub struct Pending {
    bin: PathBuf,
    child: Child,
}

/// Starts the IPAM plugin with `command` and the same config on its stdin.
pub fn spawn(args: &Args, conf: &Value, command: &str) -> Result<Pending> {
    let bin = find(args, conf)?;
    let input = serde_json::to_vec(conf).map_err(|e| CniError::io("encode ipam config", e))?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to run {}", bin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin closes it: the plugin reads to EOF.
        stdin
            .write_all(&input)
            .map_err(|e| CniError::io("write to ipam plugin", e))?;
    }
    Ok(Pending { bin, child })
}

impl Pending {
    /// Waits for the plugin; its stdout, or its error passed on unchanged.
    pub fn wait(self) -> Result<Vec<u8>> {
        let bin = self.bin;
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| CniError::io("wait for ipam plugin", e))?;
        if !out.status.success() {
            if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                return Err(CniError {
                    code: v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
                    msg: v
                        .get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or("ipam plugin failed")
                        .to_string(),
                    details: v.get("details").and_then(Value::as_str).map(String::from),
                });
            }
            return Err(CniError::plugin(format!(
                "ipam plugin {} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// Waits for an ADD and decodes its result.
    pub fn result(self) -> Result<CniResult> {
        let out = self.wait()?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| CniError::with_details(Code::Decode, "failed to decode IPAM result", e))?;
        CniResult::from_value(&v)
    }
}

/// Runs the IPAM plugin with `command` and the same config; returns its stdout.
pub fn exec(args: &Args, conf: &Value, command: &str) -> Result<Vec<u8>> {
    spawn(args, conf, command)?.wait()
}

pub fn add(args: &Args, conf: &Value) -> Result<CniResult> {
    spawn(args, conf, "ADD")?.result()
}

pub fn del(args: &Args, conf: &Value) -> Result<()> {
    exec(args, conf, "DEL").map(|_| ())
}

pub fn check(args: &Args, conf: &Value) -> Result<()> {
    exec(args, conf, "CHECK").map(|_| ())
}
