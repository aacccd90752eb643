//! Running one plugin binary: CNI_* environment, config on stdin, stdout/stderr captured, a
//! deadline after which the plugin's whole process group is SIGKILLed.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::error::{ErrorReply, PluginError};

/// Largest stdout accepted from a plugin.
const MAX_STDOUT: usize = 16 << 20;
/// Stderr kept for error messages (the rest is read and dropped).
const MAX_STDERR: usize = 64 << 10;
/// Tries when exec fails with ETXTBSY (the binary is being written), one second apart, like
/// libcni.
const TEXT_BUSY_RETRIES: u32 = 5;

/// `CNI_PATH`: the bin dirs joined by ':'.
pub(crate) fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// The first regular, executable file named `plugin` in `dirs`.
pub(crate) fn find_in_path(plugin: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return None;
    }
    dirs.iter().map(|d| d.join(plugin)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The per-invocation environment (CNI_COMMAND and friends).
#[derive(Debug, Clone, Default)]
pub(crate) struct CniEnv {
    pub command: &'static str,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl CniEnv {
    fn vars(&self) -> [(&'static str, &str); 6] {
        [
            ("CNI_COMMAND", self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_ARGS", &self.args),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_PATH", &self.path),
        ]
    }
}

/// Runs `path` with `stdin` and `env` (added to the daemon's own environment, as libcni does),
/// bounded by `timeout`. Returns stdout on exit 0; on a non-zero exit the plugin's CNI error
/// object (or its stderr) as a [`PluginError`].
pub(crate) fn exec_plugin(
    path: &Path,
    stdin: &[u8],
    env: &CniEnv,
    timeout: Duration,
) -> Result<Vec<u8>, PluginError> {
    let mut tries = 0;
    let child = loop {
        let mut cmd = Command::new(path);
        cmd.envs(env.vars())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout kills the plugin and what it delegated to.
            .process_group(0);
        match cmd.spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < TEXT_BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(source) => {
                return Err(PluginError::Spawn {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    };
    let mut running = Running {
        child,
        killed: false,
    };
    let deadline = Instant::now() + timeout;
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let outcome = running.communicate(stdin, deadline).map_err(io)?;
    let (stdout, stderr) = match outcome {
        Communicated::Done { stdout, stderr } => (stdout, stderr),
        Communicated::TimedOut { stderr } => {
            running.kill();
            return Err(PluginError::Timeout {
                timeout,
                stderr: lossy(&stderr),
            });
        }
        Communicated::TooLarge => {
            running.kill();
            return Err(PluginError::OutputTooLarge { limit: MAX_STDOUT });
        }
    };
    let Some(status) = running.wait_until(deadline).map_err(io)? else {
        running.kill();
        return Err(PluginError::Timeout {
            timeout,
            stderr: lossy(&stderr),
        });
    };
    if status.success() {
        if !stderr.is_empty() {
            tracing::debug!(plugin = %path.display(), stderr = %lossy(&stderr), "CNI plugin stderr");
        }
        return Ok(stdout);
    }
    Err(plugin_failure(status, &stdout, &stderr))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The error of a plugin that exited non-zero: its CNI error object if stdout holds one.
fn plugin_failure(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> PluginError {
    if let Ok(reply) = serde_json::from_slice::<ErrorReply>(stdout) {
        if reply.code != 0 || !reply.msg.is_empty() {
            return PluginError::Reported {
                reply,
                stderr: lossy(stderr),
            };
        }
    }
    PluginError::Failed {
        status: status.to_string(),
        stdout: lossy(stdout),
        stderr: lossy(stderr),
    }
}

enum Communicated {
    Done { stdout: Vec<u8>, stderr: Vec<u8> },
    TimedOut { stderr: Vec<u8> },
    TooLarge,
}

/// A spawned plugin; dropping it without a successful wait kills its process group.
struct Running {
    child: Child,
    killed: bool,
}

fn set_nonblocking(fd: impl AsFd) -> std::io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Reads what is available; `Ok(true)` at end of file.
fn drain(r: &mut impl Read, into: &mut Vec<u8>, keep: usize) -> std::io::Result<bool> {
    let mut buf = [0u8; 16 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                let room = keep.saturating_sub(into.len());
                into.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Running {
    /// Feeds stdin and collects stdout/stderr until both close or the deadline passes.
    fn communicate(&mut self, input: &[u8], deadline: Instant) -> std::io::Result<Communicated> {
        let mut stdin = self.child.stdin.take();
        let mut stdout_pipe = self.child.stdout.take();
        let mut stderr_pipe = self.child.stderr.take();
        for fd in [
            stdin.as_ref().map(|p| p.as_raw_fd()),
            stdout_pipe.as_ref().map(|p| p.as_raw_fd()),
            stderr_pipe.as_ref().map(|p| p.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            // SAFETY: the fd belongs to a pipe end owned by this function for the whole call.
            set_nonblocking(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
        }
        let mut written = 0usize;
        if input.is_empty() {
            stdin = None;
        }
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while stdin.is_some() || stdout_pipe.is_some() || stderr_pipe.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Communicated::TimedOut { stderr });
            }
            let wait_ms = (deadline - now).as_millis().clamp(1, 1000) as u16;
            let (in_ready, out_ready, err_ready) = {
                let mut fds = Vec::with_capacity(3);
                let mut slots = [None; 3];
                if let Some(p) = &stdin {
                    slots[0] = Some(fds.len());
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
                }
                if let Some(p) = &stdout_pipe {
                    slots[1] = Some(fds.len());
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
                if let Some(p) = &stderr_pipe {
                    slots[2] = Some(fds.len());
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::from(wait_ms)) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |slot: Option<usize>| {
                    slot.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(slots[0]), ready(slots[1]), ready(slots[2]))
            };
            if in_ready && let Some(p) = stdin.as_mut() {
                match p.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // The plugin closed stdin without reading it all: its business.
                    Err(_) => written = input.len(),
                }
                if written >= input.len() {
                    stdin = None;
                }
            }
            if out_ready && let Some(p) = stdout_pipe.as_mut() {
                // One byte over the limit is kept, to tell "too large" from "exactly full".
                if drain(p, &mut stdout, MAX_STDOUT + 1)? {
                    stdout_pipe = None;
                }
                if stdout.len() > MAX_STDOUT {
                    return Ok(Communicated::TooLarge);
                }
            }
            if err_ready
                && let Some(p) = stderr_pipe.as_mut()
                && drain(p, &mut stderr, MAX_STDERR)?
            {
                stderr_pipe = None;
            }
        }
        Ok(Communicated::Done { stdout, stderr })
    }

    /// Waits for the plugin to exit; `None` if the deadline passed first.
    fn wait_until(&mut self, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.killed = true; // reaped: nothing left to kill
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the plugin's process group and reaps the plugin.
    fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::fs;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn env() -> CniEnv {
        CniEnv {
            command: "ADD",
            container_id: "c1".into(),
            netns: "/nonexistent".into(),
            ifname: "eth0".into(),
            args: "A=1;B=2".into(),
            path: "/x:/y".into(),
        }
    }

    #[test]
    fn passes_env_and_stdin_and_returns_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "echo",
            r#"printf '%s|%s|%s|%s|%s|%s|' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH"; cat"#,
        );
        let big = vec![b'x'; 300 << 10]; // larger than a pipe buffer
        let out = exec_plugin(&p, &big, &env(), Duration::from_secs(20)).unwrap();
        let prefix = b"ADD|c1|/nonexistent|eth0|A=1;B=2|/x:/y|";
        assert_eq!(&out[..prefix.len()], prefix);
        assert_eq!(out.len(), prefix.len() + big.len());
    }

    #[test]
    fn reports_the_cni_error_object() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "fail",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"try later"}'; echo oops >&2; exit 1"#,
        );
        let err = exec_plugin(&p, b"{}", &env(), Duration::from_secs(20)).unwrap_err();
        assert_eq!(err.code(), Some(11));
        let msg = err.to_string();
        assert!(
            msg.contains("busy; try later") && msg.contains("oops"),
            "{msg}"
        );

        let p = script(dir.path(), "junk", "echo not-json; exit 3");
        let err = exec_plugin(&p, b"{}", &env(), Duration::from_secs(20)).unwrap_err();
        assert!(matches!(err, PluginError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("not-json"), "{err}");
    }

    #[test]
    fn a_hanging_plugin_and_its_children_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let p = script(
            dir.path(),
            "hang",
            &format!("sleep 600 & echo $! > {}; wait", pidfile.display()),
        );
        let start = Instant::now();
        let err = exec_plugin(&p, b"{}", &env(), Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let pid: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild got SIGKILL too (it may linger briefly as a zombie of init).
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(s) => s.split_whitespace().nth(2) == Some("Z"),
            }
        });
        assert!(gone, "child {pid} survived the timeout");
    }

    #[test]
    fn finds_only_executable_files() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "good", "true");
        fs::write(dir.path().join("noexec"), "x").unwrap();
        fs::create_dir(dir.path().join("adir")).unwrap();
        let dirs = vec![PathBuf::from("/nonexistent-bin"), dir.path().to_path_buf()];
        assert_eq!(find_in_path("good", &dirs), Some(dir.path().join("good")));
        assert_eq!(find_in_path("noexec", &dirs), None);
        assert_eq!(find_in_path("adir", &dirs), None);
        assert_eq!(find_in_path("../good", &dirs), None);
        assert_eq!(
            join_path(&dirs),
            format!("/nonexistent-bin:{}", dir.path().display())
        );
    }
}
