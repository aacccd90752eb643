//! Pull from a registry with oci-client: manifest (or index + platform manifest), config,
//! then the layers, each streamed to the content store, verified, and unpacked into its
//! snapshot as soon as it is committed, several at a time.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::auth::{AuthConfig, Endpoint};
use crate::digest::{Digest, chain_ids};
use crate::error::{Error, Result, malformed};
use crate::model::{self, Document};
use crate::reference::ImageRef;
use crate::store::{Image, ImageStore};

/// One registry endpoint with its client.
struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    host: String,
}

fn registry_err(r: &ImageRef, e: impl std::fmt::Display) -> Error {
    Error::Registry {
        reference: r.full(),
        message: e.to_string(),
    }
}

impl Remote {
    fn new(ep: &Endpoint, r: &ImageRef, auth: RegistryAuth) -> Self {
        let config = ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.skip_verify,
            ..Default::default()
        };
        Self {
            client: Client::new(config),
            reference: r.to_oci(&ep.host),
            auth,
            host: ep.host.clone(),
        }
    }

    /// Fetches a manifest or index; returns its bytes and digest (verified against the
    /// reference's digest when it has one).
    async fn manifest(&self, r: &ImageRef, by: &Reference) -> Result<(Vec<u8>, Digest)> {
        let (data, _) = self
            .client
            .pull_manifest_raw(by, &self.auth, model::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry_err(r, format!("{}: {e}", self.host)))?;
        if data.len() as u64 > crate::content::MAX_METADATA_BLOB {
            return Err(malformed(r.full(), "manifest larger than 8 MiB"));
        }
        let actual = Digest::sha256_of(&data);
        if let Some(want) = by.digest() {
            let want = Digest::parse(want)?;
            if want.algorithm() == "sha256" {
                want.verify(&actual)?;
            }
        }
        Ok((data.to_vec(), actual))
    }

    /// Streams a blob into the content store (once, under its lock) and verifies it.
    async fn blob(&self, store: &ImageStore, r: &ImageRef, d: &model::Descriptor) -> Result<()> {
        let content = store.content().clone();
        if content.has(&d.digest) {
            return Ok(());
        }
        let digest = d.digest.clone();
        let lock = {
            let content = content.clone();
            tokio::task::spawn_blocking(move || content.lock(&digest))
                .await
                .map_err(|e| registry_err(r, format!("lock task: {e}")))??
        };
        if content.has(&d.digest) {
            return Ok(());
        }
        let mut writer = content.writer(&d.digest, Some(d.size))?;
        let digest_str = d.digest.to_string();
        let mut s = self
            .client
            .pull_blob_stream(&self.reference, digest_str.as_str())
            .await
            .map_err(|e| registry_err(r, format!("blob {}: {e}", d.digest)))?;
        while let Some(chunk) = s
            .stream
            .try_next()
            .await
            .map_err(|e| registry_err(r, format!("blob {}: {e}", d.digest)))?
        {
            writer.write_chunk(&chunk)?;
        }
        writer.commit()?;
        drop(lock);
        Ok(())
    }
}

impl ImageStore {
    /// Pulls an image and returns it. Pulling what is already there does no blob transfer
    /// (a tag is still resolved with one manifest request; a digest reference that is already
    /// stored needs no network at all).
    pub async fn pull(&self, reference: &str, auth: &AuthConfig) -> Result<Image> {
        let r = ImageRef::parse(reference)?;
        if let Some(d) = &r.digest
            && let Ok(img) = self.get(&r.digest_name(d))
        {
            return Ok(img);
        }
        let auth = auth.to_registry_auth()?;
        let store = self.clone();
        let lock = tokio::task::spawn_blocking(move || store.shared_lock())
            .await
            .map_err(|e| registry_err(&r, format!("lock task: {e}")))??;
        let res = self.pull_locked(&r, auth).await;
        drop(lock);
        if res.is_err() {
            let store = self.clone();
            let _ = tokio::task::spawn_blocking(move || store.cleanup_after_failure()).await;
        }
        res
    }

    async fn pull_locked(&self, r: &ImageRef, auth: RegistryAuth) -> Result<Image> {
        let mut last_err = None;
        for ep in self.config.hosts.endpoints(&r.registry) {
            let remote = Remote::new(&ep, r, auth.clone());
            match self.pull_from(&remote, r).await {
                Ok(img) => return Ok(img),
                // Only failures to reach or read a mirror fall through to the next endpoint;
                // bad content is an error whichever endpoint served it.
                Err(e @ Error::Registry { .. }) => {
                    tracing::debug!(endpoint = %ep.host, error = %e, "endpoint failed");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| registry_err(r, "no endpoint")))
    }

    async fn pull_from(&self, remote: &Remote, r: &ImageRef) -> Result<Image> {
        let (data, target) = remote.manifest(r, &remote.reference).await?;
        let (manifest_data, manifest_digest) = match model::parse_document(&r.full(), &data, None)?
        {
            Document::Manifest(_) => (data.clone(), target.clone()),
            Document::Index(idx) => {
                let want = &self.config.platform;
                let d = model::select_platform(&idx, want).ok_or_else(|| {
                    Error::NoMatchingPlatform {
                        reference: r.full(),
                        platform: want.to_string(),
                    }
                })?;
                let by = remote.reference.clone_with_digest(d.digest.to_string());
                let (m, md) = remote.manifest(r, &by).await?;
                d.digest.verify(&md)?;
                (m, md)
            }
        };
        let m = match model::parse_document(&manifest_digest.to_string(), &manifest_data, None)? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(malformed(r.full(), "an index inside an index"));
            }
        };
        remote.blob(self, r, &m.config).await?;
        let cdata = self.content.read(&m.config.digest)?;
        let cfg = model::parse_config(&m.config.digest.to_string(), &cdata, m.layers.len())?;
        let chains = chain_ids(&cfg.rootfs.diff_ids);

        // Layers: download and unpack, a bounded number at a time.
        let this = Arc::new(self.clone());
        let jobs = m
            .layers
            .iter()
            .zip(cfg.rootfs.diff_ids.iter())
            .zip(chains.iter())
            .map(|((l, diff), chain)| {
                let this = this.clone();
                async move {
                    if this.snapshots.has_committed(chain) && this.content.has(&l.digest) {
                        return Ok::<(), Error>(());
                    }
                    remote.blob(&this, r, l).await?;
                    let (this2, l2, diff2, chain2) =
                        (this.clone(), l.clone(), diff.clone(), chain.clone());
                    tokio::task::spawn_blocking(move || this2.unpack_layer(&l2, &diff2, &chain2))
                        .await
                        .map_err(|e| registry_err(r, format!("unpack task: {e}")))?
                }
            });
        let results: Vec<Result<()>> = stream::iter(jobs)
            .buffer_unordered(self.config.max_concurrent_downloads.max(1))
            .collect()
            .await;
        for res in results {
            res?;
        }

        // Manifests last: a crash before this point leaves no trace in the image list.
        self.content.put(&manifest_digest, &manifest_data)?;
        self.content.put(&target, &data)?;
        let mut names = Vec::new();
        if let Some(t) = r.tagged_name() {
            names.push(t);
        }
        names.push(r.digest_name(&target));
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.record_image(&names, &target, &manifest_digest))
            .await
            .map_err(|e| registry_err(r, format!("record task: {e}")))?
    }
}
