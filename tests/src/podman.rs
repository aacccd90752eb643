//! A private podman for drop-in tests: its own storage (vfs), run dir and runtime root in a
//! temp dir, cgroupfs, no network and no events, and an OCI runtime of the test's choosing.
//! Drop removes its containers, unmounts what it left below its dir and deletes the dir.

use crate::{bounded, mountinfo};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// How long one podman command may take before it counts as hung.
pub const LIMIT: Duration = Duration::from_secs(120);

pub struct Podman {
    dir: TempDir,
    runtime: PathBuf,
}

impl Podman {
    pub fn new(runtime: &Path) -> io::Result<Podman> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-podman-")
            .tempdir()?;
        Ok(Podman {
            dir,
            runtime: runtime.to_path_buf(),
        })
    }

    fn base(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("networks"))
            .arg("--volumepath")
            .arg(d.join("volumes"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .arg("--runtime")
            .arg(&self.runtime)
            .arg(format!(
                "--runtime-flag=root={}",
                d.join("runtime").display()
            ))
            // The runtime's own log, for the report when a command hangs or fails.
            .arg(format!(
                "--runtime-flag=log={}",
                d.join("runtime.log").display()
            ))
            .arg("--runtime-flag=debug")
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman <args>` (at most [`LIMIT`]; a hang is an error that carries the runtime's log).
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> io::Result<Output> {
        self.bounded(self.base().args(args))
    }

    /// What the OCI runtime logged for every podman command so far.
    pub fn runtime_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtime.log")).unwrap_or_default()
    }

    fn bounded(&self, cmd: &mut Command) -> io::Result<Output> {
        bounded::output(cmd, LIMIT).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                io::Error::new(
                    e.kind(),
                    format!("{e}\nruntime log:\n{}", self.runtime_log()),
                )
            } else {
                e
            }
        })
    }

    /// Runs `podman <args>` with a pseudo-terminal on podman's side (for `-t`), via script(1).
    pub fn cmd_tty(&self, args: &[&str]) -> io::Result<Output> {
        let base = self.base();
        let mut line: Vec<String> = std::iter::once(base.get_program())
            .chain(base.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        line.extend(args.iter().map(|a| shell_quote(a)));
        self.bounded(
            Command::new("script")
                .args(["-qec", &line.join(" "), "/dev/null"])
                .stdin(Stdio::null()),
        )
    }

    /// Flags every `run` needs on this machine: no network, never a pull (the image is loaded
    /// first; a registry lookup has no business in a test), and ulimits within what this
    /// environment's root may set (it lacks CAP_SYS_RESOURCE; podman's defaults exceed that).
    pub fn run_flags() -> Vec<&'static str> {
        vec![
            "--network",
            "none",
            "--pull",
            "never",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ]
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        if let Ok(mounts) = mountinfo::mounts_below(self.dir.path()) {
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
