//! Driving a runc-compatible OCI runtime CLI (keelson, runc, crun) the way containerd's shim
//! and podman do: one process per command, each runtime with its own `--root`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::procs::ProcessId;
use crate::{Bundle, unique};

/// How long one runtime command may take before it is killed, unless
/// `KEELSON_TEST_TIMEOUT_SECS` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a runtime command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// The whole command line, for messages.
    pub command: String,
    /// The exit code; `128 + signal` when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    fn from_status(command: String, status: ExitStatus, stdout: String, stderr: String) -> Self {
        let signal = status.signal();
        let code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
        CmdOutput {
            command,
            code,
            signal,
            stdout,
            stderr,
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }

    /// Whether stderr holds `message`, verbatim or with its double quotes escaped the way
    /// runc's text log lines (`level=error msg="unknown signal \"FOO\""`) print them.
    pub fn stderr_mentions(&self, message: &str) -> bool {
        let escaped = message.replace('"', "\\\"");
        self.stderr.contains(message) || self.stderr.contains(&escaped)
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// `Err` carrying the whole output unless the command succeeded.
    pub fn check(self) -> io::Result<CmdOutput> {
        if self.success() {
            Ok(self)
        } else {
            Err(io::Error::other(self.to_string()))
        }
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` exited {}", self.command, self.code)?;
        if let Some(sig) = self.signal {
            write!(f, " (signal {sig})")?;
        }
        write!(
            f,
            "\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

fn timeout_from_env() -> Duration {
    std::env::var("KEELSON_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Where the workspace's debug binaries are: `debug/` in the `CARGO_TARGET_DIR` these tests
/// were built with (if any), then `<workspace>/target/debug`.
pub fn build_dirs() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut dirs = Vec::new();
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        dirs.push(workspace.join(dir).join("debug"));
    }
    dirs.push(workspace.join("target/debug"));
    dirs
}

/// A workspace binary the tests drive: `$<env_var>` when set (it must exist), else the first
/// of [`build_dirs`] that holds `name`.
pub fn built_binary(env_var: &str, name: &str, package: &str) -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{env_var}={} is not a file", bin.display()),
        ));
    }
    let candidates: Vec<PathBuf> = build_dirs().into_iter().map(|d| d.join(name)).collect();
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{name} binary not found (tried {candidates:?}); build it with \
                 `cargo build -p {package}` or set {env_var}"
                ),
            )
        })
}

/// The keelson binary the tests drive: `$KEELSON_BIN`, else the workspace's debug build.
pub fn keelson_binary() -> io::Result<PathBuf> {
    built_binary("KEELSON_BIN", "keelson", "keelson-container")
}

fn binary_from_env(var: &str, default: &str) -> io::Result<PathBuf> {
    let bin = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found (set {var})", bin.display()),
        ))
    }
}

/// A runtime CLI with its own state directory (`--root`), removed on Drop together with any
/// container still listed there.
#[derive(Debug)]
pub struct Runtime {
    /// The CLI binary.
    pub bin: PathBuf,
    /// The state directory passed as `--root`.
    pub root: TempDir,
    /// Files receiving the stdout/stderr of every command (and of created containers).
    io_dir: TempDir,
    name: String,
    global_args: Vec<OsString>,
    timeout: Duration,
}

impl Runtime {
    /// keelson, found by [`keelson_binary`].
    pub fn keelson() -> io::Result<Runtime> {
        Runtime::with_binary("keelson", keelson_binary()?)
    }

    /// runc: `$KEELSON_TEST_RUNC` or `/usr/sbin/runc`.
    pub fn runc() -> io::Result<Runtime> {
        Runtime::with_binary(
            "runc",
            binary_from_env("KEELSON_TEST_RUNC", "/usr/sbin/runc")?,
        )
    }

    /// crun: `$KEELSON_TEST_CRUN` or `/usr/bin/crun`.
    pub fn crun() -> io::Result<Runtime> {
        Runtime::with_binary(
            "crun",
            binary_from_env("KEELSON_TEST_CRUN", "/usr/bin/crun")?,
        )
    }

    /// Any runc-compatible binary; `name` is only used in messages and temp dir names.
    pub fn with_binary(name: &str, bin: impl Into<PathBuf>) -> io::Result<Runtime> {
        let name = unique::sanitize(name, 16);
        let root = tempfile::Builder::new()
            .prefix(&format!("keelson-root-{name}-"))
            .tempdir()?;
        let io_dir = tempfile::Builder::new()
            .prefix(&format!("keelson-io-{name}-"))
            .tempdir()?;
        Ok(Runtime {
            bin: bin.into(),
            root,
            io_dir,
            name,
            global_args: Vec::new(),
            timeout: timeout_from_env(),
        })
    }

    /// Global flags put before every command (after `--root`), e.g. `--debug`.
    pub fn with_global_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.global_args = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// How long one command may run before it is killed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `keelson`, `runc`, `crun`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `--root` directory.
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }

    /// Entries in the `--root` directory (container state dirs and whatever else the runtime
    /// keeps there).
    pub fn root_entries(&self) -> Vec<String> {
        fs::read_dir(self.root.path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn base_args(&self) -> Vec<OsString> {
        let mut args = vec![
            OsString::from("--root"),
            self.root.path().as_os_str().to_owned(),
        ];
        args.extend(self.global_args.iter().cloned());
        args
    }

    /// Runs `<bin> --root <root> [global args] <args>` and waits for it.
    pub fn cmd<I, S>(&self, args: I) -> io::Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = self.base_args();
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.exec(&all, None, None, self.timeout)
    }

    /// [`Runtime::cmd`] with another working directory (for `spec`).
    pub fn cmd_in<I, S>(&self, cwd: &Path, args: I) -> io::Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = self.base_args();
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.exec(&all, Some(cwd), None, self.timeout)
    }

    /// Runs the binary with exactly `args` (no `--root`), for testing global flags.
    pub fn cmd_raw<I, S>(&self, args: I) -> io::Result<CmdOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let all: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.exec(&all, None, None, self.timeout)
    }

    /// Runs a command whose container may inherit stdout/stderr: both go to files named after
    /// `id` (appended to), so the runtime returning is never held up by the container keeping
    /// a pipe open. The container's later output lands in the same files, see
    /// [`Runtime::container_output`].
    fn cmd_for_container(&self, id: &str, args: Vec<OsString>) -> io::Result<CmdOutput> {
        let mut all = self.base_args();
        all.extend(args);
        self.exec(&all, None, Some(id), self.timeout)
    }

    fn io_paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.io_dir.path().join(format!("{key}.out")),
            self.io_dir.path().join(format!("{key}.err")),
        )
    }

    /// What containers created with `id` (by [`Runtime::create`] or [`Runtime::run`]) have
    /// written so far, together with the runtime's own output of those commands:
    /// (stdout, stderr).
    pub fn container_output(&self, id: &str) -> (String, String) {
        let (out, err) = self.io_paths(&format!("ctr-{}", unique::sanitize(id, 64)));
        (
            fs::read_to_string(out).unwrap_or_default(),
            fs::read_to_string(err).unwrap_or_default(),
        )
    }

    fn exec(
        &self,
        args: &[OsString],
        cwd: Option<&Path>,
        container_id: Option<&str>,
        timeout: Duration,
    ) -> io::Result<CmdOutput> {
        let key = match container_id {
            Some(id) => format!("ctr-{}", unique::sanitize(id, 64)),
            None => format!("cmd-{}", unique::next()),
        };
        let (out_path, err_path) = self.io_paths(&key);
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(path)
        };
        let out_file = open(&out_path)?;
        let err_file = open(&err_path)?;
        let out_start = out_file.metadata()?.len();
        let err_start = err_file.metadata()?.len();
        let command_line = std::iter::once(self.bin.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone()?)
            .stderr(err_file.try_clone()?)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn `{command_line}`: {e}")))?;
        let status = wait_with_timeout(&mut child, timeout);
        let read_from = |path: &Path, start: u64| -> String {
            let mut text = String::new();
            if let Ok(mut f) = fs::File::open(path) {
                if f.seek(SeekFrom::Start(start)).is_ok() {
                    let mut bytes = Vec::new();
                    let _ = f.read_to_end(&mut bytes);
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
            text
        };
        let stdout = read_from(&out_path, out_start);
        let stderr = read_from(&err_path, err_start);
        if container_id.is_none() {
            let _ = fs::remove_file(&out_path);
            let _ = fs::remove_file(&err_path);
        }
        match status {
            Some(status) => Ok(CmdOutput::from_status(command_line, status, stdout, stderr)),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "`{command_line}` did not finish within {timeout:?} and was killed\n\
                     --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                ),
            )),
        }
    }

    /// `create --bundle <bundle> <id>`; the container's stdio goes to files (stdin /dev/null).
    pub fn create(&self, bundle: &Bundle, id: &str) -> io::Result<CmdOutput> {
        self.create_with::<&str>(bundle, id, &[])
    }

    /// `create --bundle <bundle> <extra...> <id>`, e.g. with `["--pid-file", F]`.
    pub fn create_with<S: AsRef<OsStr>>(
        &self,
        bundle: &Bundle,
        id: &str,
        extra: &[S],
    ) -> io::Result<CmdOutput> {
        let mut args: Vec<OsString> =
            vec!["create".into(), "--bundle".into(), bundle.path().into()];
        args.extend(extra.iter().map(|a| a.as_ref().to_owned()));
        args.push(id.into());
        self.cmd_for_container(id, args)
    }

    /// `run --bundle <bundle> <id>` in the foreground: returns when the container exits, with
    /// the container's exit code and output.
    pub fn run(&self, bundle: &Bundle, id: &str) -> io::Result<CmdOutput> {
        self.cmd_for_container(
            id,
            vec![
                "run".into(),
                "--bundle".into(),
                bundle.path().into(),
                id.into(),
            ],
        )
    }

    /// `run --detach --bundle <bundle> <id>`.
    pub fn run_detached(&self, bundle: &Bundle, id: &str) -> io::Result<CmdOutput> {
        self.cmd_for_container(
            id,
            vec![
                "run".into(),
                "--detach".into(),
                "--bundle".into(),
                bundle.path().into(),
                id.into(),
            ],
        )
    }

    /// `start <id>`.
    pub fn start(&self, id: &str) -> io::Result<CmdOutput> {
        self.cmd(["start", id])
    }

    /// `state <id>` parsed; `Err` when the command fails or prints no JSON.
    pub fn state(&self, id: &str) -> io::Result<Value> {
        let out = self.cmd(["state", id])?.check()?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("state of {id} is not JSON ({e}): {out}"),
            )
        })
    }

    /// The `status` field of `state <id>`.
    pub fn status(&self, id: &str) -> io::Result<String> {
        let state = self.state(id)?;
        state["status"].as_str().map(str::to_string).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no status in {state}"))
        })
    }

    /// Polls `state <id>` until its status is `status`; returns that state.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> io::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(id)?;
            if state["status"] == status {
                return Ok(state);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{id} did not become {status} within {timeout:?}: {state}"),
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// `kill <id> <signal>`.
    pub fn kill(&self, id: &str, signal: &str) -> io::Result<CmdOutput> {
        self.cmd(["kill", id, signal])
    }

    /// `kill --all <id> <signal>`.
    pub fn kill_all(&self, id: &str, signal: &str) -> io::Result<CmdOutput> {
        self.cmd(["kill", "--all", id, signal])
    }

    /// `delete <id>`.
    pub fn delete(&self, id: &str) -> io::Result<CmdOutput> {
        self.cmd(["delete", id])
    }

    /// `delete --force <id>`.
    pub fn delete_force(&self, id: &str) -> io::Result<CmdOutput> {
        self.cmd(["delete", "--force", id])
    }

    /// `list --format json` parsed (runc prints `null` for no containers; that becomes `[]`).
    pub fn list_json(&self) -> io::Result<Value> {
        let out = self.cmd(["list", "--format", "json"])?.check()?;
        let value: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("list is not JSON ({e}): {out}"),
            )
        })?;
        Ok(if value.is_null() {
            Value::Array(Vec::new())
        } else {
            value
        })
    }

    /// A guard that force-deletes container `id` when dropped.
    pub fn guard(&self, id: &str) -> ContainerGuard<'_> {
        ContainerGuard {
            runtime: self,
            id: id.to_string(),
            process: None,
        }
    }

    /// Starts `<bin> --root <root> <args>` in the background with stdout read line by line
    /// (for `events`). The process is killed when the handle is dropped.
    pub fn spawn<I, S>(&self, args: I) -> io::Result<Background>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = self.base_args();
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let err_path = self
            .io_dir
            .path()
            .join(format!("bg-{}.err", unique::next()));
        let mut child = Command::new(&self.bin)
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&err_path)?)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut all) = sink.lock() {
                        all.push(line);
                    }
                }
            });
        }
        Ok(Background {
            child,
            lines,
            err_path,
        })
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return child.wait().ok(),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.root_entries().is_empty() {
            return;
        }
        // A test left containers behind: force-delete every one the runtime still knows.
        if let Ok(Value::Array(list)) = self.list_json() {
            for entry in list {
                if let Some(id) = entry["id"].as_str() {
                    let pid = entry["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                    let process = pid.and_then(ProcessId::of);
                    let _ = self.delete_force(id);
                    if let Some(p) = process {
                        p.kill();
                    }
                }
            }
        }
    }
}

/// A process started with [`Runtime::spawn`]; its stdout is collected line by line.
#[derive(Debug)]
pub struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    err_path: PathBuf,
}

impl Background {
    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Waits until a printed line satisfies `pred`, up to `timeout`.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and returns everything it printed.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader thread drain what is left in the pipe.
        sleep(Duration::from_millis(20));
        self.lines()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.err_path);
    }
}

/// Force-deletes a container when dropped, so a failing test leaves no process behind. As a
/// last resort it SIGKILLs the container's init process, if it recorded one that still runs.
#[derive(Debug)]
pub struct ContainerGuard<'a> {
    runtime: &'a Runtime,
    id: String,
    process: Option<ProcessId>,
}

impl ContainerGuard<'_> {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Remembers `pid` (with its start time) as the container's init process.
    pub fn record_pid(&mut self, pid: i32) {
        self.process = ProcessId::of(pid);
    }

    /// Records the pid from `state`, if the container exists and is not stopped.
    pub fn record_from_state(&mut self) {
        if let Ok(state) = self.runtime.state(&self.id) {
            if state["status"] != "stopped" {
                if let Some(pid) = state["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                    self.record_pid(pid);
                }
            }
        }
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        if self.process.is_none() {
            self.record_from_state();
        }
        let _ = self.runtime.delete_force(&self.id);
        if let Some(process) = self.process {
            let deadline = Instant::now() + Duration::from_secs(5);
            while process.is_alive() && Instant::now() < deadline {
                process.kill();
                sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A detached `sleep 1000` container; dropping it force-deletes the container (the guard)
/// before it removes the bundle.
pub struct Running<'a> {
    pub guard: ContainerGuard<'a>,
    pub pid: i64,
    _bundle: crate::Bundle,
}

impl<'a> std::ops::Deref for Running<'a> {
    type Target = ContainerGuard<'a>;
    fn deref(&self) -> &ContainerGuard<'a> {
        &self.guard
    }
}

impl Runtime {
    /// Runs a busybox `sleep 1000` container, detached, in `cgroups_path`.
    pub fn running(&self, cgroups_path: &str, hint: &str) -> io::Result<Running<'_>> {
        let mut b = crate::Bundle::busybox(hint)?;
        b.set_args(&["sleep", "1000"]);
        b.set_cgroups_path(cgroups_path);
        b.save()?;
        let id = crate::unique::container_id(hint);
        let mut guard = self.guard(&id);
        self.run_detached(&b, &id)?.check()?;
        guard.record_from_state();
        let pid = self.state(&id)?["pid"].as_i64().ok_or_else(|| {
            io::Error::other(format!("{}: state of {id} has no pid", self.name()))
        })?;
        Ok(Running {
            guard,
            pid,
            _bundle: b,
        })
    }
}
