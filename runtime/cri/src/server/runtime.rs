//! `runtime.v1.RuntimeService`.

use super::{
    DResult, Daemon, DaemonError, blocking, internal, matches_labels, new_id, now_ns, wait_until,
};
use crate::sandbox::{self, InfraSpec};
use crate::server::{mon, net, stats};
use crate::spec;
use crate::store::{ContainerRecord, ProcessUser, SandboxRecord, SandboxState};
use crate::streaming;
use keelson_container::cgroups::Cgroups;
use keelson_proto::runtime::v1 as pb;
use pb::runtime_service_server::RuntimeService;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The CRI API version keelsond speaks, and its own name/version as `Version` reports them.
pub const CRI_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "keelsond";

pub struct Runtime {
    pub d: Arc<Daemon>,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn sandbox_config(r: &SandboxRecord) -> DResult<pb::PodSandboxConfig> {
    pb::PodSandboxConfig::decode(r.config.as_slice()).map_err(internal)
}

fn container_config(r: &ContainerRecord) -> DResult<pb::ContainerConfig> {
    pb::ContainerConfig::decode(r.config.as_slice()).map_err(internal)
}

fn ns_mode(v: i32) -> pb::NamespaceMode {
    pb::NamespaceMode::try_from(v).unwrap_or(pb::NamespaceMode::Pod)
}

/// The observed state of a container: created, running or exited (with its exit status).
pub struct Observed {
    pub state: pb::ContainerState,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

impl Runtime {
    fn observe(&self, r: &ContainerRecord) -> Observed {
        match mon::read_exit(&r.exit_file) {
            Some(x) => {
                let reason = if x.oom_killed {
                    "OOMKilled"
                } else if x.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                Observed {
                    state: pb::ContainerState::ContainerExited,
                    finished_at: x.finished_at,
                    exit_code: x.exit_code,
                    reason: reason.into(),
                    message: String::new(),
                }
            }
            None if r.started_at == 0 => Observed {
                state: pb::ContainerState::ContainerCreated,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
            },
            None if self.d.live.monitor(&self.d.cfg.container_dir(&r.id)) => Observed {
                state: pb::ContainerState::ContainerRunning,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
            },
            // The monitor records the exit before it goes: a second look settles a race
            // with a monitor that was just finishing.
            None if mon::read_exit(&r.exit_file).is_some() => self.observe(r),
            None => Observed {
                state: pb::ContainerState::ContainerExited,
                finished_at: 0,
                exit_code: 255,
                reason: "Unknown".into(),
                message: "the container's monitor is gone without recording an exit status".into(),
            },
        }
    }

    /// Whether sandbox `r` is ready: recorded so and its infra process still runs.
    fn infra_ready(&self, r: &SandboxRecord) -> bool {
        r.state == SandboxState::Ready && self.d.live.process(r.infra.pid, r.infra.start_time)
    }

    pub(super) fn sandbox_status(&self, r: &SandboxRecord) -> DResult<pb::PodSandboxStatus> {
        let cfg = sandbox_config(r)?;
        let nsopts = cfg
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let state = if self.infra_ready(r) {
            pb::PodSandboxState::SandboxReady
        } else {
            pb::PodSandboxState::SandboxNotready
        };
        let host_net = nsopts
            .as_ref()
            .is_some_and(|n| ns_mode(n.network) == pb::NamespaceMode::Node);
        let network = if host_net {
            None
        } else {
            Some(pb::PodSandboxNetworkStatus {
                ip: r.ips.first().cloned().unwrap_or_default(),
                additional_ips: r
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| pb::PodIp { ip: ip.clone() })
                    .collect(),
            })
        };
        Ok(pb::PodSandboxStatus {
            id: r.id.clone(),
            metadata: cfg.metadata.clone(),
            state: state as i32,
            created_at: r.created_at,
            network,
            linux: Some(pb::LinuxPodSandboxStatus {
                namespaces: Some(pb::Namespace { options: nsopts }),
            }),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            runtime_handler: r.runtime_handler.clone(),
        })
    }

    pub(super) fn container_status(&self, r: &ContainerRecord) -> DResult<pb::ContainerStatus> {
        let cfg = container_config(r)?;
        let o = self.observe(r);
        Ok(pb::ContainerStatus {
            id: r.id.clone(),
            metadata: cfg.metadata.clone(),
            state: o.state as i32,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: o.finished_at,
            exit_code: o.exit_code,
            image: Some(pb::ImageSpec {
                image: r.image.clone(),
                annotations: cfg
                    .image
                    .as_ref()
                    .map(|i| i.annotations.clone())
                    .unwrap_or_default(),
                user_specified_image: cfg
                    .image
                    .as_ref()
                    .map(|i| i.user_specified_image.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            image_ref: r.image_ref.clone(),
            reason: o.reason,
            message: o.message,
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            mounts: cfg.mounts.clone(),
            log_path: r.log_path.clone(),
            resources: cfg.linux.as_ref().and_then(|l| {
                l.resources.clone().map(|res| pb::ContainerResources {
                    linux: Some(res),
                    windows: None,
                })
            }),
            image_id: r.image_id.clone(),
            user: r.user.as_ref().map(|u| pb::ContainerUser {
                linux: Some(pb::LinuxContainerUser {
                    uid: i64::from(u.uid),
                    gid: i64::from(u.gid),
                    supplemental_groups: u.additional_gids.iter().map(|&g| i64::from(g)).collect(),
                }),
            }),
            stop_signal: 0,
        })
    }

    /// Stops a container: `signal` first, SIGKILL after `timeout`. Idempotent.
    /// Stops a container (see [`Runtime::stop_container_exit`]) and reports its stop once.
    async fn stop_container_inner(&self, r: &ContainerRecord, timeout: i64) -> DResult<()> {
        self.stop_container_exit(r, timeout).await?;
        if self.observe(r).state == pb::ContainerState::ContainerExited {
            self.report_stopped(r);
            // Like containerd's task delete: an exited container's rootfs is not left mounted
            // in keelsond's namespace (its upper layer stays until RemoveContainer).
            // A failure is retried by RemoveContainer's unmount.
            let (d, id, rootfs) = (self.d.clone(), r.id.clone(), r.bundle.join("rootfs"));
            let unmount = move || d.images.unmount_snapshot_at(&id, &rootfs).map_err(internal);
            if let Err(e) = blocking(unmount).await {
                tracing::warn!(id = %r.id, error = %e, "unmounting a stopped container's rootfs");
            }
        }
        Ok(())
    }

    /// Makes a running container exit: its stop signal, up to `timeout` seconds, SIGKILL.
    async fn stop_container_exit(&self, r: &ContainerRecord, timeout: i64) -> DResult<()> {
        if self.observe(r).state != pb::ContainerState::ContainerRunning {
            // Never started: nothing runs the user's program; the monitor goes with delete.
            return Ok(());
        }
        let root = self.d.cfg.engine_root();
        let exit_file = r.exit_file.clone();
        if timeout > 0 {
            let (root2, id, sig) = (root.clone(), r.id.clone(), r.stop_signal);
            let _ = blocking(move || {
                keelson_container::container::kill(&root2, &id, sig, false).map_err(internal)
            })
            .await;
            let secs = u64::try_from(timeout).unwrap_or(0);
            if wait_until(Duration::from_secs(secs), || {
                mon::read_exit(&exit_file).is_some()
            })
            .await
            {
                return Ok(());
            }
        }
        let id = r.id.clone();
        let _ = blocking(move || {
            keelson_container::container::kill(&root, &id, libc::SIGKILL, true).map_err(internal)
        })
        .await;
        if !wait_until(Duration::from_secs(10), || {
            mon::read_exit(&exit_file).is_some()
        })
        .await
        {
            return Err(DaemonError::Internal(format!(
                "container {} did not exit after SIGKILL",
                r.id
            )));
        }
        Ok(())
    }

    /// Removes a container and everything it has on the host. Idempotent.
    async fn remove_container_inner(&self, r: &ContainerRecord) -> DResult<()> {
        self.stop_container_inner(r, 0).await?;
        let d = self.d.clone();
        let rec = r.clone();
        blocking(move || {
            let root = d.cfg.engine_root();
            match keelson_container::container::delete(&root, &rec.id, true) {
                Ok(()) | Err(keelson_container::Error::NotExist) => {}
                Err(e) => return Err(internal(format!("deleting container {}: {e}", rec.id))),
            }
            mon::wait_gone(&d.cfg.container_dir(&rec.id), Duration::from_secs(5));
            if let Err(e) = d
                .images
                .unmount_snapshot_at(&rec.id, &rec.bundle.join("rootfs"))
            {
                tracing::warn!(id = %rec.id, error = %e, "unmounting the rootfs");
            }
            // Out of the store now; the tree goes in the background (see `trash`).
            match d.images.retire_snapshot(&rec.id) {
                Ok(dir) => d.trash.put(dir),
                Err(e) => tracing::warn!(id = %rec.id, error = %e, "removing the snapshot"),
            }
            let dir = d.cfg.container_dir(&rec.id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| internal(format!("removing {}: {e}", dir.display())))?;
            }
            Ok(())
        })
        .await?;
        self.d.drop_container(&r.id).await?;
        self.d.forget_lock(&r.id);
        self.d.cpu_samples.forget(&format!("ctr/{}", r.id));
        self.d.layer_usage.forget(&r.id);
        self.event(
            &r.id,
            &r.sandbox_id,
            pb::ContainerEventType::ContainerDeletedEvent,
        );
        Ok(())
    }

    fn infra_spec(id: &str, cfg: &pb::PodSandboxConfig) -> DResult<InfraSpec> {
        let linux = cfg.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let ns = sc.namespace_options.clone().unwrap_or_default();
        if ns_mode(ns.network) == pb::NamespaceMode::Target
            || ns_mode(ns.ipc) == pb::NamespaceMode::Target
        {
            return Err(DaemonError::Invalid(
                "namespace mode TARGET is only valid for pid".into(),
            ));
        }
        if ns
            .userns_options
            .as_ref()
            .is_some_and(|u| u.mode != pb::NamespaceMode::Node as i32)
        {
            return Err(DaemonError::Unimplemented(
                "user namespaces for pods (userns_options mode POD)".into(),
            ));
        }
        let host_network = ns_mode(ns.network) == pb::NamespaceMode::Node;
        let mut sysctls: Vec<(String, String)> = linux.sysctls.clone().into_iter().collect();
        sysctls.sort();
        for (k, _) in &sysctls {
            crate::pause::sysctl_path(k).map_err(DaemonError::Invalid)?;
            if host_network && (k.starts_with("net.") || k.starts_with("net/")) {
                return Err(DaemonError::Invalid(format!(
                    "sysctl {k} is not allowed for a pod on the host network"
                )));
            }
        }
        Ok(InfraSpec {
            id: id.to_string(),
            hostname: cfg.hostname.clone(),
            host_network,
            host_ipc: ns_mode(ns.ipc) == pb::NamespaceMode::Node,
            pod_pid: ns_mode(ns.pid) == pb::NamespaceMode::Pod,
            sysctls,
            cgroup_parent: linux.cgroup_parent.clone(),
            dns: cfg.dns_config.as_ref().map(|d| sandbox::Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
        })
    }
}

fn check_metadata_sandbox(m: Option<&pb::PodSandboxMetadata>) -> DResult<&pb::PodSandboxMetadata> {
    let m = m.ok_or_else(|| DaemonError::Invalid("sandbox config must include metadata".into()))?;
    if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
        return Err(DaemonError::Invalid(
            "sandbox metadata must have name, namespace and uid".into(),
        ));
    }
    Ok(m)
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _req: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<pb::RunPodSandboxRequest>,
    ) -> Result<Response<pb::RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let cfg = req
            .config
            .ok_or_else(|| DaemonError::Invalid("RunPodSandbox needs a config".into()))?;
        let meta = check_metadata_sandbox(cfg.metadata.as_ref())?.clone();
        if !req.runtime_handler.is_empty() && req.runtime_handler != "keelson" {
            return Err(DaemonError::NotFound(format!(
                "no runtime for \"{}\" is configured",
                req.runtime_handler
            ))
            .into());
        }
        // One sandbox per (name, namespace, uid, attempt), as the kubelet expects.
        if let Some(s) = self
            .d
            .sandboxes_where(|s| s.metadata.as_deref() == Some(&meta))
            .first()
        {
            return Err(DaemonError::Exists(format!(
                "the sandbox name \"{}_{}_{}_{}\" is reserved for {}",
                meta.name, meta.namespace, meta.uid, meta.attempt, s.id
            ))
            .into());
        }
        let id = new_id()?;
        let _g = self.d.lock(&id).await;
        let spec = Runtime::infra_spec(&id, &cfg)?;
        let d = self.d.clone();
        let infra = blocking(move || {
            sandbox::start(&d.cfg.pause_bin, &d.cfg.state, &d.cgroup_layout, &spec).map_err(|e| {
                match e {
                    sandbox::SandboxError::Infra { .. } => DaemonError::Invalid(e.to_string()),
                    e => internal(e),
                }
            })
        })
        .await?;
        let mut rec = SandboxRecord {
            id: id.clone(),
            config: cfg.encode_to_vec(),
            labels: Default::default(),
            metadata: None,
            runtime_handler: req.runtime_handler.clone(),
            created_at: now_ns(),
            state: SandboxState::Ready,
            infra,
            ips: Vec::new(),
            network: None,
        };
        if let Err(e) = self.d.put_sandbox(rec.clone()).await {
            let _ = sandbox::remove(&rec.infra);
            return Err(e.into());
        }
        if let Some(netns) = rec.infra.netns.clone() {
            match net::setup(&self.d, &id, &netns, &cfg).await {
                Ok((ips, network)) => {
                    rec.ips = ips;
                    rec.network = network;
                }
                Err(e) => {
                    let infra = rec.infra.clone();
                    let _ = blocking(move || sandbox::remove(&infra).map_err(internal)).await;
                    let _ = self.d.drop_sandbox(&id).await;
                    return Err(e.into());
                }
            }
        }
        self.d.put_sandbox(rec).await?;
        tracing::info!(sandbox = %id, pod = %meta.name, namespace = %meta.namespace, "sandbox ready");
        // Like containerd: a sandbox's events go under its own id.
        self.event(&id, &id, pb::ContainerEventType::ContainerCreatedEvent);
        self.event(&id, &id, pb::ContainerEventType::ContainerStartedEvent);
        Ok(Response::new(pb::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<pb::StopPodSandboxRequest>,
    ) -> Result<Response<pb::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let r = match self.d.sandbox(&id) {
            Ok(r) => r,
            // Stopping what is not there succeeds: the kubelet retries.
            Err(DaemonError::NotFound(_)) => {
                return Ok(Response::new(pb::StopPodSandboxResponse {}));
            }
            Err(e) => return Err(e.into()),
        };
        let _g = self.d.lock(&r.id).await;
        for c in self.d.containers_where(|c| c.sandbox_id == r.id) {
            self.stop_container_inner(&c, 0).await?;
        }
        let mut r = self.d.sandbox(&r.id)?;
        if r.network.is_some() || r.infra.netns.is_some() {
            if let Some(netns) = r.infra.netns.clone() {
                let cfg = sandbox_config(&r)?;
                net::teardown(&self.d, &r.id, &netns, &cfg).await?;
            }
            r.network = None;
        }
        let mut infra = r.infra.clone();
        let infra = blocking(move || {
            sandbox::stop(&infra);
            sandbox::release_mounts(&mut infra).map_err(internal)?;
            Ok(infra)
        })
        .await?;
        r.infra = infra;
        let was_ready = r.state == SandboxState::Ready;
        r.state = SandboxState::NotReady;
        self.d.put_sandbox(r).await?;
        if was_ready {
            self.event(&id, &id, pb::ContainerEventType::ContainerStoppedEvent);
        }
        Ok(Response::new(pb::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<pb::RemovePodSandboxRequest>,
    ) -> Result<Response<pb::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let r = match self.d.sandbox(&id) {
            Ok(r) => r,
            Err(DaemonError::NotFound(_)) => {
                return Ok(Response::new(pb::RemovePodSandboxResponse {}));
            }
            Err(e) => return Err(e.into()),
        };
        // Like containerd: stop first (idempotent), then remove containers and the sandbox.
        self.stop_pod_sandbox(Request::new(pb::StopPodSandboxRequest {
            pod_sandbox_id: r.id.clone(),
        }))
        .await?;
        let _g = self.d.lock(&r.id).await;
        for c in self.d.containers_where(|c| c.sandbox_id == r.id) {
            let _cg = self.d.lock(&c.id).await;
            self.remove_container_inner(&c).await?;
        }
        let r = self.d.sandbox(&r.id)?;
        let infra = r.infra.clone();
        blocking(move || sandbox::remove(&infra).map_err(internal)).await?;
        self.d.drop_sandbox(&r.id).await?;
        self.d.forget_lock(&r.id);
        self.d.cpu_samples.forget(&format!("pod/{}", r.id));
        self.event(&r.id, &r.id, pb::ContainerEventType::ContainerDeletedEvent);
        Ok(Response::new(pb::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<pb::PodSandboxStatusRequest>,
    ) -> Result<Response<pb::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let r = self.d.sandbox(&req.pod_sandbox_id)?;
        let status = self.sandbox_status(&r)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": r.infra.pid,
                "netns": r.infra.netns,
                "cgroups": r.infra.cgroups.as_ref().map(|c| c.dirs.iter().map(|d| d.cgroup.clone()).collect::<Vec<_>>()),
                "network": r.network,
                "runtimeHandler": r.runtime_handler,
                "resolvConf": r.infra.resolv_conf,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(pb::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<pb::ListPodSandboxRequest>,
    ) -> Result<Response<pb::ListPodSandboxResponse>, Status> {
        let items = self.list_sandboxes(req.into_inner().filter)?;
        Ok(Response::new(pb::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = Stream<pb::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<pb::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = self.list_sandboxes(req.into_inner().filter)?;
        let out = pb::StreamPodSandboxesResponse {
            pod_sandboxes: items,
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(out)))))
    }

    async fn create_container(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let sb = self.d.sandbox(&req.pod_sandbox_id)?;
        let config = req
            .config
            .ok_or_else(|| DaemonError::Invalid("CreateContainer needs a config".into()))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| DaemonError::Invalid("container config must include metadata".into()))?;
        if meta.name.is_empty() {
            return Err(DaemonError::Invalid("container metadata must have a name".into()).into());
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| DaemonError::Invalid("container config must name an image".into()))?;
        if !self.infra_ready(&sb) {
            return Err(
                DaemonError::Precondition(format!("sandbox {} is not ready", sb.id)).into(),
            );
        }
        for c in self.d.containers_where(|c| c.sandbox_id == sb.id) {
            if let Ok(cc) = container_config(&c)
                && cc.metadata.as_ref() == Some(&meta)
            {
                return Err(DaemonError::Exists(format!(
                    "the container name \"{}_{}\" is reserved for {}",
                    meta.name, meta.attempt, c.id
                ))
                .into());
            }
        }
        let sandbox_cfg = request_sandbox_config(&sb, req.sandbox_config)?;
        let id = new_id()?;
        let _g = self.d.lock(&id).await;
        let d = self.d.clone();
        let rec = blocking(move || {
            create_container_blocking(&d, &id, &sb, &sandbox_cfg, config, &image_name, &meta)
        })
        .await?;
        self.d.put_container(rec.clone()).await?;
        self.event(
            &rec.id,
            &rec.sandbox_id,
            pb::ContainerEventType::ContainerCreatedEvent,
        );
        Ok(Response::new(pb::CreateContainerResponse {
            container_id: rec.id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let r = self.d.container(&id)?;
        let _g = self.d.lock(&r.id).await;
        let r = self.d.container(&r.id)?;
        match self.observe(&r).state {
            pb::ContainerState::ContainerCreated => {}
            s => {
                return Err(DaemonError::Precondition(format!(
                    "container {} is in state {}, not CONTAINER_CREATED",
                    r.id,
                    s.as_str_name()
                ))
                .into());
            }
        }
        let root = self.d.cfg.engine_root();
        let cid = r.id.clone();
        blocking(move || {
            keelson_container::container::start(&root, &cid)
                .map_err(|e| internal(format!("starting container {cid}: {e}")))
        })
        .await?;
        let mut r = r;
        r.started_at = now_ns();
        self.d.put_container(r.clone()).await?;
        self.event(
            &r.id,
            &r.sandbox_id,
            pb::ContainerEventType::ContainerStartedEvent,
        );
        self.watch_exit(&r.id);
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::StopContainerResponse>, Status> {
        let req = req.into_inner();
        let r = match self.d.container(&req.container_id) {
            Ok(r) => r,
            Err(DaemonError::NotFound(_)) => {
                return Ok(Response::new(pb::StopContainerResponse {}));
            }
            Err(e) => return Err(e.into()),
        };
        let _g = self.d.lock(&r.id).await;
        self.stop_container_inner(&r, req.timeout).await?;
        Ok(Response::new(pb::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let r = match self.d.container(&id) {
            Ok(r) => r,
            Err(DaemonError::NotFound(_)) => {
                return Ok(Response::new(pb::RemoveContainerResponse {}));
            }
            Err(e) => return Err(e.into()),
        };
        let _g = self.d.lock(&r.id).await;
        self.remove_container_inner(&r).await?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let containers = self.list_containers_filtered(req.into_inner().filter)?;
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    type StreamContainersStream = Stream<pb::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<pb::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let containers = self.list_containers_filtered(req.into_inner().filter)?;
        let out = pb::StreamContainersResponse { containers };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(out)))))
    }

    async fn container_status(
        &self,
        req: Request<pb::ContainerStatusRequest>,
    ) -> Result<Response<pb::ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let r = self.d.container(&req.container_id)?;
        let status = self.container_status(&r)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "sandboxID": r.sandbox_id,
                "bundle": r.bundle,
                "exitFile": r.exit_file,
                "runtimeSpec": std::fs::read_to_string(r.bundle.join("config.json")).ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(pb::ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<pb::UpdateContainerResourcesRequest>,
    ) -> Result<Response<pb::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let r = self.d.container(&req.container_id)?;
        let _g = self.d.lock(&r.id).await;
        let Some(linux) = req.linux else {
            return Ok(Response::new(pb::UpdateContainerResourcesResponse {}));
        };
        let res = resources_to_oci(&linux)?;
        let root = self.d.cfg.engine_root();
        let cid = r.id.clone();
        blocking(move || {
            keelson_container::container::update(&root, &cid, &res)
                .map_err(|e| DaemonError::Invalid(format!("updating {cid}: {e}")))
        })
        .await?;
        // What status reports follows what was applied.
        let mut cfg = container_config(&r)?;
        let mut lc = cfg.linux.unwrap_or_default();
        lc.resources = Some(linux);
        cfg.linux = Some(lc);
        let mut r = r;
        r.config = cfg.encode_to_vec();
        self.d.put_container(r).await?;
        Ok(Response::new(pb::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<pb::ReopenContainerLogRequest>,
    ) -> Result<Response<pb::ReopenContainerLogResponse>, Status> {
        let r = self.d.container(&req.into_inner().container_id)?;
        if self.observe(&r).state != pb::ContainerState::ContainerRunning {
            return Err(
                DaemonError::Precondition(format!("container {} is not running", r.id)).into(),
            );
        }
        let dir = self.d.cfg.container_dir(&r.id);
        blocking(move || mon::reopen_log(&dir)).await?;
        Ok(Response::new(pb::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<pb::ExecSyncRequest>,
    ) -> Result<Response<pb::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let r = self.d.container(&req.container_id)?;
        if self.observe(&r).state != pb::ContainerState::ContainerRunning {
            return Err(
                DaemonError::Precondition(format!("container {} is not running", r.id)).into(),
            );
        }
        if req.cmd.is_empty() {
            return Err(DaemonError::Invalid("ExecSync needs a command".into()).into());
        }
        let out = mon::exec_sync(&self.d, &r.id, &req.cmd, req.timeout).await?;
        Ok(Response::new(out))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        let req = req.into_inner();
        if req.container_id.is_empty() {
            return Err(DaemonError::Invalid("missing required container_id".into()).into());
        }
        let opts = streaming::StdioOptions {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
        };
        streaming::check_stdio(&opts, false).map_err(DaemonError::Invalid)?;
        if req.cmd.is_empty() {
            return Err(DaemonError::Invalid("Exec needs a command".into()).into());
        }
        let r = self.d.container(&req.container_id)?;
        if self.observe(&r).state != pb::ContainerState::ContainerRunning {
            return Err(
                DaemonError::Precondition(format!("container {} is not running", r.id)).into(),
            );
        }
        let url = self.d.streams.url_for(streaming::StreamRequest::Exec {
            container_id: r.id,
            cmd: req.cmd,
            opts,
        })?;
        Ok(Response::new(pb::ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let req = req.into_inner();
        if req.container_id.is_empty() {
            return Err(DaemonError::Invalid("missing required container_id".into()).into());
        }
        let opts = streaming::StdioOptions {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
        };
        streaming::check_stdio(&opts, true).map_err(DaemonError::Invalid)?;
        let r = self.d.container(&req.container_id)?;
        if self.observe(&r).state != pb::ContainerState::ContainerRunning {
            return Err(
                DaemonError::Precondition(format!("container {} is not running", r.id)).into(),
            );
        }
        let url = self.d.streams.url_for(streaming::StreamRequest::Attach {
            container_id: r.id,
            opts,
        })?;
        Ok(Response::new(pb::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<pb::PortForwardRequest>,
    ) -> Result<Response<pb::PortForwardResponse>, Status> {
        let req = req.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(DaemonError::Invalid("missing required pod_sandbox_id".into()).into());
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(DaemonError::Invalid(format!("port {p} is not in 1-65535")).into());
        }
        let sb = self.d.sandbox(&req.pod_sandbox_id)?;
        if !self.infra_ready(&sb) {
            return Err(
                DaemonError::Precondition(format!("sandbox {} is not ready", sb.id)).into(),
            );
        }
        let url = self
            .d
            .streams
            .url_for(streaming::StreamRequest::PortForward {
                sandbox_id: sb.id,
                ports: req.port,
            })?;
        Ok(Response::new(pb::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<pb::ContainerStatsRequest>,
    ) -> Result<Response<pb::ContainerStatsResponse>, Status> {
        let r = self.d.container(&req.into_inner().container_id)?;
        // Off the async workers: a writable layer may have to be walked.
        let me = Runtime { d: self.d.clone() };
        let stats = blocking(move || me.stats_of(&r)).await?;
        Ok(Response::new(pb::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<pb::ListContainerStatsRequest>,
    ) -> Result<Response<pb::ListContainerStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        // Off the async workers: writable layers may have to be walked.
        let me = Runtime { d: self.d.clone() };
        let stats = blocking(move || {
            let mut stats = Vec::new();
            for r in me.d.all_containers() {
                if (!f.id.is_empty() && !r.id.starts_with(&f.id))
                    || (!f.pod_sandbox_id.is_empty()
                        && !r.sandbox_id.starts_with(&f.pod_sandbox_id))
                {
                    continue;
                }
                let cfg = container_config(&r)?;
                if !matches_labels(&cfg.labels, &f.label_selector) {
                    continue;
                }
                stats.push(me.stats_of(&r)?);
            }
            Ok(stats)
        })
        .await?;
        Ok(Response::new(pb::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = Stream<pb::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        _req: Request<pb::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        Err(Status::unimplemented(
            "StreamContainerStats: use ListContainerStats",
        ))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<pb::PodSandboxStatsRequest>,
    ) -> Result<Response<pb::PodSandboxStatsResponse>, Status> {
        let r = self.d.sandbox(&req.into_inner().pod_sandbox_id)?;
        // Off the async workers: its containers' writable layers may have to be walked.
        let me = Runtime { d: self.d.clone() };
        let stats = blocking(move || me.sandbox_stats(&r)).await?;
        Ok(Response::new(pb::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<pb::ListPodSandboxStatsRequest>,
    ) -> Result<Response<pb::ListPodSandboxStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        // Off the async workers: writable layers may have to be walked.
        let me = Runtime { d: self.d.clone() };
        let stats = blocking(move || {
            let mut sandboxes = me.d.all_sandboxes();
            sandboxes.sort_by_key(|s| s.created_at);
            let mut stats = Vec::new();
            for r in sandboxes {
                if !f.id.is_empty() && !r.id.starts_with(&f.id) {
                    continue;
                }
                if !matches_labels(&sandbox_config(&r)?.labels, &f.label_selector) {
                    continue;
                }
                match me.sandbox_stats(&r) {
                    Ok(s) => stats.push(s),
                    // Like containerd: a pod that is not ready (or went away) is left out.
                    Err(DaemonError::Unavailable(m) | DaemonError::NotFound(m)) => {
                        tracing::debug!(sandbox = %r.id, "no stats: {m}");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(stats)
        })
        .await?;
        Ok(Response::new(pb::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = Stream<pb::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        _req: Request<pb::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        Err(Status::unimplemented(
            "StreamPodSandboxStats: not built yet",
        ))
    }

    async fn update_runtime_config(
        &self,
        req: Request<pb::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<pb::UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            for part in cidr.split(',') {
                part.trim()
                    .parse::<ipnet::IpNet>()
                    .map_err(|e| DaemonError::Invalid(format!("pod CIDR {part:?}: {e}")))?;
            }
            *self.d.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr;
        }
        Ok(Response::new(pb::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let (net_ok, net_reason) = net::ready(&self.d).await;
        let conditions = vec![
            pb::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            pb::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net_ok,
                reason: if net_ok {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: net_reason,
            },
        ];
        let mut info = HashMap::new();
        if verbose {
            let cfg = &self.d.cfg;
            let v = serde_json::json!({
                "root": cfg.root, "state": cfg.state,
                "cniConfDir": cfg.cni_conf_dir, "cniBinDirs": cfg.cni_bin_dirs,
                "podCIDR": *self.d.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()),
            });
            info.insert("config".to_string(), v.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            status: Some(pb::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![pb::RuntimeHandler {
                name: String::new(),
                features: Some(pb::RuntimeHandlerFeatures {
                    recursive_read_only_mounts:
                        keelson_container::idmap::recursive_readonly_supported(),
                    user_namespaces: false,
                }),
            }],
            features: Some(pb::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<pb::CheckpointContainerRequest>,
    ) -> Result<Response<pb::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointContainer: not supported by keelsond",
        ))
    }

    type GetContainerEventsStream = Stream<pb::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<pb::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.d.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx);
        use tokio_stream::StreamExt;
        let s = s.filter_map(|ev| ev.ok().map(Ok));
        Ok(Response::new(Box::pin(s)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<pb::ListMetricDescriptorsRequest>,
    ) -> Result<Response<pb::ListMetricDescriptorsResponse>, Status> {
        Err(Status::unimplemented(
            "ListMetricDescriptors: not built yet",
        ))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<pb::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<pb::ListPodSandboxMetricsResponse>, Status> {
        Err(Status::unimplemented(
            "ListPodSandboxMetrics: not built yet",
        ))
    }

    type StreamPodSandboxMetricsStream = Stream<pb::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<pb::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        Err(Status::unimplemented(
            "StreamPodSandboxMetrics: not built yet",
        ))
    }

    async fn runtime_config(
        &self,
        _req: Request<pb::RuntimeConfigRequest>,
    ) -> Result<Response<pb::RuntimeConfigResponse>, Status> {
        Ok(Response::new(pb::RuntimeConfigResponse {
            linux: Some(pb::LinuxRuntimeConfiguration {
                cgroup_driver: pb::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _req: Request<pb::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<pb::UpdatePodSandboxResourcesResponse>, Status> {
        Err(Status::unimplemented(
            "UpdatePodSandboxResources: not built yet",
        ))
    }
}

impl Runtime {
    fn list_sandboxes(&self, f: Option<pb::PodSandboxFilter>) -> DResult<Vec<pb::PodSandbox>> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        // The cheap tests first (id, then the labels of the config), the state (is the infra
        // process alive) only for what is left: the kubelet asks per pod, by its UID label.
        for r in self.d.sandboxes_where(|r| {
            (f.id.is_empty() || r.id.starts_with(&f.id))
                && matches_labels(&r.labels, &f.label_selector)
        }) {
            let st = self.sandbox_status(&r)?;
            if let Some(want) = &f.state
                && want.state != st.state
            {
                continue;
            }
            out.push(pb::PodSandbox {
                id: st.id,
                metadata: st.metadata,
                state: st.state,
                created_at: st.created_at,
                labels: st.labels,
                annotations: st.annotations,
                runtime_handler: st.runtime_handler,
            });
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    fn list_containers_filtered(
        &self,
        f: Option<pb::ContainerFilter>,
    ) -> DResult<Vec<pb::Container>> {
        let f = f.unwrap_or_default();
        let mut out = Vec::new();
        // As for sandboxes: ids and labels first, the observed state only for what is left.
        for r in self.d.containers_where(|r| {
            (f.id.is_empty() || r.id.starts_with(&f.id))
                && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
                && matches_labels(&r.labels, &f.label_selector)
        }) {
            let cfg = container_config(&r)?;
            let state = self.observe(&r).state as i32;
            if let Some(want) = &f.state
                && want.state != state
            {
                continue;
            }
            out.push(pb::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: cfg.metadata.clone(),
                image: Some(pb::ImageSpec {
                    image: r.image.clone(),
                    ..Default::default()
                }),
                image_ref: r.image_ref.clone(),
                state,
                created_at: r.created_at,
                labels: cfg.labels.clone(),
                annotations: cfg.annotations.clone(),
                image_id: r.image_id.clone(),
            });
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    fn stats_of(&self, r: &ContainerRecord) -> DResult<pb::ContainerStats> {
        let cfg = container_config(r)?;
        let ts = now_ns();
        let cg = keelson_container::container::load(&self.d.cfg.engine_root(), &r.id)
            .ok()
            .map(|s| s.cgroups);
        let u = stats::usage_of(cg.as_ref());
        let layer = self.d.layer_usage.get(&r.id, || {
            self.d
                .images
                .snapshot_usage(&r.id)
                .map_err(|e| tracing::debug!(id = %r.id, error = %e, "writable layer usage"))
                .ok()
        });
        Ok(pb::ContainerStats {
            attributes: Some(pb::ContainerAttributes {
                id: r.id.clone(),
                metadata: cfg.metadata.clone(),
                labels: cfg.labels.clone(),
                annotations: cfg.annotations.clone(),
            }),
            cpu: stats::cpu(&self.d.cpu_samples, &format!("ctr/{}", r.id), &u, ts),
            memory: stats::memory(&u, ts),
            writable_layer: layer.map(|(at, u)| stats::writable_layer(self.d.images.root(), at, u)),
            ..Default::default()
        })
    }

    /// One pod's stats (containerd's podSandboxStats): the pod cgroup's CPU and memory, the
    /// netns's interfaces, the process count and the stats of its containers. A pod that is
    /// not ready has none (UNAVAILABLE).
    fn sandbox_stats(&self, r: &SandboxRecord) -> DResult<pb::PodSandboxStats> {
        if !self.infra_ready(r) {
            return Err(DaemonError::Unavailable(format!(
                "failed to get pod sandbox stats since sandbox container {:?} is not in ready state",
                r.id
            )));
        }
        let cfg = sandbox_config(r)?;
        let ts = now_ns();
        let members: Vec<ContainerRecord> = self.d.containers_where(|c| c.sandbox_id == r.id);
        let member_cgroups: Vec<Cgroups> = members
            .iter()
            .filter_map(|c| {
                keelson_container::container::load(&self.d.cfg.engine_root(), &c.id)
                    .ok()
                    .map(|s| s.cgroups)
            })
            .collect();
        // The pod's cgroup is its cgroup_parent, which holds the sandbox and its containers
        // (as containerd reads it). Without a parent they are siblings: their sum.
        let parent = cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
            .unwrap_or_default();
        let u = if parent.is_empty() {
            let mut u = stats::usage_of(r.infra.cgroups.as_ref());
            for cg in &member_cgroups {
                stats::add_usage(&mut u, &cg.usage());
            }
            u
        } else {
            self.d
                .cgroup_layout
                .resolve(Some(Path::new(parent)), &r.id)
                .map_err(|e| internal(format!("the pod cgroup {parent}: {e}")))?
                .usage()
        };
        let network = match &r.infra.netns {
            Some(_) => Some(stats::network_of_pid(r.infra.pid, ts).map_err(|e| {
                internal(format!(
                    "failed to obtain network stats of sandbox {}: {e}",
                    r.id
                ))
            })?),
            None => None,
        };
        let mut containers = Vec::new();
        for c in &members {
            containers.push(self.stats_of(c)?);
        }
        // Like containerd: the processes of the containers (the infra process not counted).
        let processes: u64 = member_cgroups
            .iter()
            .map(|cg| cg.usage().pids.unwrap_or(0))
            .sum();
        containers.sort_by(|a, b| {
            let id = |s: &pb::ContainerStats| s.attributes.as_ref().map(|a| a.id.clone());
            id(a).cmp(&id(b))
        });
        Ok(pb::PodSandboxStats {
            attributes: Some(pb::PodSandboxAttributes {
                id: r.id.clone(),
                metadata: cfg.metadata.clone(),
                labels: cfg.labels.clone(),
                annotations: cfg.annotations.clone(),
            }),
            linux: Some(pb::LinuxPodSandboxStats {
                cpu: stats::cpu(&self.d.cpu_samples, &format!("pod/{}", r.id), &u, ts),
                memory: stats::memory(&u, ts),
                network,
                process: Some(pb::ProcessUsage {
                    timestamp: ts,
                    process_count: Some(pb::UInt64Value { value: processes }),
                }),
                containers,
                io: None,
            }),
            windows: None,
        })
    }
}

/// The sandbox config for a CreateContainer: the one the kubelet passed along, else the stored one.
fn request_sandbox_config(
    sb: &SandboxRecord,
    given: Option<pb::PodSandboxConfig>,
) -> DResult<pb::PodSandboxConfig> {
    match given {
        Some(c) if c.metadata.is_some() => Ok(c),
        _ => sandbox_config(sb),
    }
}

/// OCI resources of a CRI `LinuxContainerResources` (for `update`).
fn resources_to_oci(r: &pb::LinuxContainerResources) -> DResult<oci_spec::runtime::LinuxResources> {
    spec::check_resources(r).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let mut v = serde_json::json!({});
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), r.cpu_shares.into());
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), r.cpu_quota.into());
    }
    if r.cpu_period != 0 {
        cpu.insert("period".into(), r.cpu_period.into());
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), r.cpuset_cpus.clone().into());
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), r.cpuset_mems.clone().into());
    }
    if !cpu.is_empty() {
        v["cpu"] = serde_json::Value::Object(cpu);
    }
    if r.memory_limit_in_bytes > 0 {
        v["memory"] = serde_json::json!({"limit": r.memory_limit_in_bytes});
    }
    serde_json::from_value(v).map_err(|e| DaemonError::Invalid(format!("resources: {e}")))
}

/// The blocking half of CreateContainer: snapshot, spec, monitor + engine create. Undoes
/// everything on failure.
fn create_container_blocking(
    d: &Daemon,
    id: &str,
    sb: &SandboxRecord,
    sandbox_cfg: &pb::PodSandboxConfig,
    config: pb::ContainerConfig,
    image_name: &str,
    meta: &pb::ContainerMetadata,
) -> DResult<ContainerRecord> {
    let image = d
        .images
        .get(image_name)
        .map_err(|e| DaemonError::NotFound(format!("image \"{image_name}\" not found: {e}")))?;
    let blob = d
        .images
        .content()
        .read(&image.id)
        .map_err(|e| internal(format!("reading the config of {image_name}: {e}")))?;
    let run = spec::image_run_config(&blob).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    let dir = d.cfg.container_dir(id);
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    let undo = |stage: u8| {
        if stage >= 2 {
            let _ = keelson_container::container::delete(&d.cfg.engine_root(), id, true);
        }
        if stage >= 1 {
            let _ = d.images.unmount_snapshot_at(id, &rootfs);
            let _ = d.images.remove_snapshot(id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    };
    std::fs::create_dir_all(&rootfs).map_err(|e| internal(format!("creating bundle: {e}")))?;
    if let Err(e) = d.images.prepare_snapshot(id, image_name) {
        undo(0);
        return Err(internal(format!("preparing the snapshot: {e}")));
    }
    if let Err(e) = d.images.mount_snapshot_at(id, &rootfs) {
        undo(1);
        return Err(internal(format!("mounting the snapshot: {e}")));
    }
    let inputs = spec::Inputs {
        id,
        config: &config,
        sandbox: sandbox_cfg,
        sandbox_id: &sb.id,
        infra: &sb.infra,
        image: &run,
        image_name,
        rootfs: &rootfs,
    };
    let oci = match spec::build(&inputs) {
        Ok(v) => v,
        Err(e) => {
            undo(1);
            return Err(match e {
                spec::SpecError::Invalid(m) => DaemonError::Invalid(m),
                spec::SpecError::Unimplemented(m) => {
                    DaemonError::Unimplemented(format!("{m}: not implemented by keelsond"))
                }
            });
        }
    };
    if let Err(e) = std::fs::write(bundle.join("config.json"), oci.to_string()) {
        undo(1);
        return Err(internal(format!("writing config.json: {e}")));
    }
    let log_path = if !sandbox_cfg.log_directory.is_empty() && !config.log_path.is_empty() {
        std::path::Path::new(&sandbox_cfg.log_directory)
            .join(&config.log_path)
            .display()
            .to_string()
    } else {
        String::new()
    };
    let exit_file = dir.join("exit.json");
    if let Err(e) = mon::create(d, id, &bundle, &dir, &log_path, &exit_file, &config) {
        undo(2);
        return Err(e);
    }
    let stop_signal = run
        .stop_signal
        .as_deref()
        .and_then(|s| keelson_container::container::parse_signal(s).ok())
        .unwrap_or(libc::SIGTERM);
    let image_ref = image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.to_string());
    let _ = meta;
    let user = serde_json::from_value::<OciUser>(oci["process"]["user"].clone())
        .ok()
        .map(|u| ProcessUser {
            uid: u.uid,
            gid: u.gid,
            additional_gids: u.additional_gids,
        });
    Ok(ContainerRecord {
        user,
        id: id.to_string(),
        sandbox_id: sb.id.clone(),
        config: config.encode_to_vec(),
        labels: Default::default(),
        image: image_name.to_string(),
        image_id: image.id.to_string(),
        image_ref,
        created_at: now_ns(),
        started_at: 0,
        log_path,
        bundle,
        exit_file,
        stop_signal,
    })
}

/// `process.user` of the generated OCI config.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciUser {
    uid: u32,
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}
