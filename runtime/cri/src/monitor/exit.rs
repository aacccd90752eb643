//! The exit file: how the container's init ended, written once by the monitor.

use super::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The content of the exit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal number for a death by signal.
    pub exit_code: i32,
    /// The signal that killed the init, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// When the monitor reaped the init: RFC3339Nano in UTC.
    pub finished_at: String,
    /// Whether the OOM killer killed a process of the container's cgroup.
    pub oom_killed: bool,
    /// The init's pid (host pid namespace).
    pub pid: i32,
}

impl ExitStatus {
    /// [`ExitStatus::finished_at`] as a time.
    pub fn finished_at_time(&self) -> Option<SystemTime> {
        crate::crilog::parse_timestamp(&self.finished_at)
    }
}

/// Reads an exit file: `None` while there is none (the container has not exited, or its
/// monitor died first).
pub fn read_exit(path: &Path) -> Result<Option<ExitStatus>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::ExitFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::ExitFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Polls for the exit file until `timeout`; `None` if it did not appear.
pub fn wait_exit(path: &Path, timeout: Duration) -> Result<Option<ExitStatus>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = read_exit(path)? {
            return Ok(Some(st));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the exit file atomically: a synced temp file in the same directory, renamed.
pub(super) fn write_exit(path: &Path, status: &ExitStatus) -> std::io::Result<()> {
    let data = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exit.json");
        assert_eq!(read_exit(&path).expect("read"), None);
        let st = ExitStatus {
            exit_code: 137,
            signal: Some(9),
            finished_at: "2026-01-02T03:04:05.5Z".into(),
            oom_killed: true,
            pid: 42,
        };
        write_exit(&path, &st).expect("write");
        assert_eq!(read_exit(&path).expect("read"), Some(st.clone()));
        assert!(st.finished_at_time().is_some());
        let text = fs::read_to_string(&path).expect("text");
        assert_eq!(
            text,
            r#"{"exit_code":137,"signal":9,"finished_at":"2026-01-02T03:04:05.5Z","oom_killed":true,"pid":42}"#
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("exit.json")]);
        fs::write(&path, "{").expect("garble");
        assert!(read_exit(&path).is_err());
        let no_signal =
            r#"{"exit_code":3,"finished_at":"2026-01-02T03:04:05Z","oom_killed":false,"pid":1}"#;
        fs::write(&path, no_signal).expect("write");
        assert_eq!(read_exit(&path).expect("read").and_then(|s| s.signal), None);
    }
}
