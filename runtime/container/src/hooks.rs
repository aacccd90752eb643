//! OCI lifecycle hooks: each runs with the container's state JSON on stdin, its own env, and
//! an optional timeout. Which failures abort and which only warn follows the spec: prestart,
//! createRuntime, createContainer and startContainer abort; poststart and poststop warn.

use crate::error::{Error, Result};
use oci_spec::runtime::{Hook, Spec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The state a hook reads on stdin (the spec's state object).
#[derive(Debug, Clone, Serialize)]
pub struct HookState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: String,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl HookState {
    pub fn new(
        spec: &Spec,
        id: &str,
        bundle: &std::path::Path,
        pid: i32,
        status: &str,
    ) -> HookState {
        HookState {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: status.into(),
            pid,
            bundle: bundle.to_path_buf(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }
}

pub fn hooks_of(spec: &Spec, kind: Kind) -> Vec<Hook> {
    let Some(h) = spec.hooks().as_ref() else {
        return Vec::new();
    };
    #[allow(deprecated)]
    let list = match kind {
        Kind::Prestart => h.prestart(),
        Kind::CreateRuntime => h.create_runtime(),
        Kind::CreateContainer => h.create_container(),
        Kind::StartContainer => h.start_container(),
        Kind::Poststart => h.poststart(),
        Kind::Poststop => h.poststop(),
    };
    list.clone().unwrap_or_default()
}

/// Runs every hook of `kind` in order; the first failure is returned.
pub fn run(spec: &Spec, kind: Kind, state: &HookState) -> Result<()> {
    let hooks = hooks_of(spec, kind);
    if hooks.is_empty() {
        return Ok(());
    }
    let input = serde_json::to_vec(state).map_err(|e| Error::State(e.to_string()))?;
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|msg| {
            Error::Init(format!(
                "{} hook #{i} ({}): {msg}",
                kind.name(),
                hook.path().display()
            ))
        })?;
    }
    Ok(())
}

/// Like [`run`], but a failure is logged and the remaining hooks still run.
pub fn run_warn(spec: &Spec, kind: Kind, state: &HookState) {
    let input = match serde_json::to_vec(state) {
        Ok(v) => v,
        Err(_) => return,
    };
    for (i, hook) in hooks_of(spec, kind).iter().enumerate() {
        if let Err(msg) = run_one(hook, &input) {
            tracing::warn!(hook = kind.name(), index = i, path = %hook.path().display(), error = %msg, "hook failed");
        }
    }
}

fn run_one(hook: &Hook, input: &[u8]) -> std::result::Result<(), String> {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(input);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {} s", hook.timeout().unwrap_or(0)));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
