//! keelsond's GetContainerEvents stream as containerd's CRI plugin sends it: sandbox events
//! under the sandbox's id, every event with the sandbox's status and its containers'
//! statuses, a container exiting on its own reported without any CRI call, also when it exits
//! after keelsond restarted, and one stop event per container.

use keelson_proto::runtime::v1 as pb;
use keelson_tests::cri::{Keelsond, container_config, pod_config, registry_with_busybox};
use pb::ContainerEventType as E;
use std::time::Duration;
use tonic::Streaming;

type Events = Streaming<pb::ContainerEventResponse>;

async fn subscribe(k: &Keelsond) -> Events {
    let mut rt = k.runtime().await.expect("client");
    rt.get_container_events(pb::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner()
}

/// The next event about `id` (others are skipped), within 30 s.
async fn next_for(
    events: &mut Events,
    id: &str,
    log: impl Fn() -> String,
) -> pb::ContainerEventResponse {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .unwrap_or_else(|_| panic!("no event for {id} within 30 s\n{}", log()))
            .expect("stream")
            .expect("stream ended");
        if ev.container_id == id {
            return ev;
        }
    }
}

fn kind(ev: &pb::ContainerEventResponse) -> E {
    E::try_from(ev.container_event_type).expect("event type")
}

fn status_of<'a>(ev: &'a pb::ContainerEventResponse, id: &str) -> &'a pb::ContainerStatus {
    ev.containers_statuses
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{id} not among the event's statuses: {ev:?}"))
}

#[test]
fn events_carry_statuses_and_report_self_exits_also_after_a_restart() {
    let (_reg, image) = registry_with_busybox("ev");
    let mut k = Keelsond::start("events").expect("keelsond");
    let cfg = pod_config(&k, "ev");
    let (pod, quick, waiter) = k.block_on(async {
        let mut events = subscribe(&k).await;
        let mut rt = k.runtime().await.expect("client");
        let mut img = k.images().await.expect("client");
        img.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
        let pod = rt
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        for want in [E::ContainerCreatedEvent, E::ContainerStartedEvent] {
            let ev = next_for(&mut events, &pod, || k.log()).await;
            assert_eq!(kind(&ev), want, "{ev:?}");
            let sb = ev.pod_sandbox_status.as_ref().expect("sandbox status");
            assert_eq!(sb.id, pod);
            assert_eq!(sb.state, pb::PodSandboxState::SandboxReady as i32);
            assert_eq!(sb.metadata.as_ref().map(|m| m.name.as_str()), Some("ev"));
        }

        // A container that exits by itself: Created, Started, then Stopped with no CRI call.
        let mut start = async |name: &str, script: &str| {
            let id = rt
                .create_container(pb::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(name, &image, script)),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .expect("create")
                .into_inner()
                .container_id;
            rt.start_container(pb::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("start");
            id
        };
        let quick = start("quick", "sleep 1; exit 3").await;
        let waiter = start(
            "waiter",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 4",
        )
        .await;
        for want in [
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
        ] {
            let ev = next_for(&mut events, &quick, || k.log()).await;
            assert_eq!(kind(&ev), want, "{ev:?}");
            assert!(ev.pod_sandbox_status.is_some(), "{ev:?}");
            let st = status_of(&ev, &quick);
            if want == E::ContainerStoppedEvent {
                assert_eq!(
                    st.state,
                    pb::ContainerState::ContainerExited as i32,
                    "{st:?}"
                );
                assert_eq!(st.exit_code, 3, "{st:?}");
                // The other container is listed too.
                status_of(&ev, &waiter);
            }
        }
        // StopContainer on the exited container reports nothing more; RemoveContainer
        // reports the delete.
        rt.stop_container(pb::StopContainerRequest {
            container_id: quick.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
        rt.remove_container(pb::RemoveContainerRequest {
            container_id: quick.clone(),
        })
        .await
        .expect("remove");
        let ev = next_for(&mut events, &quick, || k.log()).await;
        assert_eq!(kind(&ev), E::ContainerDeletedEvent, "{ev:?}");
        assert!(
            ev.containers_statuses.iter().all(|c| c.id != quick),
            "{ev:?}"
        );
        (pod, quick, waiter)
    });

    // keelsond goes down with `waiter` running; it exits while keelsond runs again.
    k.kill9();
    k.restart().expect("restart keelsond");
    k.block_on(async {
        let mut events = subscribe(&k).await;
        let mut rt = k.runtime().await.expect("client");
        let r = rt
            .exec_sync(pb::ExecSyncRequest {
                container_id: waiter.clone(),
                cmd: vec!["/bin/sh".into(), "-c".into(), "echo > /tmp/go".into()],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        assert_eq!(r.exit_code, 0, "{r:?}");
        let ev = next_for(&mut events, &waiter, || k.log()).await;
        assert_eq!(kind(&ev), E::ContainerStoppedEvent, "{ev:?}");
        assert_eq!(status_of(&ev, &waiter).exit_code, 4, "{ev:?}");

        // The sandbox's stop and removal, under its id; the remaining container's delete.
        rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop pod");
        let ev = next_for(&mut events, &pod, || k.log()).await;
        assert_eq!(kind(&ev), E::ContainerStoppedEvent, "{ev:?}");
        let sb = ev.pod_sandbox_status.as_ref().expect("sandbox status");
        assert_eq!(sb.state, pb::PodSandboxState::SandboxNotready as i32);
        rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("remove pod");
        let ev = next_for(&mut events, &waiter, || k.log()).await;
        assert_eq!(kind(&ev), E::ContainerDeletedEvent, "{ev:?}");
        let ev = next_for(&mut events, &pod, || k.log()).await;
        assert_eq!(kind(&ev), E::ContainerDeletedEvent, "{ev:?}");
        assert!(ev.pod_sandbox_status.is_none(), "{ev:?}");
    });
    let _ = quick;
}
