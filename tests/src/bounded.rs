//! Running a peer's command line (podman, ctr, ...) with a hard time limit.
//!
//! `timeout(1)` + `Command::output()` is not enough: a peer that forwards SIGTERM to its
//! container (`podman run` does) outlives the signal, and a daemon it leaves behind (conmon,
//! a shim) can hold the output pipes open so `output()` never sees end of file. Here the
//! output goes to files, the command runs in its own process group, and at the deadline the
//! whole tree is SIGKILLed and the error carries what it printed and which processes hung.

use crate::procs;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion within `limit` and returns its output, like `Command::output()`;
/// stdin is whatever `cmd` says (set it to null for a peer that must not read it).
pub fn output(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    cmd.stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .process_group(0);
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let Some(status) = status else {
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let tree = procs::tree_of(pid);
        let report = procs::describe(&tree);
        procs::kill_tree(pid, &tree);
        let _ = child.wait();
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}\nprocesses still running:\n{report}",
                cmd,
                read_all(&mut out),
                read_all(&mut err)
            ),
        ));
    };
    Ok(Output {
        status,
        stdout: read_all(&mut out).into_bytes(),
        stderr: read_all(&mut err).into_bytes(),
    })
}

fn read_all(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind();
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    s.push_str(&String::from_utf8_lossy(&buf));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_output_and_status() {
        let out = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .expect("sh");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    }

    #[test]
    fn a_hung_tree_is_killed_and_reported() {
        // The shell ignores SIGTERM and its child keeps stdout open: both must go.
        let started = Instant::now();
        let err = output(
            Command::new("sh").args(["-c", "trap '' TERM; sleep 1000 & echo child=$!; wait"]),
            Duration::from_millis(500),
        )
        .expect_err("must time out");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let msg = err.to_string();
        assert!(msg.contains("sleep 1000"), "{msg}");
        // The grandchild that held stdout is gone too.
        let child: i32 = msg
            .split("stdout: child=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no child pid in {msg}"));
        sleep(Duration::from_millis(100));
        assert!(
            procs::state(child).is_none_or(|s| s == 'Z'),
            "sleep {child} still runs"
        );
    }
}
