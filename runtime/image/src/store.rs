//! The image store: content, snapshots and image records under one root, and the operations
//! over them (list, remove, garbage collection, committing a pulled or imported image).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::auth::RegistryHosts;
use crate::content::ContentStore;
use crate::digest::{Digest, chain_ids};
use crate::error::{Error, Result};
use crate::fsutil::{self, FileLock};
use crate::meta::{ImageRecord, MetaStore};
use crate::model::{self, Document, Platform};
use crate::reference::ImageRef;
use crate::snapshot::{ActiveSnapshot, Snapshotter, SnapshotterKind};
use crate::unpack::{self, Compression, UnpackOptions};

/// How a store behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub root: PathBuf,
    pub unpack: UnpackOptions,
    /// Layers downloaded (and unpacked) at the same time.
    pub max_concurrent_downloads: usize,
    pub hosts: RegistryHosts,
    pub platform: Platform,
    /// How containers' snapshots are made (overlayfs, or copies where it is missing).
    pub snapshotter: SnapshotterKind,
}

impl StoreConfig {
    /// Defaults for a root directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            unpack: UnpackOptions::default(),
            max_concurrent_downloads: 3,
            hosts: RegistryHosts::default(),
            platform: Platform::host(),
            snapshotter: SnapshotterKind::default(),
        }
    }
}

/// An image as CRI's ImageService lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Image {
    /// The config digest.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub uid: Option<i64>,
    pub username: String,
    pub manifest: Digest,
    /// Chain IDs of the layers, bottom first: the parents of a container's snapshot.
    pub chain_ids: Vec<Digest>,
}

/// What garbage collection freed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcStats {
    pub blobs: usize,
    pub snapshots: usize,
    pub ingest_files: usize,
}

/// The store. Cheap to clone; safe to use from several threads and processes at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) config: StoreConfig,
    pub(crate) content: ContentStore,
    pub(crate) snapshots: Snapshotter,
    pub(crate) meta: MetaStore,
}

impl ImageStore {
    /// Opens (creating) a store.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let root = &config.root;
        fsutil::mkdir_p(root)?;
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshotter::open_with(&root.join("snapshots"), config.snapshotter)?;
        let meta = MetaStore::open(&root.join("metadata"))?;
        Ok(Self {
            config,
            content,
            snapshots,
            meta,
        })
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn snapshotter(&self) -> &Snapshotter {
        &self.snapshots
    }

    /// Held (shared) by every operation that adds content; GC takes it exclusively.
    pub(crate) fn shared_lock(&self) -> Result<FileLock> {
        FileLock::shared(&self.config.root.join("store.lock"))
    }

    /// All images, one entry per image ID.
    pub fn list(&self) -> Result<Vec<Image>> {
        let mut by_id: BTreeMap<Digest, Image> = BTreeMap::new();
        for r in self.meta.list()? {
            let img = by_id.entry(r.config.clone()).or_insert_with(|| Image {
                id: r.config.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size: r.size,
                uid: r.uid,
                username: r.username.clone(),
                manifest: r.manifest.clone(),
                chain_ids: r.chain_ids.clone(),
            });
            if r.name.contains('@') {
                img.repo_digests.push(r.name.clone());
            } else {
                img.repo_tags.push(r.name.clone());
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Finds an image by tag, digest reference, full or short ID.
    pub fn get(&self, name: &str) -> Result<Image> {
        let images = self.list()?;
        let id_like = name.strip_prefix("sha256:").unwrap_or(name);
        if id_like.len() >= 12 && id_like.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&Image> = images
                .iter()
                .filter(|i| i.id.hex().starts_with(id_like))
                .collect();
            if hits.len() == 1 {
                return Ok(hits[0].clone());
            }
        }
        if let Ok(r) = ImageRef::parse(name) {
            let candidates = [r.digest.as_ref().map(|d| r.digest_name(d)), r.tagged_name()];
            for c in candidates.into_iter().flatten() {
                if let Some(img) = images
                    .iter()
                    .find(|i| i.repo_tags.contains(&c) || i.repo_digests.contains(&c))
                {
                    return Ok(img.clone());
                }
            }
        }
        Err(Error::ImageNotFound(name.to_string()))
    }

    /// Removes an image: by ID every name of it; by a tag or digest reference that name only
    /// (and the image's other names when they all point at the same ID and `all_names`).
    /// Then frees what nothing refers to any more.
    pub fn remove(&self, name: &str) -> Result<Image> {
        let img = self.get(name)?;
        for n in img.repo_tags.iter().chain(img.repo_digests.iter()) {
            self.meta.delete(n)?;
        }
        self.gc()?;
        Ok(img)
    }

    /// Marks what image records and active snapshots use; deletes every other blob and
    /// committed snapshot, and leftovers of interrupted pulls.
    pub fn gc(&self) -> Result<GcStats> {
        let _lock = FileLock::exclusive(&self.config.root.join("store.lock"))?;
        self.gc_locked(false)
    }

    /// GC if no pull or import is running; `None` when one is.
    pub fn try_gc(&self) -> Result<Option<GcStats>> {
        self.try_gc_keeping(false)
    }

    /// [`ImageStore::try_gc`]; partial downloads are kept when `keep_partials` (a later pull
    /// resumes them).
    fn try_gc_keeping(&self, keep_partials: bool) -> Result<Option<GcStats>> {
        match FileLock::try_exclusive(&self.config.root.join("store.lock"))? {
            Some(_lock) => Ok(Some(self.gc_locked(keep_partials)?)),
            None => Ok(None),
        }
    }

    fn gc_locked(&self, keep_partials: bool) -> Result<GcStats> {
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut snaps: BTreeSet<Digest> = BTreeSet::new();
        for r in self.meta.list()? {
            blobs.insert(r.target.clone());
            blobs.insert(r.manifest.clone());
            blobs.insert(r.config.clone());
            blobs.extend(r.layers.iter().cloned());
            snaps.extend(r.chain_ids.iter().cloned());
        }
        for a in self.snapshots.list_active()? {
            snaps.extend(a.parents.iter().cloned());
        }
        let mut stats = GcStats::default();
        for d in self.content.list()? {
            if !blobs.contains(&d) {
                self.content.delete(&d)?;
                stats.blobs += 1;
            }
        }
        for c in self.snapshots.list_committed()? {
            if !snaps.contains(&c) {
                self.snapshots.remove_committed(&c)?;
                stats.snapshots += 1;
            }
        }
        if !keep_partials {
            stats.ingest_files = self.content.clean_ingest()?;
        }
        self.snapshots.clean_tmp()?;
        self.meta.clean_tmp()?;
        tracing::debug!(?stats, "garbage collected");
        Ok(stats)
    }

    /// Creates a container's writable snapshot over an image.
    pub fn prepare_snapshot(&self, key: &str, image: &str) -> Result<ActiveSnapshot> {
        let _lock = self.shared_lock()?;
        let img = self.get(image)?;
        self.snapshots.prepare(key, &img.chain_ids)
    }

    /// Mounts a container's snapshot (overlay) at `target`.
    pub fn mount_snapshot(&self, key: &str, target: &Path) -> Result<ActiveSnapshot> {
        self.snapshots.mount(key, target)
    }

    /// Unmounts a container's snapshot if it is mounted (it stays, with its upper layer).
    pub fn unmount_snapshot(&self, key: &str) -> Result<()> {
        self.snapshots.unmount(key)
    }

    /// Mounts a container's snapshot at `target` without recording the mount (see
    /// [`crate::snapshot::Snapshotter::mount_at`]); [`ImageStore::unmount_snapshot_at`] undoes it.
    pub fn mount_snapshot_at(&self, key: &str, target: &Path) -> Result<ActiveSnapshot> {
        self.snapshots.mount_at(key, target)
    }

    /// Unmounts what [`ImageStore::mount_snapshot_at`] mounted at `target`, if it still is.
    pub fn unmount_snapshot_at(&self, key: &str, target: &Path) -> Result<()> {
        self.snapshots.unmount_at(key, target)
    }

    /// The disk usage of a container's own layer (CRI's `writable_layer`).
    pub fn snapshot_usage(&self, key: &str) -> Result<crate::snapshot::Usage> {
        self.snapshots.usage(key)
    }

    /// Unmounts and removes a container's snapshot; its layers become collectable once no
    /// image or other snapshot refers to them.
    pub fn remove_snapshot(&self, key: &str) -> Result<()> {
        self.snapshots.remove(key)
    }

    /// [`ImageStore::remove_snapshot`] but the tree is left for the caller to delete
    /// ([`crate::snapshot::remove_tree`]); see [`crate::snapshot::Snapshotter::retire`].
    pub fn retire_snapshot(&self, key: &str) -> Result<PathBuf> {
        self.snapshots.retire(key)
    }

    /// Retired snapshot trees still on disk (a process that retired them ended first).
    pub fn retired_snapshots(&self) -> Result<Vec<PathBuf>> {
        self.snapshots.retired()
    }

    /// Unpacks one verified layer blob into its committed snapshot (once) and checks its diff ID.
    ///
    /// `parents` are the chain IDs of the layers below, bottom first; `None` when they may not
    /// be committed yet (then a layer that needs them fails with [`Error::NeedsParents`]).
    pub(crate) fn unpack_layer(
        &self,
        layer: &model::Descriptor,
        diff_id: &Digest,
        chain: &Digest,
        parents: Option<&[Digest]>,
    ) -> Result<()> {
        let compression = Compression::from_media_type(&layer.media_type)
            .ok_or_else(|| Error::UnsupportedMediaType(layer.media_type.clone()))?;
        self.unpack_blob(&layer.digest, compression, diff_id, chain, parents)
    }

    pub(crate) fn unpack_blob(
        &self,
        blob: &Digest,
        compression: Compression,
        diff_id: &Digest,
        chain: &Digest,
        parents: Option<&[Digest]>,
    ) -> Result<()> {
        let name = blob.to_string();
        let lowers: Option<Vec<PathBuf>> = parents.map(|p| {
            p.iter()
                .rev()
                .map(|c| self.snapshots.committed_path(c))
                .collect()
        });
        self.snapshots.commit_with(chain, |dir| {
            if let Some(p) = parents
                && let Some(missing) = p.iter().find(|c| !self.snapshots.has_committed(c))
            {
                return Err(Error::SnapshotNotFound(missing.to_string()));
            }
            let f = self.content.open_blob(blob)?;
            let reader = std::io::BufReader::with_capacity(256 << 10, f);
            let stats = unpack::unpack_layer(
                reader,
                compression,
                dir,
                &name,
                &self.config.unpack,
                lowers.as_deref(),
            )?;
            let actual = stats.diff_id.ok_or_else(|| Error::BadLayer {
                layer: name.clone(),
                reason: "no diff ID".into(),
            })?;
            if &actual != diff_id {
                return Err(Error::BadLayer {
                    layer: name.clone(),
                    reason: format!(
                        "uncompressed content has diff ID {actual}, the image config says {diff_id}"
                    ),
                });
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Reads and checks manifest + config from the content store.
    pub(crate) fn load_manifest(
        &self,
        manifest: &Digest,
    ) -> Result<(model::Manifest, model::ImageConfig, Vec<Digest>)> {
        let data = self.content.read(manifest)?;
        let m = match model::parse_document(&manifest.to_string(), &data, None)? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(crate::error::malformed(
                    manifest.to_string(),
                    "an image index where a manifest was expected",
                ));
            }
        };
        let cdata = self.content.read(&m.config.digest)?;
        let cfg = model::parse_config(&m.config.digest.to_string(), &cdata, m.layers.len())?;
        let chains = chain_ids(&cfg.rootfs.diff_ids);
        Ok((*m, cfg, chains))
    }

    /// Writes the records of an image whose blobs and snapshots are all committed.
    pub(crate) fn record_image(
        &self,
        names: &[String],
        target: &Digest,
        manifest: &Digest,
    ) -> Result<Image> {
        let (m, cfg, chains) = self.load_manifest(manifest)?;
        for c in &chains {
            if !self.snapshots.has_committed(c) {
                return Err(Error::SnapshotNotFound(c.to_string()));
            }
        }
        let (uid, username) = model::user_of(&cfg);
        let size = self.content.size(manifest)?
            + m.config.size
            + m.layers.iter().map(|l| l.size).sum::<u64>();
        for name in names {
            self.meta.put(&ImageRecord {
                name: name.clone(),
                target: target.clone(),
                manifest: manifest.clone(),
                config: m.config.digest.clone(),
                layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
                chain_ids: chains.clone(),
                size,
                uid,
                username: username.clone(),
            })?;
        }
        self.get_by_id(&m.config.digest)
    }

    fn get_by_id(&self, id: &Digest) -> Result<Image> {
        self.list()?
            .into_iter()
            .find(|i| &i.id == id)
            .ok_or_else(|| Error::ImageNotFound(id.to_string()))
    }

    /// Removes the leftovers of a failed operation, if nobody else is working (best effort).
    /// Partial downloads stay for the next pull to resume; `gc` removes them.
    pub(crate) fn cleanup_after_failure(&self) {
        match self.try_gc_keeping(true) {
            Ok(Some(stats)) => tracing::debug!(?stats, "cleaned up after a failed operation"),
            Ok(None) => tracing::debug!("cleanup skipped: another operation is running"),
            Err(e) => tracing::warn!(error = %e, "cleanup after a failed operation"),
        }
    }
}
