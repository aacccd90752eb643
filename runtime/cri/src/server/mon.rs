//! keelsond's side of a container's life on the host: creating it through its monitor,
//! reading what the monitor recorded, and exec through the OCI CLI.

use super::{DResult, Daemon, DaemonError, internal};
use crate::monitor;
use keelson_proto::runtime::v1 as pb;
use std::path::Path;
use std::time::Duration;

/// What keelsond needs of a recorded exit.
pub struct Exit {
    pub exit_code: i32,
    pub finished_at: i64,
    pub oom_killed: bool,
}

/// The exit the monitor recorded, if the container has exited.
pub fn read_exit(exit_file: &Path) -> Option<Exit> {
    let x = match monitor::read_exit(exit_file) {
        Ok(x) => x?,
        Err(e) => {
            tracing::warn!(file = %exit_file.display(), error = %e, "unreadable exit file");
            return None;
        }
    };
    let finished_at = x
        .finished_at_time()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Some(Exit {
        exit_code: x.exit_code,
        finished_at,
        oom_killed: x.oom_killed,
    })
}

/// Whether the container's monitor (state dir `dir`) still runs.
pub fn monitor_alive(dir: &Path) -> bool {
    matches!(
        monitor::MonitorHandle::load(dir, &dir.join("exit.json")),
        Ok(Some(h)) if h.is_running()
    )
}

/// Waits (bounded) for the monitor of a deleted container to go.
pub fn wait_gone(dir: &Path, limit: Duration) {
    let end = std::time::Instant::now() + limit;
    while monitor_alive(dir) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the monitor to reopen the container's log file.
pub fn reopen_log(dir: &Path) -> DResult<()> {
    monitor::reopen_log(dir).map_err(|e| internal(format!("reopening the log: {e}")))
}

/// Creates the container under a new monitor (the container waits for `start`).
pub fn create(
    d: &Daemon,
    id: &str,
    bundle: &Path,
    dir: &Path,
    log_path: &str,
    exit_file: &Path,
    config: &pb::ContainerConfig,
) -> DResult<()> {
    if !log_path.is_empty()
        && let Some(parent) = Path::new(log_path).parent()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| internal(format!("creating log directory {}: {e}", parent.display())))?;
    }
    let opts = monitor::MonitorOptions {
        binary: Some(d.cfg.monitor_bin.clone()),
        root: d.cfg.engine_root(),
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        state_dir: dir.to_path_buf(),
        // No log path from the kubelet: the output is read and dropped.
        log_path: if log_path.is_empty() {
            "/dev/null".into()
        } else {
            log_path.into()
        },
        exit_file: exit_file.to_path_buf(),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        cgroup_layout: Some(d.cgroup_layout.clone()),
    };
    monitor::spawn(&opts)
        .map(|_| ())
        .map_err(|e| DaemonError::Invalid(format!("creating container {id}: {e}")))
}

/// Runs a command in a running container and collects its output (CRI ExecSync), through
/// the OCI CLI so no fork happens in this multi-threaded daemon. A timeout kills the command.
pub async fn exec_sync(
    d: &Daemon,
    id: &str,
    cmd: &[String],
    timeout_s: i64,
) -> DResult<pb::ExecSyncResponse> {
    let tmp = d.cfg.container_dir(id).join(format!(
        "exec-{}.pid",
        super::new_id()?.get(..12).unwrap_or("x")
    ));
    let mut c = tokio::process::Command::new(&d.cfg.keelson_bin);
    c.arg("--root")
        .arg(d.cfg.engine_root())
        .arg("exec")
        .arg("--pid-file")
        .arg(&tmp)
        .arg(id)
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = c
        .spawn()
        .map_err(|e| internal(format!("running {}: {e}", d.cfg.keelson_bin.display())))?;
    let fut = child.wait_with_output();
    let out = if timeout_s > 0 {
        match tokio::time::timeout(
            Duration::from_secs(u64::try_from(timeout_s).unwrap_or(0)),
            fut,
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                // The exec'd process lives in the container: kill it by its recorded pid.
                if let Ok(s) = std::fs::read_to_string(&tmp)
                    && let Ok(pid) = s.trim().parse::<i32>()
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = std::fs::remove_file(&tmp);
                return Err(DaemonError::DeadlineExceeded(format!(
                    "command {cmd:?} timed out after {timeout_s}s"
                )));
            }
        }
    } else {
        fut.await
    };
    let _ = std::fs::remove_file(&tmp);
    let out = out.map_err(|e| internal(format!("exec: {e}")))?;
    Ok(pb::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.status.code().unwrap_or(255),
    })
}
