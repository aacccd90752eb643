//! The event-driven half of the PLEG: the runtime's GetContainerEvents stream wakes the pod
//! worker of the pod an event is about at once, and the relist (see [`crate::manager::pleg`])
//! becomes the slower safety net while the stream is up, like upstream's evented PLEG. A
//! runtime without the stream (Unimplemented) leaves the kubelet on relisting alone; a
//! broken stream is reopened with back-off, the relist at full speed meanwhile.

use crate::Shared;
use crate::cri::LABEL_POD_UID;
use keelson_proto::runtime::v1 as pb;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the PLEG relists while the event stream is up.
pub const RELIST_WITH_EVENTS: Duration = Duration::from_secs(10);

/// The pod UID an event is about: the sandbox's metadata, else its containers' labels.
fn pod_uid(ev: &pb::ContainerEventResponse) -> Option<String> {
    if let Some(sb) = &ev.pod_sandbox_status {
        if let Some(m) = sb.metadata.as_ref().filter(|m| !m.uid.is_empty()) {
            return Some(m.uid.clone());
        }
        if let Some(uid) = sb.labels.get(LABEL_POD_UID) {
            return Some(uid.clone());
        }
    }
    ev.containers_statuses
        .iter()
        .find_map(|c| c.labels.get(LABEL_POD_UID).cloned())
}

/// Follows the runtime's container events until the runtime says it has none; `healthy` is
/// true while a stream is open.
pub async fn watch(sh: Arc<Shared>, tx: mpsc::Sender<HashSet<String>>, healthy: Arc<AtomicBool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut rt = sh.cri.runtime.clone();
        match rt.get_container_events(pb::GetEventsRequest {}).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                healthy.store(true, Ordering::Relaxed);
                tracing::info!(
                    relist = ?RELIST_WITH_EVENTS,
                    "following the runtime's container events"
                );
                backoff = Duration::from_secs(1);
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            let Some(uid) = pod_uid(&ev) else {
                                tracing::debug!(id = %ev.container_id, "event without a pod; the relist will see it");
                                continue;
                            };
                            if tx.send(HashSet::from([uid])).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("the runtime ended the container event stream");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "container event stream broke");
                            break;
                        }
                    }
                }
                healthy.store(false, Ordering::Relaxed);
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!("the runtime has no container events; relisting only");
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "GetContainerEvents failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_pod_comes_from_the_sandbox_or_the_containers() {
        let mut ev = pb::ContainerEventResponse::default();
        assert_eq!(pod_uid(&ev), None);
        ev.containers_statuses.push(pb::ContainerStatus {
            labels: HashMap::from([(LABEL_POD_UID.to_string(), "from-ctr".to_string())]),
            ..Default::default()
        });
        assert_eq!(pod_uid(&ev).as_deref(), Some("from-ctr"));
        ev.pod_sandbox_status = Some(pb::PodSandboxStatus {
            metadata: Some(pb::PodSandboxMetadata {
                uid: "from-sandbox".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(pod_uid(&ev).as_deref(), Some("from-sandbox"));
    }
}
