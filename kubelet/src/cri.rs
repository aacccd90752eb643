//! The CRI client: the only way the kubelet reaches the runtime. Gathers what runs for a pod
//! from the labels the kubelet put on its sandboxes and containers.

use crate::metrics::Instrumented;
use keelson_proto::runtime::v1 as pb;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const ANN_CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const ANN_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const ANN_TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const ANN_TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
pub const ANN_POD_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const ANN_CONTAINER_PORTS: &str = "io.kubernetes.container.ports";
/// Which list of the spec a container is from (keelson's own label, "init" or "app").
pub const LABEL_CONTAINER_TYPE: &str = "io.kubernetes.container.type";

/// The runtime client every part of the kubelet uses (its calls are counted for /metrics).
pub type RuntimeClient = RuntimeServiceClient<Instrumented>;

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Instrumented>,
    pub images: ImageServiceClient<Instrumented>,
}

/// The runtime connection, lazily (re)connected: a runtime that is down at start or restarts
/// later is reached again without restarting the kubelet.
pub fn connect(runtime_endpoint: &str, image_endpoint: &str) -> anyhow::Result<Cri> {
    let ch = |e: &str| -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(4 * 60))
            .connect_lazy())
    };
    let rt = ch(runtime_endpoint)?;
    let img = if image_endpoint == runtime_endpoint {
        rt.clone()
    } else {
        ch(image_endpoint)?
    };
    Ok(Cri {
        runtime: RuntimeServiceClient::new(Instrumented { inner: rt }),
        images: ImageServiceClient::new(Instrumented { inner: img }),
    })
}

/// A sandbox of a pod as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: i64,
    pub ips: Vec<String>,
}

/// A container of a pod as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub state: pb::ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    pub hash: String,
    pub restart_count: i32,
    pub log_path: String,
    pub annotations: HashMap<String, String>,
    /// The identity the runtime reports the process runs with.
    pub user: Option<pb::ContainerUser>,
}

/// Everything that runs for one pod: sandboxes newest first, containers newest first.
#[derive(Clone, Debug, Default)]
pub struct PodRuntime {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<Container>,
}

impl PodRuntime {
    /// Instances of a container, newest first.
    pub fn instances<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.iter().filter(move |c| c.name == name)
    }

    pub fn latest<'a>(&'a self, name: &'a str) -> Option<&'a Container> {
        self.instances(name).next()
    }

    pub fn ready_sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes.first().filter(|s| s.ready)
    }
}

fn uid_filter(uid: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL_POD_UID.to_string(), uid.to_string())])
}

impl Cri {
    pub async fn version(&mut self) -> Result<pb::VersionResponse, tonic::Status> {
        Ok(self
            .runtime
            .version(pb::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner())
    }

    /// The sandboxes and containers labelled with `uid`, with their full statuses.
    pub async fn pod(&mut self, uid: &str) -> Result<PodRuntime, tonic::Status> {
        let sbs = self
            .runtime
            .list_pod_sandbox(pb::ListPodSandboxRequest {
                filter: Some(pb::PodSandboxFilter {
                    label_selector: uid_filter(uid),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        let mut out = PodRuntime::default();
        for s in sbs {
            let ready = s.state == pb::PodSandboxState::SandboxReady as i32;
            let mut ips = Vec::new();
            if ready {
                match self
                    .runtime
                    .pod_sandbox_status(pb::PodSandboxStatusRequest {
                        pod_sandbox_id: s.id.clone(),
                        verbose: false,
                    })
                    .await
                {
                    Ok(st) => {
                        if let Some(n) = st.into_inner().status.and_then(|s| s.network) {
                            if !n.ip.is_empty() {
                                ips.push(n.ip);
                            }
                            ips.extend(n.additional_ips.into_iter().map(|i| i.ip));
                        }
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            out.sandboxes.push(Sandbox {
                id: s.id,
                attempt: s.metadata.map(|m| m.attempt).unwrap_or(0),
                ready,
                created_at: s.created_at,
                ips,
            });
        }
        out.sandboxes
            .sort_by_key(|s| std::cmp::Reverse((s.created_at, s.attempt)));
        let cs = self
            .runtime
            .list_containers(pb::ListContainersRequest {
                filter: Some(pb::ContainerFilter {
                    label_selector: uid_filter(uid),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        for c in cs {
            let st = match self
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
            let name = st
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .or_else(|| st.labels.get(LABEL_CONTAINER_NAME).cloned())
                .unwrap_or_default();
            out.containers.push(Container {
                id: st.id.clone(),
                sandbox_id: c.pod_sandbox_id.clone(),
                name,
                state: pb::ContainerState::try_from(st.state)
                    .unwrap_or(pb::ContainerState::ContainerUnknown),
                created_at: st.created_at,
                started_at: st.started_at,
                finished_at: st.finished_at,
                exit_code: st.exit_code,
                reason: st.reason.clone(),
                message: if st.state == pb::ContainerState::ContainerExited as i32 {
                    crate::termination::combine(&st.message, &crate::termination::message(&st))
                } else {
                    st.message.clone()
                },
                image: st
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                image_ref: st.image_ref.clone(),
                hash: st
                    .annotations
                    .get(ANN_CONTAINER_HASH)
                    .cloned()
                    .unwrap_or_default(),
                restart_count: st
                    .annotations
                    .get(ANN_RESTART_COUNT)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                log_path: st.log_path.clone(),
                annotations: st.annotations.clone(),
                user: st.user.clone(),
            });
        }
        out.containers
            .sort_by_key(|c| std::cmp::Reverse((c.created_at, c.restart_count)));
        Ok(out)
    }

    /// A cheap picture of everything kubelet-managed: pod UID → (sandbox id/state, container
    /// id/state) pairs, for the PLEG to diff.
    pub async fn relist(&mut self) -> Result<HashMap<String, Vec<(String, i32)>>, tonic::Status> {
        let sbs = self
            .runtime
            .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        let cs = self
            .runtime
            .list_containers(pb::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        let mut out: HashMap<String, Vec<(String, i32)>> = HashMap::new();
        for s in sbs {
            if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                out.entry(uid.clone())
                    .or_default()
                    .push((s.id.clone(), s.state));
            }
        }
        for c in cs {
            if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                out.entry(uid.clone())
                    .or_default()
                    .push((c.id.clone(), c.state));
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        Ok(out)
    }
}
