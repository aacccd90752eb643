//! `runtime.v1.ImageService` over keelson's image store.

use super::{DResult, Daemon, DaemonError, blocking, internal, now_ns};
use keelson_proto::runtime::v1 as pb;
use pb::image_service_server::ImageService;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Images {
    pub d: Arc<Daemon>,
}

fn to_pb(i: &keelson_image::Image) -> pb::Image {
    pb::Image {
        id: i.id.to_string(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: i.uid.map(|value| pb::Int64Value { value }),
        username: i.username.clone(),
        spec: Some(pb::ImageSpec {
            image: i.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// Finds an image by tag, digest reference, ID or unique ID prefix; `None` when absent.
fn lookup(d: &Daemon, name: &str) -> DResult<Option<keelson_image::Image>> {
    if name.is_empty() {
        return Err(DaemonError::Invalid("image name must not be empty".into()));
    }
    match d.images.get(name) {
        Ok(i) => return Ok(Some(i)),
        Err(keelson_image::Error::InvalidReference { .. }) => {}
        Err(_) => {}
    }
    let all = d.images.list().map_err(internal)?;
    let bare = name.strip_prefix("sha256:").unwrap_or(name);
    let hits: Vec<_> = all
        .into_iter()
        .filter(|i| {
            let id = i.id.to_string();
            let hex = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
            id == name || (bare.len() >= 3 && hex.starts_with(bare))
        })
        .collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(hits.into_iter().next()),
        _ => Err(DaemonError::Invalid(format!(
            "image ID prefix \"{name}\" is ambiguous"
        ))),
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Images {
    fn list(&self, filter: Option<pb::ImageFilter>) -> DResult<Vec<pb::Image>> {
        let want = filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let d = self.d.clone();
        match want {
            Some(name) => Ok(lookup(&d, &name)?.iter().map(to_pb).collect()),
            None => Ok(d
                .images
                .list()
                .map_err(internal)?
                .iter()
                .map(to_pb)
                .collect()),
        }
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.list(req.into_inner().filter)?;
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    type StreamImagesStream = Stream<pb::StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<pb::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.list(req.into_inner().filter)?;
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(
            pb::StreamImagesResponse { images },
        )))))
    }

    async fn image_status(
        &self,
        req: Request<pb::ImageStatusRequest>,
    ) -> Result<Response<pb::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = req.image.map(|i| i.image).unwrap_or_default();
        let d = self.d.clone();
        let found = blocking(move || lookup(&d, &name)).await?;
        let mut info = std::collections::HashMap::new();
        if req.verbose
            && let Some(i) = &found
        {
            let v = serde_json::json!({"manifest": i.manifest.to_string(),
                "chainIDs": i.chain_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>()});
            info.insert("info".to_string(), v.to_string());
        }
        // An image that is not there is not an error: `image` stays empty.
        Ok(Response::new(pb::ImageStatusResponse {
            image: found.as_ref().map(to_pb),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<pb::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = req.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(DaemonError::Invalid("PullImage needs an image".into()).into());
        }
        let auth = req
            .auth
            .map(|a| keelson_image::AuthConfig {
                username: a.username,
                password: a.password,
                auth: a.auth,
                server_address: a.server_address,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            })
            .unwrap_or_default();
        // The pull runs on a blocking thread of this runtime (the store's pull future is not
        // `Send`); the caller's deadline still bounds it: when tonic drops this call, `cancel`
        // goes and the pull is dropped where it stands.
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let store = self.d.images.clone();
        let handle = tokio::runtime::Handle::current();
        let name2 = name.clone();
        let res = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                tokio::select! {
                    r = store.pull(&name2, &auth) => Some(r),
                    _ = cancelled => None,
                }
            })
        })
        .await
        .map_err(|e| Status::internal(format!("pull task: {e}")))?;
        drop(cancel);
        let img = match res {
            Some(r) => r.map_err(|e| match e {
                keelson_image::Error::InvalidReference { .. } => {
                    Status::invalid_argument(format!("pulling {name}: {e}"))
                }
                keelson_image::Error::Unimplemented(_) => {
                    Status::unimplemented(format!("pulling {name}: {e}"))
                }
                e => Status::unknown(format!("pulling {name}: {e}")),
            })?,
            None => return Err(Status::cancelled(format!("pulling {name}: cancelled"))),
        };
        tracing::info!(image = %name, id = %img.id, "pulled");
        Ok(Response::new(pb::PullImageResponse {
            image_ref: img.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        let d = self.d.clone();
        blocking(move || {
            let Some(img) = lookup(&d, &name)? else {
                // Removing an absent image succeeds.
                return Ok(());
            };
            let in_use = d
                .all_containers()
                .iter()
                .any(|c| c.image_id == img.id.to_string());
            if in_use {
                return Err(DaemonError::Precondition(format!(
                    "image {} is used by a container",
                    img.id
                )));
            }
            // Every name of the image goes: tags and digests.
            for n in img.repo_tags.iter().chain(img.repo_digests.iter()) {
                match d.images.remove(n) {
                    Ok(_) => {}
                    Err(keelson_image::Error::ImageNotFound(_)) => {}
                    Err(e) => return Err(internal(format!("removing {n}: {e}"))),
                }
            }
            if let Err(e) = d.images.try_gc() {
                tracing::warn!(error = %e, "image garbage collection");
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<pb::ImageFsInfoRequest>,
    ) -> Result<Response<pb::ImageFsInfoResponse>, Status> {
        let d = self.d.clone();
        let fs = blocking(move || {
            let root = d.images.root().to_path_buf();
            // One walk for both figures, counted as containerd's snapshotter usage (du).
            let u = keelson_image::snapshot::disk_usage(&root).map_err(internal)?;
            Ok(pb::FilesystemUsage {
                timestamp: now_ns(),
                fs_id: Some(pb::FilesystemIdentifier {
                    mountpoint: root.display().to_string(),
                }),
                used_bytes: Some(pb::UInt64Value { value: u.bytes }),
                inodes_used: Some(pb::UInt64Value { value: u.inodes }),
            })
        })
        .await?;
        Ok(Response::new(pb::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}
