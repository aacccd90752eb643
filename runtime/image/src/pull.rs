//! Pull from a registry with oci-client: manifest (or index + platform manifest), config,
//! then the layers, each streamed to the content store, verified, and unpacked into its
//! snapshot as soon as it is committed, several at a time.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::auth::{AuthConfig, Endpoint};
use crate::digest::{Digest, chain_ids};
use crate::direct::{ByteStream, Direct};
use crate::error::{Error, Result, malformed};
use crate::model::{self, Document};
use crate::reference::ImageRef;
use crate::store::{Image, ImageStore};

/// One registry endpoint with its client: oci-client, or the store's own small client for
/// hosts whose settings oci-client cannot carry (see `direct.rs`).
struct Remote {
    client: Client,
    direct: Option<Direct>,
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

/// Attempts at one blob while a broken connection still brings new bytes (each continues with
/// an HTTP range from what is on disk).
const BLOB_ATTEMPTS: usize = 4;

/// Why one attempt at a blob stopped.
enum Fetch {
    /// The request failed (not retried here).
    Request(Error),
    /// The body broke off after the request succeeded.
    Body(Error),
}

impl Remote {
    fn new(ep: &Endpoint, r: &ImageRef, auth: RegistryAuth, refresh: Option<&str>) -> Result<Self> {
        let mut pems = Vec::new();
        for path in &ep.options.ca {
            pems.push(std::fs::read(path).map_err(crate::error::io_err("read CA", path))?);
        }
        let reference = r.to_oci(&ep.host);
        // oci-client has no OAuth2 refresh-token exchange: identity tokens go direct too.
        let direct = if ep.options.needs_direct() || refresh.is_some() {
            let mut ca = Vec::new();
            for (pem, path) in pems.iter().zip(&ep.options.ca) {
                ca.extend(
                    reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| registry_err(r, format!("CA {}: {e}", path.display())))?,
                );
            }
            let identity = match ep.options.client.first() {
                None => None,
                Some((cert, key)) => {
                    let c = std::fs::read(cert).map_err(crate::error::io_err("read", cert))?;
                    let k = match key {
                        Some(k) => std::fs::read(k).map_err(crate::error::io_err("read", k))?,
                        None => c.clone(),
                    };
                    Some(reqwest::Identity::from_pkcs8_pem(&c, &k).map_err(|e| {
                        registry_err(r, format!("client certificate {}: {e}", cert.display()))
                    })?)
                }
            };
            let d = Direct::new(
                ep,
                reference.repository(),
                auth.clone(),
                refresh.map(str::to_string),
                ca,
                identity,
            )
            .map_err(|e| registry_err(r, format!("{}: {e}", ep.host)))?;
            Some(d)
        } else {
            None
        };
        let certs = pems
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect();
        let config = ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.options.skip_verify,
            accept_invalid_hostnames: ep.options.skip_verify,
            extra_root_certificates: certs,
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| registry_err(r, format!("{}: client: {e}", ep.host)))?;
        Ok(Self {
            client,
            direct,
            reference,
            auth,
            host: ep.host.clone(),
        })
    }

    /// The digest of the manifest or index a tag names (HEAD).
    async fn head_digest(&self, r: &ImageRef) -> Result<Digest> {
        let d = match &self.direct {
            Some(d) => d
                .head_digest(
                    self.reference.tag().unwrap_or("latest"),
                    &model::ACCEPTED_MANIFESTS.join(", "),
                )
                .await
                .map_err(|e| registry_err(r, e))?,
            None => self
                .client
                .fetch_manifest_digest(&self.reference, &self.auth)
                .await
                .map_err(|e| registry_err(r, format!("{}: {e}", self.host)))?,
        };
        Digest::parse(&d)
    }

    /// A manifest's raw bytes.
    async fn manifest_bytes(&self, r: &ImageRef, by: &Reference) -> Result<Vec<u8>> {
        match &self.direct {
            Some(d) => {
                let reference = by.digest().or(by.tag()).unwrap_or("latest").to_string();
                d.manifest(
                    &reference,
                    &model::ACCEPTED_MANIFESTS.join(", "),
                    crate::content::MAX_METADATA_BLOB,
                )
                .await
                .map_err(|e| registry_err(r, e))
            }
            None => {
                let (data, _) = self
                    .client
                    .pull_manifest_raw(by, &self.auth, model::ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| registry_err(r, format!("{}: {e}", self.host)))?;
                Ok(data.to_vec())
            }
        }
    }

    /// A blob's body from `offset`, and whether the server answered with that range (`false`:
    /// the whole blob).
    async fn blob_body(
        &self,
        r: &ImageRef,
        d: &model::Descriptor,
        offset: u64,
    ) -> Result<(ByteStream, bool)> {
        let digest = d.digest.to_string();
        let err = |e: String| registry_err(r, format!("blob {}: {e}", d.digest));
        if let Some(direct) = &self.direct {
            return direct.blob(&digest, offset).await.map_err(err);
        }
        if offset == 0 {
            let s = self
                .client
                .pull_blob_stream(&self.reference, digest.as_str())
                .await
                .map_err(|e| err(e.to_string()))?;
            return Ok((s.stream, false));
        }
        match self
            .client
            .pull_blob_stream_partial(&self.reference, digest.as_str(), offset, None)
            .await
            .map_err(|e| err(e.to_string()))?
        {
            BlobResponse::Partial(s) => Ok((s.stream, true)),
            BlobResponse::Full(s) => Ok((s.stream, false)),
        }
    }

    /// What the reference names: its manifest or index bytes and digest. A tag is resolved
    /// with a HEAD request (as containerd does) and the document is fetched by digest only
    /// when the content store lacks it, so a re-pull of an unchanged tag costs one request.
    async fn resolve(&self, store: &ImageStore, r: &ImageRef) -> Result<(Vec<u8>, Digest)> {
        let digest = match self.reference.digest() {
            Some(d) => Digest::parse(d)?,
            None => self.head_digest(r).await?,
        };
        if let Ok(data) = store.content.read(&digest) {
            return Ok((data, digest));
        }
        let by = self.reference.clone_with_digest(digest.to_string());
        let (data, actual) = self.manifest(r, &by).await?;
        digest.verify(&actual)?;
        Ok((data, actual))
    }

    /// A platform manifest of an index, from the content store when it is there.
    async fn child(
        &self,
        store: &ImageStore,
        r: &ImageRef,
        d: &model::Descriptor,
    ) -> Result<(Vec<u8>, Digest)> {
        if let Ok(data) = store.content.read(&d.digest) {
            return Ok((data, d.digest.clone()));
        }
        let by = self.reference.clone_with_digest(d.digest.to_string());
        let (m, md) = self.manifest(r, &by).await?;
        d.digest.verify(&md)?;
        Ok((m, md))
    }

    /// Fetches a manifest or index; returns its bytes and digest (verified against the
    /// reference's digest when it has one).
    async fn manifest(&self, r: &ImageRef, by: &Reference) -> Result<(Vec<u8>, Digest)> {
        let data = self.manifest_bytes(r, by).await?;
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
        Ok((data, actual))
    }

    /// Streams a blob into the content store (once, under its lock) and verifies it. A
    /// `.partial` file left by an earlier attempt is continued with a range request, and a
    /// connection that breaks off mid-blob is resumed the same way; the digest is checked
    /// over the whole blob.
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
        let mut writer = content.resume_writer(&d.digest, Some(d.size))?;
        // Bytes kept on disk from an earlier pull (not those of this pull's own attempts).
        let mut resumed = writer.offset() > 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = writer.offset();
            match self.fetch_into(&mut writer, r, d).await {
                Ok(()) => {}
                Err(Fetch::Body(e)) if attempts < BLOB_ATTEMPTS && writer.offset() > before => {
                    tracing::info!(blob = %d.digest, offset = writer.offset(), error = %e,
                        "download broke off; resuming");
                    continue;
                }
                Err(Fetch::Request(e) | Fetch::Body(e)) => return Err(e),
            }
            match writer.commit() {
                // Bytes kept from an earlier attempt may be what was wrong (a partial file
                // that was not synced before a crash): start over once from byte 0.
                Err(Error::DigestMismatch { .. }) if resumed => {
                    tracing::warn!(blob = %d.digest, "resumed blob failed verification; downloading it again");
                    resumed = false;
                    attempts = 0;
                    writer = content.writer(&d.digest, Some(d.size))?;
                }
                res => {
                    drop(lock);
                    return res;
                }
            }
        }
    }

    /// One request for the rest of a blob (from `writer.offset()`), written as it arrives.
    async fn fetch_into(
        &self,
        writer: &mut crate::content::BlobWriter,
        r: &ImageRef,
        d: &model::Descriptor,
    ) -> std::result::Result<(), Fetch> {
        let offset = writer.offset();
        if offset == d.size {
            return Ok(());
        }
        let (mut stream, partial) = self.blob_body(r, d, offset).await.map_err(Fetch::Request)?;
        if offset > 0 && !partial {
            // The server sent the whole blob: start over.
            writer.reset().map_err(Fetch::Request)?;
        }
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => writer.write_chunk(&chunk).map_err(Fetch::Request)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(Fetch::Body(registry_err(
                        r,
                        format!("blob {}: {e}", d.digest),
                    )));
                }
            }
        }
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
        let refresh = auth.refresh_token().map(str::to_string);
        let auth = auth.to_registry_auth()?;
        let store = self.clone();
        let lock = tokio::task::spawn_blocking(move || store.shared_lock())
            .await
            .map_err(|e| registry_err(&r, format!("lock task: {e}")))??;
        let res = self.pull_locked(&r, auth, refresh.as_deref()).await;
        drop(lock);
        if res.is_err() {
            let store = self.clone();
            let _ = tokio::task::spawn_blocking(move || store.cleanup_after_failure()).await;
        }
        res
    }

    async fn pull_locked(
        &self,
        r: &ImageRef,
        auth: RegistryAuth,
        refresh: Option<&str>,
    ) -> Result<Image> {
        let mut last_err = None;
        for ep in self.config.hosts.endpoints(&r.registry) {
            let remote = Remote::new(&ep, r, auth.clone(), refresh)?;
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
        let (data, target) = remote.resolve(self, r).await?;
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
                remote.child(self, r, d).await?
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

        // Layers: download and unpack, a bounded number at a time. A layer is unpacked as
        // soon as it is downloaded without waiting for the layers below; one that turns out to
        // need them (a parent directory it does not carry, a hard link into a lower layer) is
        // unpacked again, in order, once every other layer is committed.
        let this = Arc::new(self.clone());
        let chains_ref = &chains;
        let jobs = m
            .layers
            .iter()
            .zip(cfg.rootfs.diff_ids.iter())
            .zip(chains.iter())
            .enumerate()
            .map(|(i, ((l, diff), chain))| {
                let this = this.clone();
                async move {
                    if this.snapshots.has_committed(chain) && this.content.has(&l.digest) {
                        return Ok::<Option<usize>, Error>(None);
                    }
                    remote.blob(&this, r, l).await?;
                    let (this2, l2, diff2, chain2) =
                        (this.clone(), l.clone(), diff.clone(), chain.clone());
                    let base = i == 0;
                    let res = tokio::task::spawn_blocking(move || {
                        this2.unpack_layer(&l2, &diff2, &chain2, base.then_some(&[][..]))
                    })
                    .await
                    .map_err(|e| registry_err(r, format!("unpack task: {e}")))?;
                    match res {
                        Ok(()) => Ok(None),
                        Err(Error::NeedsParents(_)) => Ok(Some(i)),
                        Err(e) => Err(e),
                    }
                }
            });
        let results: Vec<Result<Option<usize>>> = stream::iter(jobs)
            .buffer_unordered(self.config.max_concurrent_downloads.max(1))
            .collect()
            .await;
        let mut deferred = Vec::new();
        for res in results {
            if let Some(i) = res? {
                deferred.push(i);
            }
        }
        deferred.sort_unstable();
        for i in deferred {
            let (this2, l2, diff2, chains2) = (
                this.clone(),
                m.layers[i].clone(),
                cfg.rootfs.diff_ids[i].clone(),
                chains_ref.clone(),
            );
            tokio::task::spawn_blocking(move || {
                this2.unpack_layer(&l2, &diff2, &chains2[i], Some(&chains2[..i]))
            })
            .await
            .map_err(|e| registry_err(r, format!("unpack task: {e}")))??;
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
