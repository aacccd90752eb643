//! keelsond's side: starting a monitor, finding it again, asking it to reopen its log, reading
//! the exit file.

use super::pidfile::{self, PidRecord};
use super::{Error, ExitStatus, Result, attach, exit};
use keelson_container::cgroups::Layout;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The binary's name, looked up next to the current executable by default.
pub const BINARY_NAME: &str = "keelson-monitor";

/// What `keelson-monitor create` is told (its flags, one field each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorOptions {
    /// The `keelson-monitor` binary; [`default_binary`] when `None`.
    pub binary: Option<PathBuf>,
    /// `--root`: the engine's state root.
    pub root: PathBuf,
    /// `--id`: the container id.
    pub id: String,
    /// `--bundle`: the OCI bundle directory.
    pub bundle: PathBuf,
    /// `--log-path`: the CRI log file (its directory must exist).
    pub log_path: PathBuf,
    /// `--exit-file`: where the exit status goes.
    pub exit_file: PathBuf,
    /// `--state-dir`: the monitor's own directory (pid file, sockets, diagnostics), created if
    /// missing; one per container.
    pub state_dir: PathBuf,
    /// `--stdin`: keep the container's stdin open for attach.
    pub stdin: bool,
    /// `--stdin-once`: close the container's stdin when the first attach's stdin ends.
    pub stdin_once: bool,
    /// `--tty`: the container has a terminal (its config must say `process.terminal`).
    pub tty: bool,
    /// `--cgroup-layout`: the cgroup layout keelsond discovered (JSON), so the monitor does
    /// not read mountinfo again; the monitor discovers it when `None`.
    pub cgroup_layout: Option<Layout>,
}

impl MonitorOptions {
    /// The command line after the binary: `create --root ... [--stdin] ...`.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["create".into()];
        let mut pair = |flag: &str, v: &Path| {
            a.push(flag.into());
            a.push(v.as_os_str().to_owned());
        };
        pair("--root", &self.root);
        pair("--id", Path::new(&self.id));
        pair("--bundle", &self.bundle);
        pair("--log-path", &self.log_path);
        pair("--exit-file", &self.exit_file);
        pair("--state-dir", &self.state_dir);
        if let Some(l) = &self.cgroup_layout {
            // A layout always serializes (plain strings, paths and bools).
            if let Ok(json) = serde_json::to_string(l) {
                a.push("--cgroup-layout".into());
                a.push(json.into());
            }
        }
        for (on, flag) in [
            (self.stdin, "--stdin"),
            (self.stdin_once, "--stdin-once"),
            (self.tty, "--tty"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a
    }
}

/// `keelson-monitor` next to the current executable.
pub fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(super::io_err("finding the current executable"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::Options(format!("{} has no parent directory", exe.display())))?;
    Ok(dir.join(BINARY_NAME))
}

/// What `keelson-monitor create` prints on success (one JSON line on stdout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub monitor_pid: i32,
    /// Start time of the monitor (field 22 of `/proc/<pid>/stat`).
    pub monitor_start_time: u64,
    /// The container init's pid.
    pub init_pid: i32,
}

/// A running (or once running) monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorHandle {
    pub monitor_pid: i32,
    pub monitor_start_time: u64,
    pub init_pid: i32,
    pub state_dir: PathBuf,
    pub exit_file: PathBuf,
}

/// Starts a monitor that creates the container, and waits for the engine's answer: `Ok` once
/// the container is created (keelsond then calls the engine's `start`), or
/// [`Error::Create`] with the engine's message. Blocks; an async caller runs it on a blocking
/// thread.
pub fn spawn(opts: &MonitorOptions) -> Result<MonitorHandle> {
    if opts.id.is_empty() {
        return Err(Error::Options("the container id is empty".into()));
    }
    let bin = match &opts.binary {
        Some(b) => b.clone(),
        None => default_binary()?,
    };
    let _span = tracing::debug_span!("monitor", id = %opts.id).entered();
    let out = Command::new(&bin)
        .args(opts.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| Error::Spawn {
            path: bin.clone(),
            source,
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let msg = if msg.is_empty() {
            format!("{} exited with {}", bin.display(), out.status)
        } else {
            msg
        };
        return Err(Error::Create(msg));
    }
    let created: Created = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Protocol(format!(
            "{e}: {:?}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    })?;
    tracing::debug!(
        monitor_pid = created.monitor_pid,
        init_pid = created.init_pid,
        "container created"
    );
    Ok(MonitorHandle {
        monitor_pid: created.monitor_pid,
        monitor_start_time: created.monitor_start_time,
        init_pid: created.init_pid,
        state_dir: std::path::absolute(&opts.state_dir)
            .map_err(super::io_err("resolving the state dir"))?,
        exit_file: std::path::absolute(&opts.exit_file)
            .map_err(super::io_err("resolving the exit file"))?,
    })
}

/// Asks the monitor whose state directory is `state_dir` to reopen its log file (CRI
/// `ReopenContainerLog`). [`Error::NotRunning`] when no monitor runs there.
pub fn reopen_log(state_dir: &Path) -> Result<()> {
    let rec = pidfile::read(state_dir)?.ok_or_else(|| Error::NotRunning(state_dir.into()))?;
    if pidfile::signal(rec.pid, rec.start_time, libc::SIGUSR1)? {
        Ok(())
    } else {
        Err(Error::NotRunning(state_dir.into()))
    }
}

impl MonitorHandle {
    /// Finds the monitor of `state_dir` again (after a keelsond restart) from its pid file;
    /// `None` if it wrote none or removed it on exit.
    pub fn load(state_dir: &Path, exit_file: &Path) -> Result<Option<MonitorHandle>> {
        Ok(pidfile::read(state_dir)?.map(|r: PidRecord| MonitorHandle {
            monitor_pid: r.pid,
            monitor_start_time: r.start_time,
            init_pid: r.init_pid,
            state_dir: state_dir.to_path_buf(),
            exit_file: exit_file.to_path_buf(),
        }))
    }

    /// Whether the monitor process is still running.
    pub fn is_running(&self) -> bool {
        pidfile::alive(self.monitor_pid, self.monitor_start_time)
    }

    /// A pidfd on the monitor, readable once it has exited (after recording the container's
    /// exit); `None` if it is gone already.
    pub fn pidfd(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        pidfile::open(self.monitor_pid, self.monitor_start_time)
    }

    /// Asks the monitor to reopen its log file.
    pub fn reopen_log(&self) -> Result<()> {
        if pidfile::signal(self.monitor_pid, self.monitor_start_time, libc::SIGUSR1)? {
            Ok(())
        } else {
            Err(Error::NotRunning(self.state_dir.clone()))
        }
    }

    /// The exit status, once the container exited and the monitor recorded it.
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        exit::read_exit(&self.exit_file)
    }

    /// Waits up to `timeout` for the exit status.
    pub fn wait(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        exit::wait_exit(&self.exit_file, timeout)
    }

    /// The attach socket's path.
    pub fn attach_socket(&self) -> PathBuf {
        self.state_dir.join(attach::SOCKET_NAME)
    }

    /// SIGKILLs the monitor if it is still the recorded process (cleanup of last resort: the
    /// container's exit status is lost). Returns whether a signal was sent.
    pub fn kill(&self) -> Result<bool> {
        pidfile::signal(self.monitor_pid, self.monitor_start_time, libc::SIGKILL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_every_option() {
        let opts = MonitorOptions {
            binary: None,
            root: "/run/keelson".into(),
            id: "c1".into(),
            bundle: "/b".into(),
            log_path: "/l".into(),
            exit_file: "/e".into(),
            state_dir: "/s".into(),
            stdin: true,
            stdin_once: false,
            tty: true,
            cgroup_layout: None,
        };
        let args: Vec<String> = opts
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "create --root /run/keelson --id c1 --bundle /b --log-path /l --exit-file /e \
             --state-dir /s --stdin --tty"
        );
        // A layout goes as one JSON argument that reads back the same.
        let layout = Layout {
            hierarchies: Vec::new(),
            unified: true,
        };
        let with = MonitorOptions {
            cgroup_layout: Some(layout.clone()),
            ..opts
        };
        let args = with.args();
        let at = args
            .iter()
            .position(|a| a == "--cgroup-layout")
            .expect("--cgroup-layout");
        let json = args[at + 1].to_str().expect("utf-8");
        assert_eq!(serde_json::from_str::<Layout>(json).ok(), Some(layout));
    }
}
