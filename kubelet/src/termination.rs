//! Termination messages, as upstream's kuberuntime: a file per container instance at
//! `<root-dir>/pods/<uid>/containers/<name>/<8 hex digits>`, bind-mounted at the container's
//! `terminationMessagePath`; once the container exited, its content (at most 4096 bytes) is
//! the terminated state's message. With `FallbackToLogsOnError`, a failed container whose
//! file is empty gets the last lines of its log instead (80 lines, at most 2048 bytes). The
//! kubelet finds the file from the CRI status: the mount whose container path is the
//! annotated terminationMessagePath.

use crate::cri::{ANN_TERMINATION_MESSAGE_PATH, ANN_TERMINATION_MESSAGE_POLICY};
use keelson_proto::runtime::v1 as pb;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Upstream's `MaxContainerTerminationMessageLength`.
pub const MAX_MESSAGE: u64 = 4096;
/// Upstream's `MaxContainerTerminationMessageLogLines` / `...LogLength`.
pub const MAX_LOG_LINES: usize = 80;
pub const MAX_LOG_BYTES: usize = 2048;

/// `<root-dir>/pods/<uid>/containers`.
pub fn containers_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid).join("containers")
}

/// Creates the (empty, mode 0666) termination message file for a new instance of container
/// `name` and returns the mount for it at `container_path`.
pub fn prepare(
    root_dir: &Path,
    uid: &str,
    name: &str,
    container_path: &str,
) -> std::io::Result<pb::Mount> {
    use std::os::unix::fs::PermissionsExt;
    let dir = containers_dir(root_dir, uid).join(name);
    std::fs::create_dir_all(&dir)?;
    let seed = format!("{}-{}-{name}", crate::now_ns(), std::process::id());
    let file = dir.join(hex::encode(&Sha256::digest(seed.as_bytes())[..4]));
    std::fs::File::create(&file)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    Ok(pb::Mount {
        container_path: container_path.to_string(),
        host_path: file.display().to_string(),
        readonly: false,
        selinux_relabel: false,
        propagation: pb::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    })
}

fn read_at_most(path: &str, max: u64) -> std::io::Result<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The content lines of a CRI log (`<time> <stream> <P|F> <text>`), partial lines joined.
fn log_tail(path: &str) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    // The last 80 lines of up to 2 KiB each fit in this window in any sane log.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let window = 256 * 1024;
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(window)));
    let mut raw = Vec::new();
    if f.read_to_end(&mut raw).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&raw);
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let (Some(_ts), Some(_stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let content = f.next().unwrap_or("");
        partial.push_str(content);
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(MAX_LOG_LINES)..] {
        out.push_str(l);
        out.push('\n');
    }
    if out.len() > MAX_LOG_BYTES {
        let mut end = MAX_LOG_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The termination message of an exited container from its CRI status (upstream's
/// `getTerminationMessage` + `readLastStringFromContainerLogs`).
pub fn message(st: &pb::ContainerStatus) -> String {
    let path = st
        .annotations
        .get(ANN_TERMINATION_MESSAGE_PATH)
        .map(String::as_str)
        .unwrap_or("");
    let fallback = st
        .annotations
        .get(ANN_TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError")
        && st.exit_code != 0
        && st.reason != "ContainerCannotRun";
    let mut check_logs = fallback;
    let mut msg = String::new();
    if !path.is_empty()
        && let Some(m) = st.mounts.iter().find(|m| m.container_path == path)
    {
        match read_at_most(&m.host_path, MAX_MESSAGE) {
            Ok(s) => {
                check_logs = fallback && s.is_empty();
                msg = s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return format!("Error on reading termination log {}: {e}", m.host_path);
            }
        }
    }
    if check_logs {
        msg = log_tail(&st.log_path);
    }
    msg
}

/// The runtime's message, enriched with the termination message as upstream does.
pub fn combine(runtime_msg: &str, termination: &str) -> String {
    match (runtime_msg.is_empty(), termination.is_empty()) {
        (_, true) => runtime_msg.to_string(),
        (true, false) => termination.to_string(),
        (false, false) => format!("{runtime_msg}: {termination}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_log_fallback() {
        let d = tempfile::tempdir().expect("tmp");
        let m = prepare(d.path(), "u1", "c", "/dev/termination-log").expect("prepare");
        assert!(
            m.host_path
                .starts_with(&d.path().join("pods/u1/containers/c").display().to_string())
        );
        let log = d.path().join("0.log");
        let mut lines = String::new();
        for i in 0..100 {
            lines.push_str(&format!("2024-01-01T00:00:00Z stdout F line {i}\n"));
        }
        lines.push_str("2024-01-01T00:00:00Z stderr P part-\n2024-01-01T00:00:00Z stderr F end\n");
        std::fs::write(&log, lines).expect("log");
        let mut st = pb::ContainerStatus {
            exit_code: 1,
            log_path: log.display().to_string(),
            mounts: vec![m.clone()],
            ..Default::default()
        };
        st.annotations.insert(
            ANN_TERMINATION_MESSAGE_PATH.into(),
            "/dev/termination-log".into(),
        );
        st.annotations
            .insert(ANN_TERMINATION_MESSAGE_POLICY.into(), "File".into());
        assert_eq!(message(&st), "");
        st.annotations.insert(
            ANN_TERMINATION_MESSAGE_POLICY.into(),
            "FallbackToLogsOnError".into(),
        );
        let tail = message(&st);
        assert!(tail.ends_with("line 99\npart-end\n"), "{tail}");
        assert!(tail.starts_with("line 21\n"), "{tail}");
        // The file wins when it has something; at most 4096 bytes of it.
        std::fs::write(&m.host_path, "x".repeat(5000)).expect("msg");
        assert_eq!(message(&st).len(), 4096);
        // Success: no fallback.
        std::fs::write(&m.host_path, "").expect("msg");
        st.exit_code = 0;
        assert_eq!(message(&st), "");
    }
}
