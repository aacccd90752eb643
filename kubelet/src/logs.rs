//! Container log files beyond what the runtime writes: the
//! `/var/log/containers/<pod>_<namespace>_<container>-<containerID>.log` links (upstream's
//! legacy symlinks, which log shippers read) and size-based rotation like upstream's
//! ContainerLogManager (pkg/kubelet/logs).
//!
//! - Links: made when a container starts ([`link`]) and checked every
//!   `containerLogMonitorInterval` ([`manager`]): missing links of the runtime's containers are
//!   made, links of containers the runtime no longer has are removed. The directory is the
//!   keelson-only `--container-log-links-dir` (upstream's fixed /var/log/containers), so tests
//!   keep theirs in a temp dir.
//! - Rotation, every `containerLogMonitorInterval` (10s), for each running container whose log
//!   has reached `containerLogMaxSize`: temporary (`.tmp`) and already-compressed leftovers of
//!   earlier rounds go, the oldest rotated files go until `containerLogMaxFiles - 2` remain,
//!   the rotated files left are gzipped (`<log>.<time>.gz`), then the log is renamed to
//!   `<log>.<YYYYMMDD-hhmmss>` and the runtime told to ReopenContainerLog (renamed back when
//!   that fails).

use crate::Shared;
use crate::cri::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use keelson_proto::runtime::v1 as pb;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Upstream's file name limit for the link (the name is cut to fit).
const MAX_NAME: usize = 255;

/// `<pod>_<ns>_<container>-<id>.log` in `dir`, shortened like upstream's `logSymlink`.
pub fn link_path(dir: &Path, pod: &str, ns: &str, container: &str, id: &str) -> PathBuf {
    let suffix = format!("-{id}.log");
    let mut prefix = format!("{pod}_{ns}_{container}");
    let room = MAX_NAME.saturating_sub(suffix.len());
    if prefix.len() > room {
        let mut cut = room;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    dir.join(format!("{prefix}{suffix}"))
}

/// Makes the link for a started container (replacing a stale one).
pub fn link(
    dir: &Path,
    pod: &str,
    ns: &str,
    container: &str,
    id: &str,
    log_path: &Path,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let l = link_path(dir, pod, ns, container, id);
    if std::fs::read_link(&l).is_ok_and(|t| t == log_path) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&l);
    std::os::unix::fs::symlink(log_path, &l)
}

/// The container ID of a link name we made: `...-<64 hex>.log`.
fn link_id(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".log")?;
    let (_, id) = stem.rsplit_once('-')?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Keeps the links in step with the runtime's containers and rotates logs, forever.
pub async fn manager(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(sh.cfg.container_log_monitor_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = round(&sh).await {
            tracing::warn!(error = %e, "container log manager");
        }
    }
}

async fn round(sh: &Shared) -> Result<(), tonic::Status> {
    let mut cri = sh.cri.clone();
    let containers = cri
        .runtime
        .list_containers(pb::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    let ids: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    let dir = &sh.cfg.container_log_links_dir;
    // Links of containers that are gone (only ours: pointing into our pod logs dir).
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = link_id(&name) else { continue };
        let ours = std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&sh.cfg.pod_logs_dir));
        if ours && !ids.contains(id) {
            tracing::debug!(link = %name, "removing the log link of a removed container");
            let _ = std::fs::remove_file(e.path());
        }
    }
    for c in &containers {
        let (Some(pod), Some(ns)) = (
            c.labels.get(LABEL_POD_NAME),
            c.labels.get(LABEL_POD_NAMESPACE),
        ) else {
            continue;
        };
        let status = match cri
            .runtime
            .container_status(pb::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => match r.into_inner().status {
                Some(s) => s,
                None => continue,
            },
            Err(e) if e.code() == tonic::Code::NotFound => continue,
            Err(e) => return Err(e),
        };
        if status.log_path.is_empty() {
            continue;
        }
        let log = PathBuf::from(&status.log_path);
        let name = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
        if let Err(e) = link(dir, pod, ns, name, &c.id, &log) {
            tracing::warn!(error = %e, container = %c.id, "making the container log link");
        }
        if c.state != pb::ContainerState::ContainerRunning as i32
            || sh.cfg.container_log_max_bytes == 0
        {
            continue;
        }
        let size = match std::fs::metadata(&log) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Lost (a rotation that died half way): have the runtime open it again.
                cri.runtime
                    .reopen_container_log(pb::ReopenContainerLogRequest {
                        container_id: c.id.clone(),
                    })
                    .await?;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %log.display(), "stat of a container log");
                continue;
            }
        };
        if size < sh.cfg.container_log_max_bytes {
            continue;
        }
        let max_files = sh.cfg.container_log_max_files.max(0) as usize;
        let l2 = log.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare_rotation(&l2, max_files))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        if let Err(e) = prepared {
            tracing::warn!(error = %e, path = %log.display(), "cleaning up rotated logs");
            continue;
        }
        let stamp = crate::now_ts().strftime("%Y%m%d-%H%M%S").to_string();
        let rotated = PathBuf::from(format!("{}.{stamp}", log.display()));
        if let Err(e) = std::fs::rename(&log, &rotated) {
            tracing::warn!(error = %e, path = %log.display(), "rotating a container log");
            continue;
        }
        if let Err(e) = cri
            .runtime
            .reopen_container_log(pb::ReopenContainerLogRequest {
                container_id: c.id.clone(),
            })
            .await
        {
            // Put it back to try again next round.
            let _ = std::fs::rename(&rotated, &log);
            tracing::warn!(error = %e.message(), container = %c.id, "ReopenContainerLog failed");
            continue;
        }
        tracing::info!(container = %c.id, rotated = %rotated.display(), size, "container log rotated");
    }
    Ok(())
}

/// Everything before renaming the log: drop leftovers, keep `max_files - 2` rotated files,
/// gzip the uncompressed ones.
pub fn prepare_rotation(log: &Path, max_files: usize) -> io::Result<()> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let base = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{base}.");
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    rotated.sort();
    let all: HashSet<PathBuf> = rotated.iter().cloned().collect();
    let mut in_use = Vec::new();
    for l in rotated {
        let s = l.to_string_lossy().into_owned();
        let unused = s.ends_with(".tmp")
            || (!s.ends_with(".gz") && all.contains(&PathBuf::from(format!("{s}.gz"))));
        if unused {
            std::fs::remove_file(&l)?;
        } else {
            in_use.push(l);
        }
    }
    let keep = max_files.saturating_sub(2);
    let excess = in_use.len().saturating_sub(keep);
    for l in in_use.drain(..excess) {
        std::fs::remove_file(&l)?;
    }
    for l in in_use {
        if l.to_string_lossy().ends_with(".gz") {
            continue;
        }
        compress(&l)?;
    }
    Ok(())
}

fn compress(log: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(log)?.permissions().mode();
    let tmp = PathBuf::from(format!("{}.tmp", log.display()));
    let gz = PathBuf::from(format!("{}.gz", log.display()));
    let r = (|| {
        let mut input = std::fs::File::open(log)?;
        let out = std::fs::File::create(&tmp)?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        io::copy(&mut input, &mut w)?;
        w.finish()?.sync_all()?;
        std::fs::rename(&tmp, &gz)?;
        std::fs::remove_file(log)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names() {
        let id = "a".repeat(64);
        let p = link_path(Path::new("/d"), "web-n", "default", "main", &id);
        assert_eq!(
            p,
            Path::new(&format!("/d/web-n_default_main-{id}.log")).to_path_buf()
        );
        assert_eq!(
            link_id(&format!("web-n_default_main-{id}.log")),
            Some(id.as_str())
        );
        assert_eq!(link_id("x-y.log"), None);
        let long = link_path(Path::new("/d"), &"p".repeat(300), "ns", "c", &id);
        assert_eq!(long.file_name().map(|n| n.len()), Some(MAX_NAME));
    }

    #[test]
    fn rotation_keeps_max_files_minus_two_and_compresses() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("0.log");
        std::fs::write(&log, "current").expect("w");
        for (n, body) in [
            ("0.log.20240101-000001.gz", "x"),
            ("0.log.20240101-000002", "old2"),
            ("0.log.20240101-000003", "old3"),
            ("0.log.20240101-000004.tmp", "junk"),
        ] {
            std::fs::write(dir.path().join(n), body).expect("w");
        }
        prepare_rotation(&log, 4).expect("prepare");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "0.log",
                "0.log.20240101-000002.gz",
                "0.log.20240101-000003.gz"
            ]
        );
        let mut s = String::new();
        let f = std::fs::File::open(dir.path().join("0.log.20240101-000003.gz")).expect("open");
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut s).expect("gunzip");
        assert_eq!(s, "old3");
    }
}
