//! Container events (the GetContainerEvents stream) as containerd's CRI plugin sends them:
//! every event carries the sandbox's status and the statuses of all its containers, sandboxes
//! send events under their own id, and a container that exits on its own is reported the
//! moment its monitor goes.
//!
//! Exits are seen through a pidfd on the container's monitor (it records the exit status and
//! then ends), watched by a task per started container; after a restart keelsond watches the
//! monitors it finds again. One watcher per container: starting, stopping and restarting
//! keelsond never sends a container's stop twice from here.

use super::runtime::Runtime;
use super::{Daemon, now_ns};
use crate::monitor::MonitorHandle;
use crate::store::ContainerRecord;
use keelson_proto::runtime::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

impl Runtime {
    /// Sends an event for `container_id` (a container, or a sandbox under its own id) of
    /// sandbox `sandbox_id`, with the sandbox's current status and its containers' statuses.
    pub(super) fn event(&self, container_id: &str, sandbox_id: &str, kind: pb::ContainerEventType) {
        if self.d.events.receiver_count() == 0 {
            return;
        }
        let sandbox = self
            .d
            .sandbox(sandbox_id)
            .ok()
            .and_then(|s| self.sandbox_status(&s).ok());
        let containers = self
            .d
            .all_containers()
            .into_iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .filter_map(|c| self.container_status(&c).ok())
            .collect();
        let _ = self.d.events.send(pb::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: sandbox,
            containers_statuses: containers,
        });
    }

    /// Watches the monitor of the started container `id` and sends ContainerStoppedEvent
    /// when it ends (unless the container was removed meanwhile).
    pub(super) fn watch_exit(&self, id: &str) {
        if !self.d.watching_insert(id) {
            return;
        }
        let rt = Runtime { d: self.d.clone() };
        let id = id.to_string();
        tokio::spawn(async move {
            wait_monitor(&rt.d, &id).await;
            rt.d.watching_remove(&id);
            if let Ok(r) = rt.d.container(&id) {
                rt.report_stopped(&r);
            }
        });
    }

    /// Sends ContainerStoppedEvent for the exited container `r`, once: the exit watcher and
    /// StopContainer (which must report it before a RemoveContainer's delete) race for it.
    pub(super) fn report_stopped(&self, r: &ContainerRecord) {
        if r.started_at != 0 && self.d.mark_stopped(&r.id) {
            self.event(
                &r.id,
                &r.sandbox_id,
                pb::ContainerEventType::ContainerStoppedEvent,
            );
        }
    }

    /// After a restart: watches every started container whose monitor still runs.
    pub fn watch_running(&self) {
        for r in self.d.all_containers() {
            if r.started_at != 0 {
                let dir = self.d.cfg.container_dir(&r.id);
                if matches!(MonitorHandle::load(&dir, &r.exit_file), Ok(Some(_))) {
                    self.watch_exit(&r.id);
                }
            }
        }
    }
}

/// Returns once the monitor of container `id` is gone (or cannot be watched any more).
async fn wait_monitor(d: &Arc<Daemon>, id: &str) {
    let dir = d.cfg.container_dir(id);
    let Ok(r) = d.container(id) else { return };
    let handle = match MonitorHandle::load(&dir, &r.exit_file) {
        Ok(Some(h)) => h,
        // No pid file: the monitor already went (it removes the file last).
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(container = id, error = %e, "cannot read the monitor's pid file");
            return;
        }
    };
    match handle.pidfd() {
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole life.
        Ok(Some(fd)) => match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
        {
            // A pidfd is readable once its process has exited.
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(e) => {
                tracing::warn!(container = id, error = %e, "cannot poll the monitor's pidfd");
                poll_monitor(&handle).await;
            }
        },
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(container = id, error = %e, "no pidfd on the monitor; polling it");
            poll_monitor(&handle).await;
        }
    }
}

/// The fallback when no pidfd can be had: looks every 200 ms.
async fn poll_monitor(h: &MonitorHandle) {
    while h.is_running() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
