//! The generated server and client talk over a unix socket, the way the
//! kubelet and crictl reach a CRI runtime: a test RuntimeService that only
//! answers Version, served with `serve_with_incoming`, called through the
//! generated `RuntimeServiceClient` on a `unix://` endpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use keelson_proto::runtime::v1 as cri;
use keelson_proto::runtime::v1::image_service_client::ImageServiceClient;
use keelson_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use keelson_proto::runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Response, Status};

struct VersionOnly;

/// Stream type for the server-streaming RPCs this service does not offer.
type NoStream<T> = tokio_stream::Empty<Result<T, Status>>;

/// Implements `RuntimeService` for `VersionOnly`: `version` answers, every
/// listed RPC returns `Unimplemented`.
macro_rules! version_only {
    (
        unary { $($rpc:ident($req:ident) -> $resp:ident;)* }
        streaming { $($srpc:ident($sreq:ident) -> $stream:ident<$sresp:ident>;)* }
    ) => {
        #[tonic::async_trait]
        impl RuntimeService for VersionOnly {
            async fn version(
                &self,
                request: Request<cri::VersionRequest>,
            ) -> Result<Response<cri::VersionResponse>, Status> {
                Ok(Response::new(cri::VersionResponse {
                    // Echo, so the client sees its request arrived intact.
                    version: request.into_inner().version,
                    runtime_name: "keelson-test".into(),
                    runtime_version: "0.0.1".into(),
                    runtime_api_version: "v1".into(),
                }))
            }
            $(
                async fn $rpc(
                    &self,
                    _: Request<cri::$req>,
                ) -> Result<Response<cri::$resp>, Status> {
                    Err(Status::unimplemented(stringify!($rpc)))
                }
            )*
            $(
                type $stream = NoStream<cri::$sresp>;
                async fn $srpc(
                    &self,
                    _: Request<cri::$sreq>,
                ) -> Result<Response<Self::$stream>, Status> {
                    Err(Status::unimplemented(stringify!($srpc)))
                }
            )*
        }
    };
}

version_only! {
    unary {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        container_status(ContainerStatusRequest) -> ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        status(StatusRequest) -> StatusResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
        runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
        update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse;
    }
    streaming {
        stream_pod_sandboxes(StreamPodSandboxesRequest) -> StreamPodSandboxesStream<StreamPodSandboxesResponse>;
        stream_containers(StreamContainersRequest) -> StreamContainersStream<StreamContainersResponse>;
        stream_container_stats(StreamContainerStatsRequest) -> StreamContainerStatsStream<StreamContainerStatsResponse>;
        stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> StreamPodSandboxStatsStream<StreamPodSandboxStatsResponse>;
        get_container_events(GetEventsRequest) -> GetContainerEventsStream<ContainerEventResponse>;
        stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> StreamPodSandboxMetricsStream<StreamPodSandboxMetricsResponse>;
    }
}

/// A fresh directory for the socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keelson-proto-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        SocketDir(dir)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn version_over_a_unix_socket() {
    let dir = SocketDir::new();
    let socket = dir.0.join("cri.sock");
    let listener = UnixListener::bind(&socket).unwrap();

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(RuntimeServiceServer::new(VersionOnly))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    // The same URI form the kubelet is given (--container-runtime-endpoint).
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut runtime = RuntimeServiceClient::new(channel.clone());

    let reply = runtime
        .version(cri::VersionRequest {
            version: "v1-from-client".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply,
        cri::VersionResponse {
            version: "v1-from-client".into(),
            runtime_name: "keelson-test".into(),
            runtime_version: "0.0.1".into(),
            runtime_api_version: "v1".into(),
        }
    );

    // A unary and a server-streaming RPC the service declines.
    let err = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "list_pod_sandbox");
    let err = runtime
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "get_container_events");

    // ImageService is not served at all: the router answers Unimplemented.
    let err = ImageServiceClient::new(channel)
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
